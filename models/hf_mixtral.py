"""Export of mixture-of-experts models in the Hugging Face Mixtral format
(``MixtralForCausalLM``).

Mixtral is our Llama block with the feed-forward replaced by ``block_sparse_moe``: a router
``gate`` (E, d) whose softmax over experts is cut to the top k and renormalized, and E SwiGLU
experts ``experts.i.{w1,w3,w2}`` (gate, up, down), stored one per expert as nn.Linear
weights. Ours are stacked and used as ``x @ w1[i]``, so each expert's weight is the
transpose of ours. Only the models Mixtral can express are exported: token choice with
softmax scores renormalized over the top k, dropless, an MoE feed-forward in every block,
no shared experts and no selection bias (each feature that is not so is named).
transformers 4 reads this per-expert layout as it is; transformers 5 converts it on load.
"""

from __future__ import annotations

import re

import torch

from .config import ModelConfig

_MOE_NAME = re.compile(r"^layers\.(\d+)\.feed_forward\.(router\.gate\.weight|router\.expert_bias|"
                       r"experts\.w[123])$")


def mixtral_problems(cfg: ModelConfig) -> list[str]:
    """What keeps ``cfg`` from being a Mixtral, one phrase each (empty: exportable)."""
    moe, router = cfg.moe, cfg.moe.router
    checks = [
        (router.kind == "token_choice", f"router kind {router.kind} (Mixtral: token_choice)"),
        (router.score == "softmax", f"router score {router.score} (Mixtral: softmax)"),
        (router.renormalize, "gates not renormalized over the top k (Mixtral renormalizes)"),
        (router.capacity_factor == 0, "a capacity factor (Mixtral is dropless)"),
        (router.bias_update_rate == 0, "an expert selection bias (Mixtral has none)"),
        (moe.every == 1 and moe.first_dense == 0, "dense blocks between MoE blocks"),
        (moe.shared_experts == 0, "shared experts (Mixtral has none)"),
    ]
    return [problem for ok, problem in checks if not ok]


def mixtral_config(cfg: ModelConfig, llama: dict) -> dict:
    """The Mixtral config.json: the Llama one (``models/hf.py hf_config``) plus the experts."""
    out = {key: value for key, value in llama.items() if key != "mlp_bias"}
    out.update({
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "intermediate_size": cfg.moe.expert_hidden or cfg.hidden_dim,
        "num_local_experts": cfg.moe.num_experts, "num_experts_per_tok": cfg.moe.top_k,
        "router_aux_loss_coef": cfg.moe.router.aux_loss_coeff, "output_router_logits": False,
        "router_jitter_noise": 0.0, "sliding_window": None,
    })
    return out


def mixtral_tensors(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The HF tensors of our MoE tensor ``name``; None when ``name`` is not an MoE tensor."""
    m = _MOE_NAME.match(name)
    if m is None:
        return None
    prefix = f"model.layers.{m.group(1)}.block_sparse_moe"
    part = m.group(2)
    if part == "router.gate.weight":
        return {f"{prefix}.gate.weight": tensor}
    if part == "router.expert_bias":
        return {}  # zero and unused in an exportable model (mixtral_problems)
    return {f"{prefix}.experts.{i}.{part[-2:]}.weight": tensor[i].t().contiguous()
            for i in range(tensor.shape[0])}


_HF_MOE_NAME = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.(gate\.weight|"
                          r"experts\.(\d+)\.(w[123])\.weight)$")


def take_mixtral_tensors(hf: dict[str, torch.Tensor], num_experts: int
                         ) -> dict[str, torch.Tensor]:
    """Remove the Mixtral MoE tensors from ``hf`` and return them under our names, each
    layer's experts stacked (the per-expert layout Mixtral checkpoints are published in,
    and the one ``mixtral_tensors`` writes). The selection bias, which Mixtral has not, is
    zero."""
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    ours = {}
    for key in [k for k in hf if _HF_MOE_NAME.match(k)]:
        layer, part, index, which = _HF_MOE_NAME.match(key).groups()
        tensor = hf.pop(key)
        if part == "gate.weight":
            ours[f"layers.{layer}.feed_forward.router.gate.weight"] = tensor
            ours[f"layers.{layer}.feed_forward.router.expert_bias"] = torch.zeros(
                num_experts, dtype=torch.float32)
        else:
            experts.setdefault((layer, which), {})[int(index)] = tensor
    for (layer, which), per_expert in experts.items():
        stacked = torch.stack([per_expert[i].t() for i in range(num_experts)])
        ours[f"layers.{layer}.feed_forward.experts.{which}"] = stacked
    return ours
