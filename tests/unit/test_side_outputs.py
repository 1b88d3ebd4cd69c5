"""Side outputs: an auxiliary loss attached inside the model trains exactly as if it had
been added to the loss, with the factor the step runner gives it."""

from __future__ import annotations

import pytest
import torch

from triforge.models import ModelConfig, build_model, materialize
from triforge.models.side_outputs import attach_aux_loss
from triforge.parallel.context import ParallelContext
from triforge.trainer.data.loader import TokenWindows
from triforge.trainer.numerics import attach_debug_aux_loss
from triforge.trainer.objectives import Batch, summed_cross_entropy
from triforge.trainer.objectives.clm import CausalLM
from triforge.trainer.step import DirectRunner

CFG = ModelConfig(name="t", d_model=32, n_layers=3, n_heads=4, max_seq_len=16)
VOCAB, COEFF, LAYER = 64, 1e-3, 1


def model():
    return materialize(build_model(CFG, vocab_size=VOCAB, attention_backend="sdpa"), "cpu",
                       seed=0)


def batch() -> Batch:
    tokens = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(3))
    return CausalLM().make_batch(TokenWindows(tokens))


def test_attach_aux_loss_is_the_identity_with_a_scaled_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    aux_in = torch.tensor(2.0, requires_grad=True)
    out = attach_aux_loss(x, aux_in * 5.0, 0.25)
    assert torch.equal(out, x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 4))
    assert aux_in.grad.item() == pytest.approx(5.0 * 0.25)


@pytest.mark.parametrize("microbatches, loss_scale", [(1, 1.0), (2, 1.0), (4, 8.0)])
def test_runner_gradient_equals_the_explicit_objective(microbatches, loss_scale):
    """grad of loss_scale * (global mean target loss + COEFF * mean over microbatches of
    sum(h**2)), h the output of block LAYER, computed by hand, equals the runner's."""
    b = batch()
    ours = model()
    attach_debug_aux_loss([ours], layer=LAYER, coeff=COEFF)
    runner = DirectRunner(ours, microbatches=microbatches)
    loss = runner.forward_backward(CausalLM(), b, ctx=ParallelContext.single(),
                                   device=torch.device("cpu"), loss_scale=loss_scale).mean

    ref = model()
    seen = []
    ref.layers[str(LAYER)].register_forward_hook(lambda _m, _a, out: seen.append(out))
    for micro in b.split(microbatches):
        seen.clear()
        logits = ref(micro.inputs, mask=micro.mask)
        objective = (summed_cross_entropy(logits, micro.labels) / b.num_targets
                     + COEFF * seen[0].pow(2).sum() / microbatches)
        (objective * loss_scale).backward()
    assert loss.item() == pytest.approx(
        summed_cross_entropy(ref(b.inputs, mask=b.mask), b.labels).item() / b.num_targets,
        rel=1e-6)
    grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, msg=name)


def test_the_penalty_changes_the_gradient():
    """The check above can fail: without the attached loss the gradients differ."""
    b = batch()
    plain, penalized = model(), model()
    attach_debug_aux_loss([penalized], layer=LAYER, coeff=COEFF)
    for m in (plain, penalized):
        DirectRunner(m).forward_backward(CausalLM(), b, ctx=ParallelContext.single(),
                                         device=torch.device("cpu"))
    a = plain.layers["0"].feed_forward.w1.weight.grad
    c = penalized.layers["0"].feed_forward.w1.weight.grad
    assert (a - c).abs().max() > 1e-3 * a.abs().max()
