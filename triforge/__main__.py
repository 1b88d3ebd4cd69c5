"""``python -m triforge COMMAND [args]``: the console scripts under one entry point."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "triforge.launcher.train",
    "prepare": "triforge.launcher.prepare",
    "generate": "triforge.launcher.generate",
    "plot": "triforge.launcher.plot",
    "layout": "triforge.launcher.layout",
    "export": "triforge.launcher.export",
    "submit": "triforge.slurm.submit",
    "status": "triforge.slurm.status",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m triforge {{{','.join(COMMANDS)}}} [args...]", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[args[0]]).main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
