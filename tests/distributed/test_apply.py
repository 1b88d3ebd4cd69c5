"""Each ``apply_*`` on a sharded module gives the unsharded module's outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.spawn import spawn_ranks
from triforge.models import ModelConfig, build_model, materialize
from triforge.parallel.data_parallel import apply_fsdp
from triforge.parallel.materialize import materialize_sharded
from triforge.parallel.pipeline import split_model, stage_layers
from triforge.parallel.tensor_parallel import apply_tp

CFG = ModelConfig(name="t", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
VOCAB = 64


def reference_model():
    return materialize(build_model(CFG, vocab_size=VOCAB, attention_backend="sdpa"), "cpu",
                       seed=0)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def check_sharded(rank: int, world: int, mode: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import loss_parallel

    mesh = init_device_mesh("cpu", (world,))
    ref, model = reference_model(), build_model(CFG, vocab_size=VOCAB,
                                                attention_backend="sdpa")
    if mode.startswith("tp"):
        apply_tp(model, mesh, sequence_parallel=mode == "tp_sp")
    else:
        apply_fsdp(model, mesh, reshard_after_forward=True)
    materialize_sharded(model, torch.device("cpu"), is_main=rank == 0,
                        full_init=reference_model)
    tokens = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    ref_logits = ref(tokens)
    ref_logits.float().logsumexp(-1).sum().backward()
    with loss_parallel() if mode.startswith("tp") else torch.enable_grad():
        logits = model(tokens)
        logits.float().logsumexp(-1).sum().backward()
    torch.testing.assert_close(full(logits), ref_logits, rtol=1e-5, atol=1e-5)
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(full(p.grad), grads[name].grad, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, n=name: f"{mode} {n}: {m}")


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["tp_sp", "tp", "fsdp"])
def test_apply_matches_unsharded_forward_and_gradients(mode):
    spawn_ranks(check_sharded, 2, mode)


def test_pipeline_stages_chained_equal_the_model():
    ref = reference_model()
    layers = stage_layers(CFG.n_layers, 2, [])
    parts = [split_model(ref, layers[i], first=i == 0, last=i == 1) for i in range(2)]
    tokens = torch.randint(0, VOCAB, (2, 16))
    torch.testing.assert_close(parts[1](parts[0](tokens)), ref(tokens), rtol=0, atol=0)
    names = set(dict(parts[0].named_parameters())) | set(dict(parts[1].named_parameters()))
    assert names == set(dict(ref.named_parameters()))
    assert "layers.1.attention.wq.weight" in dict(parts[1].named_parameters())


def test_stage_layers_balanced_or_explicit():
    assert stage_layers(5, 2, []) == [[0, 1, 2], [3, 4]]
    assert stage_layers(4, 2, [1, 3]) == [[0], [1, 2, 3]]
    with pytest.raises(ValueError, match=r"must have 2 entries, each >= 1, summing to n_layers\(4\)"):
        stage_layers(4, 2, [1, 2])
