"""The layout planner: its memory formulas against what one process really allocates and
saves, its bubble formulas' arithmetic, its ranking and rejections, and its command line.
The multi-process figures (FSDP, TP, PP shards, collective bytes, measured bubbles) are
checked by ``make bench`` (bench/memory_rank.py, bench/comm.py, bench/bubble.py)."""

from __future__ import annotations

import pytest
import torch

from bench.anchors import rows as anchor_rows
from triforge.kernels.attention import AttentionMask
from triforge.launcher.plan import main
from triforge.models import ModelConfig, build_model, materialize
from triforge.plan import DEVICES, Layout, Workload, plan
from triforge.plan.memory import block_activation_bytes, fsdp_shard_numel, state_bytes
from triforge.plan.schedule import bubble_fraction
from triforge.trainer.optim import OptimConfig, build_optimizer

CFG = ModelConfig(name="t", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                  ffn_hidden=160)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_state_bytes_are_what_one_adamw_step_allocates():
    model = materialize(build_model(CFG, vocab_size=96, attention_backend="sdpa"), "cpu", seed=0)
    opt = build_optimizer(model, OptimConfig())
    model(torch.randint(0, 96, (2, 32))).float().sum().backward()
    grads = tensor_bytes(p.grad for p in model.parameters())
    opt.step()
    measured = {"params": tensor_bytes(model.parameters()), "grads": grads,
                "optimizer": tensor_bytes(v for s in opt.state.values() for v in s.values())}
    work = Workload(model=CFG, vocab=96, seq_len=32, batch_size=2, dtype="fp32")
    assert state_bytes(work, Layout()) == measured


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_activation_formula_is_what_autograd_saves(dtype):
    model = materialize(build_model(CFG, vocab_size=96, attention_backend="sdpa"), "cpu",
                        seed=0).to(dtype)  # bf16 parameters, as FSDP gathers them
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    h = torch.randn(3, 32, 64, dtype=dtype, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for block in model.layers.values():
            h = block(h, model.rope_cos, model.rope_sin, AttentionMask("causal"), None)
    name = "fp32" if dtype == torch.float32 else "bf16"
    work = Workload(model=CFG, vocab=96, seq_len=32, batch_size=3, dtype=name)
    assert sum(seen.values()) == CFG.n_layers * block_activation_bytes(work, Layout(),
                                                                       tokens=3 * 32)


def test_fsdp_shards_take_ceil_rows_on_rank_zero():
    assert fsdp_shard_numel((5, 3), 2) == 9 and fsdp_shard_numel((4,), 4) == 1


def test_bubble_formulas():
    assert bubble_fraction(Layout(pp=4, schedule="1f1b"), 8) == pytest.approx(3 / 11)
    assert bubble_fraction(Layout(pp=4, schedule="gpipe"), 8) == pytest.approx(3 / 11)
    assert bubble_fraction(Layout(pp=4, schedule="interleaved_1f1b", virtual=2), 8) == \
        pytest.approx(3 / 19)
    zb = Layout(pp=4, schedule="zero_bubble", virtual=2)
    assert bubble_fraction(zb, 8) == pytest.approx(3 / 51)
    # With no weight-gradient work to move, zero bubble is the interleaved schedule.
    assert bubble_fraction(zb, 8, split=(1.0, 2.0, 0.0)) == pytest.approx(3 / 19)
    assert bubble_fraction(Layout(), 8) == 0.0


def test_the_plan_ranks_fitting_layouts_and_gives_reasons_for_the_rest():
    work = Workload(model=CFG, vocab=96, seq_len=32, batch_size=8)
    fits, rejected = plan(work, 8, DEVICES["h100"], gpus_per_node=4)
    assert fits and all(p.layout.world_size == 8 for p in fits + rejected)
    assert [p.step_s for p in fits] == sorted(p.step_s for p in fits)
    reasons = {p.rejected for p in rejected}
    assert "tp(8) spans nodes (gpus_per_node=4)" in reasons
    assert any("must divide n_heads" in r for r in reasons)


def test_a_model_too_large_for_the_device_is_rejected_with_its_memory():
    big = ModelConfig(name="big", d_model=8192, n_layers=8, n_heads=64, vocab_size=32000)
    work = Workload(model=big, vocab=32000, seq_len=4096, batch_size=8)
    fits, rejected = plan(work, 1, DEVICES["a100_40gb"], gpus_per_node=8)
    assert not fits and all("GiB per rank, over 90% of 39 GiB" in p.rejected for p in rejected)


def test_anchors_land_near_the_published_runs():
    """Megatron's own layout for GPT-3 175B on 1024 A100s, and torchtitan's memory for
    Llama 3.1 8B on 8 H100s: the planner's efficiency (0.5) is an assumption, so this bounds
    how far the model may drift, not a fit."""
    by_name = {row["name"]: row for row in anchor_rows()}
    assert 0.8 < by_name["GPT-3 175B, 1024 A100, Megatron's layout"]["ratio"] < 1.25
    assert 0.85 < by_name["Llama 3.1 8B, 8 H100, memory"]["ratio"] < 1.15


def test_cli_prints_the_ranking_and_explains_bad_input(capsys, tmp_path):
    out = tmp_path / "plan.json"
    assert main(["model=small", "world_size=8", "gpus_per_node=4", "trainer.batch_size=16",
                 f"json={out}"]) == 0
    text = capsys.readouterr().out
    assert "layouts fit" in text and " tok/s/gpu" in text and out.stat().st_size > 0
    assert main(["model=small", "world_size=8", "gpu=tpu"]) == 2
    assert "gpu=tpu is not one of" in capsys.readouterr().err
    assert main(["model=small"]) == 2
    assert "world_size=64" in capsys.readouterr().err
    assert main(["model=small", "world_size=8", "efficiency=fast"]) == 2
    assert "efficiency=fast must be a float" in capsys.readouterr().err
