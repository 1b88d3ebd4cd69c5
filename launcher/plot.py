"""``triforge-plot RUN_DIR [RUN_DIR ...] [-o loss.png]``: compare loss curves of runs."""

from __future__ import annotations

import argparse
import sys

from triforge.errors import TriforgeError
from triforge.trainer.plot import plot_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triforge-plot", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories (each holds metrics.jsonl)")
    parser.add_argument("-o", "--out", default="loss.png", help="output PNG (default loss.png)")
    args = parser.parse_args(argv)
    try:
        out = plot_runs(args.runs, args.out)
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
