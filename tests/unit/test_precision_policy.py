import pytest
import torch
from torch import nn

from triforge.parallel.context import ParallelContext
from triforge.trainer.loss_scale import LossScaler
from triforge.trainer.numerics import DebugConfig, NonfiniteHalt, NonfiniteInjector, StepGuard
from triforge.trainer.precision import PrecisionConfig, PrecisionPolicy


def scaler(**kw) -> LossScaler:
    return LossScaler(PrecisionConfig(dtype="fp16", **kw), enabled=True)


def test_scaler_backs_off_after_hysteresis_overflows_and_not_below_min():
    s = scaler(initial_scale=8.0, hysteresis=2, min_scale=2.0)
    s.update(overflow=True)
    assert s.scale == 8.0  # the first overflow only uses up hysteresis
    s.update(overflow=True)
    assert s.scale == 4.0
    s.update(overflow=True)  # hysteresis stays exhausted until the scale grows again
    assert s.scale == 2.0
    s.update(overflow=True)
    assert s.scale == 2.0  # min_scale


def test_scaler_grows_after_interval_and_restores_hysteresis():
    s = scaler(initial_scale=4.0, growth_interval=3, hysteresis=2)
    s.update(overflow=True)
    for _ in range(2):
        s.update(overflow=False)
    assert s.scale == 4.0 and s.hysteresis_left == 1
    s.update(overflow=False)
    assert s.scale == 8.0 and s.hysteresis_left == 2 and s.growth_tracker == 0
    s.update(overflow=False)
    s.update(overflow=True)  # an overflow resets the run of clean steps
    assert s.growth_tracker == 0


def test_scaler_state_round_trips_and_disabled_scaler_never_scales():
    s = scaler(initial_scale=16.0, hysteresis=1)
    s.update(overflow=True)
    restored = scaler()
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict() == {
        "scale": 8.0, "growth_tracker": 0, "hysteresis_left": 0}
    off = LossScaler(PrecisionConfig(), enabled=False)
    off.update(overflow=True)
    assert off.scale == 1.0 and off.state_dict() == {}
    fresh = scaler(initial_scale=32.0)
    fresh.load_state_dict(off.state_dict())  # resuming a bf16 run in fp16 starts afresh
    assert fresh.scale == 32.0


def test_unscale_divides_gradients_and_keeps_infinities():
    lin = nn.Linear(2, 2)
    lin.weight.grad = torch.full((2, 2), 8.0)
    lin.bias.grad = torch.tensor([float("inf"), 4.0])
    scaler(initial_scale=4.0).unscale_([lin])
    assert torch.equal(lin.weight.grad, torch.full((2, 2), 2.0))
    assert lin.bias.grad[0].isinf() and lin.bias.grad[1] == 1.0


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_computes_in_the_policy_dtype_and_keeps_fp32_weights(dtype):
    policy = PrecisionPolicy(PrecisionConfig(dtype=dtype), engine_casts=False)
    lin = nn.Linear(4, 4)
    with policy.autocast(torch.device("cpu")):
        out = lin(torch.randn(2, 4))
    assert out.dtype == policy.compute_dtype and lin.weight.dtype == torch.float32
    assert policy.fsdp_policy().reduce_dtype == torch.float32
    fsdp = PrecisionPolicy(PrecisionConfig(dtype=dtype), engine_casts=True)
    with fsdp.autocast(torch.device("cpu")):  # FSDP casts; autocast would only add casts
        assert lin(torch.randn(2, 4)).dtype == torch.float32
    assert fsdp.fsdp_policy().param_dtype == policy.compute_dtype


def guard(**kw) -> StepGuard:
    opts = {"policy": "skip", "spike_zscore": 0.0, "spike_window": 100, "loss_scaling": False}
    return StepGuard(ParallelContext.single(), **{**opts, **kw})


def check(g: StepGuard, loss: float, norm: float = 1.0, step: int = 1):
    return g.check(step, torch.tensor(loss), torch.tensor(norm), loss)


def test_guard_skips_or_halts_on_nonfinite_values():
    verdict = check(guard(), float("nan"))
    assert not verdict.apply and verdict.loss_rank == 0 and verdict.grad_rank is None
    assert check(guard(), 1.0, float("inf")).reason == "non-finite gradients (first on rank 0)"
    with pytest.raises(NonfiniteHalt, match=r"non-finite loss at step 7 \(first seen on rank 0\)"):
        check(guard(policy="halt"), float("nan"), step=7)
    # fp16: infinite gradients with a finite loss are an overflow, handled by the scaler
    assert not check(guard(policy="halt", loss_scaling=True), 1.0, float("inf")).apply


def test_guard_skips_loss_spikes_against_the_recent_window():
    g = guard(spike_zscore=4.0)
    for i in range(20):
        assert check(g, 2.0 + 0.01 * (i % 3)).apply
    spike = check(g, 3.0)
    assert spike.spike and not spike.apply and spike.reason == "loss spike"
    assert check(g, 2.02).apply
    assert check(guard(), 1e6).apply  # spike detection is off by default


def test_injector_targets_one_step_and_rank():
    inj = NonfiniteInjector(DebugConfig(inject_nonfinite_at_step=3, inject_nonfinite_rank=1,
                                        inject_nonfinite_into="grad"), rank=1)
    lin = nn.Linear(2, 2)
    lin.weight.grad, lin.bias.grad = torch.zeros(2, 2), torch.zeros(2)
    inj.gradients([lin], step=2)
    assert torch.isfinite(lin.weight.grad).all()
    inj.gradients([lin], step=3)
    assert lin.weight.grad.isinf().sum() == 1
    other = NonfiniteInjector(DebugConfig(inject_nonfinite_at_step=3, inject_nonfinite_rank=1),
                              rank=0)
    assert not other.active(3)


class _SumLoss:
    name = "sum"

    def loss(self, logits, labels):
        return logits.sum()


def test_injected_loss_is_nan_once_then_normal():
    inj = NonfiniteInjector(DebugConfig(inject_nonfinite_at_step=2), rank=0)
    base = _SumLoss()
    assert inj.objective(base, 1) is base
    wrapped = inj.objective(base, 2)
    assert wrapped.name == "sum"
    assert wrapped.loss(torch.ones(2), None).isnan()
    assert wrapped.loss(torch.ones(2), None) == 2.0
