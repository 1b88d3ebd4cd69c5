"""fp16 under DeepSpeed: its own ``DynamicLossScaler``, set from our ``precision.*`` and
seen through ``DeepSpeedLossScaler``, against our ``LossScaler`` on the same overflows."""

from __future__ import annotations

import types

import pytest

from triforge.trainer.deepspeed_engine import fp16_section
from triforge.trainer.deepspeed_scaler import DeepSpeedLossScaler
from triforge.trainer.loss_scale import LossScaler
from triforge.trainer.precision import PrecisionConfig

loss_scaler = pytest.importorskip("deepspeed.runtime.fp16.loss_scaler")


@pytest.fixture(autouse=True)
def no_process_group(monkeypatch):
    """DeepSpeed's scaler asks its comm layer for the rank to decide who logs an overflow."""
    monkeypatch.setattr(loss_scaler, "dist", types.SimpleNamespace(get_rank=lambda: 1))


def deepspeed_scaler(cfg: PrecisionConfig) -> DeepSpeedLossScaler:
    """DeepSpeed's scaler as ``deepspeed.initialize`` builds it from ``fp16_section``."""
    section = fp16_section(cfg)
    ds = loss_scaler.DynamicLossScaler(
        init_scale=2.0 ** section["initial_scale_power"], scale_window=section["loss_scale_window"],
        min_scale=section["min_loss_scale"], delayed_shift=section["hysteresis"],
        consecutive_hysteresis=False)
    return DeepSpeedLossScaler(cfg, ds)


def drive(scaler, overflows: list[bool]) -> list[float]:
    """The scale after each step (DeepSpeed's scaler moves in its step, ours in update)."""
    scales = []
    for overflow in overflows:
        if isinstance(scaler, DeepSpeedLossScaler):
            scaler.ds.update_scale(overflow)
        else:
            scaler.update(overflow)
        scales.append(scaler.scale)
    return scales


def test_overflows_back_off_alike_with_hysteresis_and_the_floor():
    cfg = PrecisionConfig(dtype="fp16", initial_scale=8.0, hysteresis=2, min_scale=2.0)
    pattern = [False, True, False, True, True, True, True, False, True]
    ours = drive(LossScaler(cfg, enabled=True), pattern)
    assert ours == [8, 8, 8, 4, 2, 2, 2, 2, 2]  # the second overflow backs off; floor at 2
    assert drive(deepspeed_scaler(cfg), pattern) == ours  # and DeepSpeed does not raise there


def test_deepspeed_grows_one_step_later_the_first_time():
    """The one difference, measured: ours grows after growth_interval clean steps, each
    time; DeepSpeed's after growth_interval + 1 the first time (start, or after an
    overflow), then every growth_interval."""
    cfg = PrecisionConfig(dtype="fp16", initial_scale=4.0, growth_interval=3, hysteresis=1)
    pattern = [False] * 7 + [True] + [False] * 4
    assert drive(LossScaler(cfg, enabled=True), pattern) == [4, 4, 8, 8, 8, 16, 16, 8,
                                                             8, 8, 16, 16]
    assert drive(deepspeed_scaler(cfg), pattern) == [4, 4, 4, 8, 8, 8, 16, 8,
                                                     8, 8, 8, 16]


@pytest.mark.parametrize("done", [0, 2, 3, 5, 9])
def test_a_checkpoint_resumes_deepspeeds_own_timing_exactly(done):
    cfg = PrecisionConfig(dtype="fp16", initial_scale=4.0, growth_interval=3, hysteresis=2)
    pattern = [False, False, True, False, False, False, True, True, False, False, False, False]
    straight = drive(deepspeed_scaler(cfg), pattern)
    first = deepspeed_scaler(cfg)
    drive(first, pattern[:done])
    resumed = deepspeed_scaler(cfg)
    resumed.load_state_dict(first.state_dict())
    assert drive(resumed, pattern[done:]) == straight[done:]


def test_our_checkpoint_carries_scale_and_hysteresis_into_deepspeed():
    cfg = PrecisionConfig(dtype="fp16", initial_scale=64.0, hysteresis=2)
    ours = LossScaler(cfg, enabled=True)
    drive(ours, [True, True, True, False])  # 64 -> 32 -> 16, hysteresis spent
    ds = deepspeed_scaler(cfg)
    ds.load_state_dict(ours.state_dict())
    assert ds.scale == 16.0
    assert drive(ds, [True]) == drive(ours, [True]) == [8.0]  # no hysteresis left in either
    fresh = deepspeed_scaler(cfg)
    fresh.load_state_dict({})  # a run without fp16 saved nothing: DeepSpeed starts afresh
    assert fresh.scale == 64.0


def test_the_runner_leaves_the_scaling_to_deepspeed():
    scaler = deepspeed_scaler(PrecisionConfig(dtype="fp16"))
    assert scaler.loss_factor == 1.0 and scaler.scale == 65536.0
    assert LossScaler(PrecisionConfig(dtype="fp16"), enabled=True).loss_factor == 65536.0
