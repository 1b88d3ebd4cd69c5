"""Pipeline bubble: the fraction of a step a pipeline rank idles, by schedule.

With p ranks, m microbatches per step and v stages per rank (t_f, t_b, t_w the forward,
input-gradient and weight-gradient times of one microbatch on one rank):

- GPipe and 1F1B: (p - 1) / (m + p - 1) (Narayanan et al. 2021);
- interleaved 1F1B: (p - 1) / (v m + p - 1), each warm-up slot being 1/v as long;
- zero bubble: the weight gradients fill the drain, leaving (p - 1)(t_f + t_b - t_w) of
  1F1B's (p - 1)(t_f + t_b + t_w) (Qi et al. 2023, ZB-H1); with t_f = t_b = t_w, and per
  virtual stage, (p - 1) / (3 v m + p - 1).
"""

from __future__ import annotations

from .layout import Layout


def bubble_fraction(layout: Layout, microbatches: int, *, split: tuple[float, float, float]
                    = (1.0, 1.0, 1.0)) -> float:
    """Idle fraction of a step; ``split`` = (t_f, t_b, t_w) in any unit (zero bubble only)."""
    p, v, m = layout.pp, layout.virtual, microbatches
    if p == 1:
        return 0.0
    if layout.schedule in ("gpipe", "1f1b"):
        return (p - 1) / (m + p - 1)
    if layout.schedule == "interleaved_1f1b":
        return (p - 1) / (v * m + p - 1)
    t_f, t_b, t_w = split
    idle = (p - 1) * (t_f + t_b - t_w) / v
    return idle / (m * (t_f + t_b + t_w) + idle)
