"""Metric sinks: console progress bar, metrics.jsonl (always), Weights & Biases.

Each sink is a ``MetricsSink``; rank 0 alone builds sinks, so logs are written once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .config import WandbConfig


class MetricsSink(Protocol):
    """Where logged steps go. ``log`` receives every logged step's metrics; ``advance`` is
    called at the other steps (a progress bar moves on); ``close`` at the end of the run."""

    def log(self, step: int, metrics: dict) -> None: ...

    def advance(self, step: int) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per logged step, appended and flushed, so a crash loses nothing."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in metrics.items()}
        self._f.write(json.dumps({"step": step, **clean}) + "\n")
        self._f.flush()

    def advance(self, step: int) -> None:
        pass  # one line per logged step only

    def close(self) -> None:
        self._f.close()


class ConsoleSink:
    """A rich progress bar with the latest loss; a plain line per logged step as well, so
    non-interactive logs (SLURM output files, CI) show the curve too."""

    def __init__(self, total_steps: int, start_step: int, *, progress_bar: bool):
        self.console = Console(highlight=False)
        self._progress = None
        if progress_bar and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, status=""
            )
            self._progress.start()

    def log(self, step: int, metrics: dict) -> None:
        parts = [f"step {step:>6}"]
        for key, fmt in (("loss", ".4f"), ("val_loss", ".4f"), ("val_ppl", ".2f"), ("lr", ".2e"),
                         ("grad_norm", ".3f"), ("tokens_per_s", ",.0f"), ("mfu", ".2%"),
                         ("peak_mem_gib", ".2f")):
            if key in metrics and metrics[key] is not None:
                parts.append(f"{key} {metrics[key]:{fmt}}")
        if metrics.get("loss_scale") is not None:
            parts.append(f"loss_scale {metrics['loss_scale']:g}")
        if metrics.get("skipped_steps"):
            parts.append(f"skipped {metrics['skipped_steps']}")
        line = "  ".join(parts)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=line.split("  ", 1)[-1][:60])
        self.console.print(line, soft_wrap=True)

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


class WandbSink:
    """Weights & Biases; offline (files under run.dir/wandb, sync later) without an API key."""

    def __init__(self, cfg: WandbConfig, *, run_dir: Path, config: dict, mode: str, name: str):
        import wandb

        self._wandb = wandb
        self._run = wandb.init(
            project=cfg.project, dir=str(run_dir), config=config, mode=mode, name=name,
            resume="allow", id=_run_id(run_dir),
        )

    def log(self, step: int, metrics: dict) -> None:
        self._run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def advance(self, step: int) -> None:
        pass  # W&B sees logged steps only

    def close(self) -> None:
        self._run.finish()


def _run_id(run_dir: Path) -> str:
    """A stable id per run directory, so a resumed job continues the same W&B run."""
    path = run_dir / "wandb_run_id"
    if path.exists():
        return path.read_text().strip()
    import secrets

    run_id = secrets.token_hex(4)
    path.write_text(run_id)
    return run_id
