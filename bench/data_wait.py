"""Share of step time spent waiting for the batch, with and without read-ahead, on the same
model and data in one run (alternating).

    python bench/data_wait.py [--steps 12] [hydra overrides, e.g. model=small]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from triforge.launcher.config import load_config
from triforge.launcher.train import train


def wait_share(overrides: list[str], prefetch: bool, steps: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        job = load_config([f"run.dir={run_dir}", "logging.wandb.enabled=false",
                           "logging.progress_bar=false", "trainer.eval_every=0",
                           "checkpoint.every=0", "checkpoint.save_at_end=false",
                           "trainer.sample_at_end=false", f"trainer.max_steps={steps}",
                           "trainer.log_every=1", f"data.prefetch={str(prefetch).lower()}",
                           *overrides])
        train(job, log=lambda *_: None)
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        return statistics.median(json.loads(line)["data_wait"] for line in lines[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args, overrides = parser.parse_known_args()
    shares: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for prefetch in ((False, True) if r % 2 == 0 else (True, False)):
            shares[prefetch].append(wait_share(overrides, prefetch, args.steps))
    for prefetch, values in shares.items():
        print(f"read-ahead {'on ' if prefetch else 'off'}: median share of step time waiting "
              f"for data {statistics.median(values):.2%} (rounds: "
              f"{', '.join(f'{v:.2%}' for v in values)})")


if __name__ == "__main__":
    main()
