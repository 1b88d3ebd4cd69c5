"""The optional fast paths (apex's fused RMSNorm and Adam) are one-line start-up errors,
with the fix, where they cannot run; the rest of their contract is in tests/kernels and
tests/parity."""

import pytest
import torch

from triforge.errors import ConfigError
from triforge.launcher.config import load_config


@pytest.mark.skipif(torch.cuda.is_available(), reason="apex can be there on a CUDA machine")
@pytest.mark.parametrize("override, pattern", [
    ("model.norm_impl=apex", r"model.norm_impl=apex needs a CUDA GPU and NVIDIA apex .*use "
                             r"model.norm_impl=triton"),
    ("optim.impl=apex", r"optim.impl=apex needs a CUDA GPU and NVIDIA apex .*use optim.impl=fused"),
    ("optim.impl=lion", r"optim.impl='lion' is not one of"),
])
def test_the_apex_fast_paths_are_startup_errors_without_apex(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config([override])
    assert "\n" not in str(err.value)


def test_foreach_and_fused_adamw_share_their_checkpoints():
    """A run saved with optim.impl=foreach resumes with fused (and back): the same state
    keys, and the same next update up to fp32 rounding."""
    import copy

    from torch import nn

    from triforge.trainer.config import OptimConfig
    from triforge.trainer.optim import build_optimizer

    torch.manual_seed(0)
    models = {impl: nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
              for impl in ("foreach", "fused")}
    models["fused"].load_state_dict(models["foreach"].state_dict())
    opts = {impl: build_optimizer(m, OptimConfig(impl=impl)) for impl, m in models.items()}
    x = torch.randn(4, 8)
    for _ in range(2):  # foreach alone: the run that saved
        models["foreach"](x).pow(2).sum().backward()
        opts["foreach"].step()
        opts["foreach"].zero_grad()
    saved = copy.deepcopy((models["foreach"].state_dict(), opts["foreach"].state_dict()))
    models["fused"].load_state_dict(saved[0])
    opts["fused"].load_state_dict(saved[1])  # a copy, as from a file: no shared moments
    for impl in ("foreach", "fused"):  # one more step each: the saved run and its resume
        models[impl](x).pow(2).sum().backward()
        opts[impl].step()
    for a, b in zip(models["foreach"].parameters(), models["fused"].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(models["fused"][0].weight, saved[0]["0.weight"])  # it did step
