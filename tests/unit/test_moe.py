"""Mixture-of-experts layers: routers, the grouped matmul against the per-expert loop, the
combine, balancing losses and the statistics the trainer reads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from triforge.launcher.config import load_config
from triforge.models.moe.config import RouterConfig
from triforge.models.moe.experts import GroupedExperts
from triforge.models.moe.layer import TOTALS, MoEFeedForward
from triforge.models.moe.router import (
    ExpertChoiceRouter,
    TokenChoiceRouter,
    balance_loss,
    expert_order,
)
from triforge.models.side_outputs import BlockControls


def model_cfg(*overrides: str):
    return load_config(["model=moe_tiny", *overrides]).model


def layer(*overrides: str, seed: int = 0) -> MoEFeedForward:
    torch.manual_seed(seed)
    moe = MoEFeedForward(model_cfg(*overrides), BlockControls(), layer_id=0)
    moe.init_weights(0.2, 0.2)  # larger than training's init: routing differs per token
    return moe.train()


def token_choice(e: int = 6, k: int = 2, **router) -> TokenChoiceRouter:
    torch.manual_seed(1)
    r = TokenChoiceRouter(16, e, k, RouterConfig(**router))
    torch.nn.init.normal_(r.gate.weight, std=1.0)
    return r


@pytest.mark.parametrize("counts", [[3, 0, 5, 2], [0, 0, 7, 0], [1, 1, 1, 1], [9, 4, 0, 0]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_matmul_matches_the_per_expert_loop(counts, dtype):
    """Forward and backward, against a float64 run of the loop: the grouped path's error is
    at most twice the loop's own in the same dtype (plus one unit roundoff of the values,
    for the cases the loop gets exact)."""
    torch.manual_seed(0)
    reference = GroupedExperts(4, 16, 24, grouped_mm=False)
    reference.init_weights(0.3, 0.3)
    counts_t = torch.tensor(counts)
    x = torch.randn(sum(counts), 16)
    grad = torch.randn(sum(counts), 16)

    def run(grouped: bool, run_dtype: torch.dtype) -> list[torch.Tensor]:
        module = GroupedExperts(4, 16, 24, grouped_mm=grouped)
        module.load_state_dict(reference.state_dict())
        module.to(run_dtype)
        xi = x.to(run_dtype).requires_grad_()
        out = module(xi, counts_t)
        (out * grad.to(run_dtype)).sum().backward()
        return [t.double() for t in (out, xi.grad, *(p.grad for p in module.parameters()))]

    exact = run(False, torch.float64)
    unit = torch.finfo(dtype).eps / 2
    for grouped, loop, ref in zip(run(True, dtype), run(False, dtype), exact, strict=True):
        bound = 2 * (loop - ref).abs().max() + unit * ref.abs().max()
        assert (grouped - ref).abs().max() <= bound


def test_token_choice_takes_the_top_k_and_renormalizes():
    r = token_choice(k=2)
    x = torch.randn(11, 16)  # an odd number of tokens
    routing = r(x, seq_len=11)
    probs = F.linear(x, r.gate.weight).softmax(-1)
    top = probs.topk(2, dim=-1)
    # every token appears k times, each with one of its top-k experts and the renormalized gate
    expect = {(t, int(e)): (top.values[t, j] / top.values[t].sum()).item()
              for t in range(11) for j, e in enumerate(top.indices[t])}
    experts = torch.repeat_interleave(torch.arange(6), routing.counts)
    got = {(int(t), int(e)): g.item() for t, e, g in zip(routing.token, experts, routing.gate,
                                                         strict=True)}
    assert got.keys() == expect.keys()
    assert all(math.isclose(got[key], expect[key], rel_tol=1e-6) for key in expect)
    assert routing.counts.sum() == 22 and routing.dropped == 0
    assert torch.equal(routing.routed, routing.counts)


def test_pre_softmax_gates_are_the_probabilities_and_sigmoid_scores_work():
    x = torch.randn(8, 16)
    plain = token_choice(renormalize=False)
    routing = plain(x, seq_len=8)
    probs = F.linear(x, plain.gate.weight).softmax(-1)
    experts = torch.repeat_interleave(torch.arange(6), routing.counts)
    assert torch.allclose(routing.gate, probs[routing.token, experts])
    sig = token_choice(score="sigmoid")
    routing = sig(x, seq_len=8)
    sums = torch.zeros(8).index_add(0, routing.token, routing.gate)
    assert torch.allclose(sums, torch.ones(8))  # renormalized over each token's top-k


def test_balance_loss_is_one_when_balanced_and_e_when_collapsed():
    e, t = 4, 8
    uniform = torch.full((t, e), 1 / e)
    spread = torch.arange(t * 2).view(t, 2) % e  # every expert chosen equally often
    assert balance_loss(uniform, spread, seq_len=t, scope="micro_batch").item() == 1.0
    collapsed = torch.zeros(t, e)
    collapsed[:, 0] = 1.0
    assert balance_loss(collapsed, torch.zeros(t, 1, dtype=torch.long), seq_len=t,
                        scope="micro_batch").item() == e
    # per sequence: two sequences, each collapsed onto a different expert -> e for each,
    # while over the micro-batch as a whole the same choices look half as bad
    probs = torch.zeros(t, e)
    probs[:4, 0], probs[4:, 1] = 1.0, 1.0
    top = torch.tensor([[0]] * 4 + [[1]] * 4)
    assert balance_loss(probs, top, seq_len=4, scope="sequence").item() == e
    assert balance_loss(probs, top, seq_len=4, scope="micro_batch").item() == e / 2


def test_global_balance_averaged_over_ranks_is_the_balance_of_their_union():
    # Two data-parallel "ranks" holding halves of one batch, each collapsed onto another
    # expert: alone each looks as bad as can be (e); as parts of the union they are
    # balanced, and the mean of their global losses is the union's, gradient included.
    torch.manual_seed(0)
    e, t = 4, 16
    top = torch.cat([torch.tensor([[0, 1]] * 8), torch.tensor([[2, 3]] * 8)])
    logits = (torch.randn(t, e) + 3 * F.one_hot(top, e).sum(dim=1)).requires_grad_()
    probs = logits.softmax(-1)  # mostly on the chosen experts
    halves = [(probs[:8], top[:8]), (probs[8:], top[8:])]
    union_counts = F.one_hot(top, e).sum(dim=(0, 1)).float()
    per_rank = [balance_loss(p, c, seq_len=4, scope="global",
                             reduce_counts=lambda _counts: union_counts[None])
                for p, c in halves]
    whole = balance_loss(probs, top, seq_len=4, scope="micro_batch")
    mean = sum(per_rank) / 2
    assert torch.allclose(mean, whole, rtol=1e-6, atol=0)
    grad_mean, = torch.autograd.grad(mean, logits, retain_graph=True)
    grad_whole, = torch.autograd.grad(whole, logits)
    assert torch.allclose(grad_mean, grad_whole, rtol=1e-5, atol=1e-7)
    alone = balance_loss(*halves[0], seq_len=4, scope="micro_batch")
    assert alone.item() > 1.5 * whole.item()  # the local scope would push these apart


def test_z_loss_is_the_mean_squared_logsumexp():
    r = token_choice()
    x = torch.randn(5, 16)
    logits = F.linear(x, r.gate.weight)
    expect = torch.logsumexp(logits, -1).pow(2).mean()
    assert torch.allclose(r(x, seq_len=5).z, expect)


@pytest.mark.parametrize("by_gate", [True, False])
def test_capacity_keeps_the_highest_gates_or_the_earliest_tokens(by_gate):
    expert = torch.tensor([0, 0, 0, 1, 0, 2, 0])
    gate = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.6])
    order, counts = expert_order(expert, gate, num_experts=3, cap=2, by_gate=by_gate)
    assert counts.tolist() == [2, 1, 1]
    kept_for_0 = order[:2].tolist()
    assert kept_for_0 == ([1, 4] if by_gate else [0, 1])
    assert order[2:].tolist() == [3, 5]


def test_dropped_assignments_are_counted_and_add_nothing():
    moe = layer("model.moe.router.capacity_factor=0.5")
    x = torch.randn(2, 16, 64)
    routing = moe.router(x.view(-1, 64), seq_len=16)
    cap = math.ceil(0.5 * 32 * 2 / 4)
    assert routing.counts.max() <= cap
    assert routing.dropped == 64 - routing.counts.sum() > 0


def test_expert_choice_gives_each_expert_its_top_tokens():
    torch.manual_seed(2)
    r = ExpertChoiceRouter(16, 4, 2, RouterConfig(kind="expert_choice", capacity_factor=1.0))
    torch.nn.init.normal_(r.gate.weight, std=1.0)
    x = torch.randn(10, 16)
    routing = r(x, seq_len=10)
    scores = F.linear(x, r.gate.weight).softmax(-1)
    cap = math.ceil(1.0 * 10 * 2 / 4)
    assert routing.counts.tolist() == [cap] * 4
    for e, tokens in enumerate(routing.token.view(4, cap)):
        assert set(tokens.tolist()) == set(scores[:, e].topk(cap).indices.tolist())
        assert torch.allclose(routing.gate.view(4, cap)[e], scores[tokens, e])
    served = set(routing.token.tolist())
    assert routing.dropped == 10 - len(served)


def test_expert_bias_steers_the_choice_but_not_the_gates():
    r = token_choice(k=2, bias_update_rate=0.01)
    x = torch.randn(12, 16)
    r.expert_bias[3] = 100.0
    routing = r(x, seq_len=12)
    assert routing.counts[3] == 12  # every token now takes expert 3 ...
    probs = F.linear(x, r.gate.weight).softmax(-1)
    experts = torch.repeat_interleave(torch.arange(6), routing.counts)
    pair = torch.stack([probs[routing.token, experts], routing.gate])
    per_token = torch.zeros(12).index_add(0, routing.token, pair[0])
    assert torch.allclose(routing.gate, pair[0] / per_token[routing.token])  # ... unbiased gates


@pytest.mark.parametrize(("router", "capacity"), [("token_choice", 0.0), ("token_choice", 0.5),
                                                  ("expert_choice", 1.0)])
def test_layer_output_is_the_gated_sum_of_its_experts(router, capacity):
    """Over the kept assignments only: a dropped one adds nothing (the token keeps its
    residual). Tolerance: the grouped matmul and this per-token loop sum in other orders
    (which also differ between CPUs' matmul kernels), a few fp32 ulps at the output's
    magnitude (up to ~9 here: an absolute 1e-6 was under 2 ulps and failed on some CPUs)."""
    moe = layer(f"model.moe.router.kind={router}", "model.moe.shared_experts=1",
                f"model.moe.router.capacity_factor={capacity}")
    x = torch.randn(2, 5, 64)
    out = moe(x)
    flat = x.view(-1, 64)
    routing = moe.router(flat, seq_len=5)
    if router == "token_choice" and capacity:
        assert routing.dropped > 0
    experts = torch.repeat_interleave(torch.arange(4), routing.counts)
    e = moe.experts
    expect = moe.shared(flat).clone()
    for t, i, g in zip(routing.token, experts, routing.gate, strict=True):
        expect[t] += g * ((F.silu(flat[t] @ e.w1[i]) * (flat[t] @ e.w3[i])) @ e.w2[i])
    ulp = torch.finfo(torch.float32).eps * expect.abs().max().item()
    torch.testing.assert_close(out.view(-1, 64), expect, rtol=0, atol=4 * ulp)


def test_aux_losses_reach_the_router_with_the_block_factor():
    moe = layer("model.moe.router.z_loss_coeff=0.1", "model.moe.router.aux_loss_coeff=0.5")
    x = torch.randn(2, 8, 64)
    moe.controls.aux_loss_scale = 3.0
    (moe(x) * 0).sum().backward()  # no main loss: the router's gradient is the aux part
    grad = moe.router.gate.weight.grad.clone()
    moe.zero_grad()
    routing = moe.router(x.view(-1, 64), seq_len=8)
    (3.0 * (0.5 * routing.balance + 0.1 * routing.z)).backward()
    assert torch.allclose(grad, moe.router.gate.weight.grad, rtol=1e-5, atol=1e-8)


def test_statistics_count_training_forwards_once_even_when_recomputed():
    x = torch.randn(2, 8, 64)
    plain, recomputed = layer(), layer()
    plain(x).sum().backward()
    checkpoint(recomputed, x.clone().requires_grad_(), use_reentrant=False).sum().backward()
    assert len(plain.records) == len(recomputed.records) == 1
    assert torch.equal(plain.records[0], recomputed.records[0])
    counts, totals = plain.step_statistics(1)
    assert counts.sum() == totals[TOTALS.index("assigned")] == 2 * 8 * 2
    with torch.no_grad():
        plain(x)  # evaluation does not count
    plain.eval()
    plain(x)
    assert len(plain.records) == 1
    plain.train()
    plain(x)  # a second pass: the step's statistics are its last passes
    assert torch.equal(plain.step_statistics(2)[1], 2 * plain.step_statistics(1)[1])


def test_presets_build_and_count_active_parameters():
    for preset, total_b, active_b in (("mixtral_8x7b", 46.7, 12.9),
                                      ("deepseek_v3_like", None, None)):
        cfg = load_config([f"model={preset}"]).model
        total, active = cfg.num_params(32000), cfg.num_params(32000, active=True)
        assert active < total
        if total_b is not None:  # Mixtral's published 46.7B total, 12.9B active
            assert abs(total / 1e9 - total_b) < 0.1 and abs(active / 1e9 - active_b) < 0.1
        with torch.device("meta"):
            from triforge.models.transformer import Transformer
            model = Transformer(cfg, vocab_size=32000)
        assert sum(p.numel() for p in model.parameters()) == total


@pytest.mark.parametrize(("override", "message"), [
    ("model.moe.top_k=5", r"top_k\(5\) must be in \[1, model.moe.num_experts\(4\)\]"),
    ("model.moe.router.kind=expert_choice", "needs model.moe.router.capacity_factor > 0"),
    ("model.moe.router.kind=nope", "router.kind='nope' is not one of"),
    ("model.moe.expert_hidden=60", "multiples of 8"),
])
def test_impossible_moe_configs_are_one_line_errors(override, message):
    from triforge.errors import ConfigError
    with pytest.raises(ConfigError, match=message):
        load_config(["model=moe_tiny", override])


def test_ties_go_to_the_lowest_index_whatever_the_other_scores():
    from triforge.models.moe.router import top_indices
    torch.manual_seed(0)
    for _ in range(20):
        scores = torch.rand(64)
        scores[[5, 17, 40]] = scores.max() * 0.5 + 0.25  # a three-way tie
        order = sorted(range(64), key=lambda i: (-scores[i].item(), i))
        for k in (1, 8, 33, 63):
            assert top_indices(scores, k).tolist() == order[:k]


@pytest.mark.parametrize(("overrides", "world", "message"), [
    (["model=tiny", "parallel.ep=2"], 2, r"parallel.ep\(2\) needs a mixture-of-experts model"),
    (["model=moe_tiny", "model.moe.num_experts=3", "model.moe.top_k=1", "parallel.ep=2"], 2,
     r"parallel.ep\(2\) must divide model.moe.num_experts\(3\)"),
    (["model=moe_tiny", "parallel.ep=2", "parallel.dp_replicate=2", "parallel.dp_shard=2"], 4,
     r"set parallel.dp_replicate=1"),
    (["model=moe_tiny", "parallel.tp=2"], 2,
     r"tp\(2\) with mixture-of-experts layers .* set parallel.ep to a multiple of tp, "
     r"e.g. parallel.ep=2"),
    (["model=moe_tiny", "parallel.tp=2", "parallel.ep=1", "parallel.dp_shard=2"], 4,
     r"parallel.ep=2"),
])
def test_expert_parallel_layouts_it_cannot_run_are_refused(overrides, world, message):
    from triforge.errors import ConfigError
    from triforge.launcher.env import ProcessEnv
    from triforge.launcher.train import resolve_layout
    with pytest.raises(ConfigError, match=message):
        resolve_layout(load_config(overrides), ProcessEnv(world_size=world))
