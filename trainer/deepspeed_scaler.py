"""fp16 under DeepSpeed: DeepSpeed's own dynamic loss scaler, in ``LossScaler``'s terms.

DeepSpeed multiplies the loss by its scale in its backward, finds overflows in its step,
skips those steps and moves the scale. ``DeepSpeedLossScaler`` does none of that itself: it
reads DeepSpeed's scaler for the trainer (``scale`` in the metrics) and carries its state in
checkpoints in ``LossScaler``'s keys, so an fp16 run resumes under either engine.

DeepSpeed's rules are ours (``LossScaler``) with one difference, measured in
tests/unit/test_deepspeed_scaler.py: it grows the scale after ``growth_interval + 1``
clean steps the first time (at start and after each overflow), ``growth_interval`` after
that; Megatron-LM, ``torch.amp.GradScaler`` and ``LossScaler`` always wait
``growth_interval``. Backing off is the same: after ``hysteresis`` overflows, by half,
never below ``min_scale`` (where DeepSpeed would raise by default, it keeps skipping, as
ours does).
"""

from __future__ import annotations

from .precision import PrecisionConfig


class DeepSpeedLossScaler:
    """``LossScaler``'s interface over DeepSpeed's ``DynamicLossScaler`` (``ds``)."""

    enabled = True
    loss_factor = 1.0  # DeepSpeed's backward applies the scale; the runner must not

    def __init__(self, cfg: PrecisionConfig, ds):
        self.cfg, self.ds = cfg, ds
        ds.raise_error_at_min_scale = False

    @property
    def scale(self) -> float:
        return float(self.ds.cur_scale)

    def unscale_(self, parts) -> None:
        """DeepSpeed unscales in its step."""

    def update(self, overflow: bool) -> None:
        """DeepSpeed's step updates its scaler (on an applied step and on a skipped one)."""

    def clean_steps(self) -> int:
        """Steps without overflow since the last one (or the start)."""
        return self.ds.cur_iter - self.ds.last_overflow_iter - 1

    def state_dict(self) -> dict:
        """``LossScaler``'s keys (the growth tracker as ``LossScaler`` counts it), plus the
        exact count of clean steps, so that DeepSpeed resumes its own timing exactly."""
        clean = self.clean_steps()
        return {"scale": self.scale, "growth_tracker": clean % self.cfg.growth_interval,
                "hysteresis_left": int(self.ds.cur_hysteresis), "clean_steps": clean}

    def load_state_dict(self, state: dict) -> None:
        if "scale" not in state:  # saved by a run without fp16: start scaling afresh
            return
        self.ds.cur_scale = float(state["scale"])
        # DeepSpeed's count stops at 1 (back off at every further overflow); ours goes on down
        self.ds.cur_hysteresis = max(1, int(state["hysteresis_left"]))
        clean = int(state.get("clean_steps", state["growth_tracker"]))
        self.ds.last_overflow_iter = self.ds.cur_iter - 1 - clean
