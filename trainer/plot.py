"""Loss curves of one or more runs, read from their metrics.jsonl, to a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

from triforge.errors import DataError


def read_metrics(run_dir: Path) -> list[dict]:
    """Records of ``run_dir/metrics.jsonl`` by step; a step logged twice (a run resumed from
    an earlier checkpoint) keeps its latest record."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found; is {run_dir} a triforge run directory?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    by_step: dict[int, dict] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{n} is not valid JSON") from None
        if not (isinstance(record, dict) and isinstance(record.get("step"), int)):
            raise DataError(f"{path}:{n} is not a metrics record (an object with an integer "
                            "step)")
        for key in ("loss", "val_loss"):  # NaN/inf and non-numbers are not plotted
            value = record.get(key)
            if value is not None and not (isinstance(value, int | float)
                                          and math.isfinite(value)):
                record[key] = None
        by_step[record["step"]] = {**by_step.get(record["step"], {}), **record}
    return [by_step[s] for s in sorted(by_step)]


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Training (solid) and validation (dashed) loss against step for each run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        name = Path(run_dir).name
        train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        if train:
            line, = ax.plot(*zip(*train, strict=True), label=f"{name} train")
            if val:
                ax.plot(*zip(*val, strict=True), "--o", color=line.get_color(), markersize=3,
                        label=f"{name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
