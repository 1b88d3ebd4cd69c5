"""Conversion to and from the Hugging Face Llama format (``LlamaForCausalLM``); models with
mixture-of-experts layers export as Mixtral (``models/hf_mixtral.py``).

Our blocks are Llama's: pre-norm RMSNorm, grouped-query attention with rotate-half RoPE (the
form HF Llama uses, so q/k weights need no permutation) and SwiGLU ``w2(silu(w1 x) * w3 x``,
i.e. gate = w1, up = w3, down = w2. Conversion is therefore a renaming of tensors plus a
config.json. The vocabulary is exported at its padded size (``model.padded_vocab``): rows past
the tokenizer's are never produced by it, and HF accepts any ``vocab_size``.

Files are read with ``json`` and ``safetensors`` only (no pickle), but a directory is still
trusted input: its weights become the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .hf_mixtral import mixtral_config, mixtral_problems, mixtral_tensors, take_mixtral_tensors
from .transformer import Transformer, build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # sharded HF checkpoints (large models)

_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
_PER_LAYER = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_name(name: str) -> str:
    """Our parameter name -> the HF Llama name (``layers.3.attention.wq.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``)."""
    if name in _TOP:
        return _TOP[name]
    m = _LAYER_NAME.match(name)
    if m is None or m.group(2) not in _PER_LAYER:
        raise KeyError(f"{name} has no Hugging Face Llama counterpart")
    return f"model.layers.{m.group(1)}.{_PER_LAYER[m.group(2)]}"


def hf_config(cfg: ModelConfig, vocab_size: int, *, dtype: str = "float32",
              eos_id: int | None = None, pad_id: int | None = None) -> dict:
    """The config.json of ``cfg`` as a LlamaForCausalLM. Our tokenizers have no BOS token,
    so ``bos_token_id`` is null rather than HF's default 1 (a real token of ours)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.d_model, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_seq_len, "vocab_size": vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "initializer_range": cfg.init_std, "torch_dtype": dtype,
        "bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": pad_id,
    }


def save_hf(model: Transformer, out_dir: Path, *, dtype: str = "float32",
            eos_id: int | None = None, pad_id: int | None = None) -> Path:
    """Write ``model`` (an unsharded Transformer) as ``out_dir``/{config.json,
    model.safetensors}. A tied head is stored once, as the embedding (HF ties it back)."""
    cfg = model.cfg
    if cfg.moe.enabled and (problems := mixtral_problems(cfg)):
        raise ValueError(f"model {cfg.name} cannot be written as a Mixtral: "
                         f"{'; '.join(problems)}")
    tensors = {}
    for name, t in model.state_dict().items():
        if cfg.tie_embeddings and name == "output.weight":
            continue  # safetensors refuses shared storage, and HF expects no lm_head here
        t = t.detach().to("cpu", DTYPES[dtype])
        moe = mixtral_tensors(name, t) if cfg.moe.enabled else None
        tensors.update(moe if moe is not None else {hf_name(name): t.contiguous()})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    config = hf_config(cfg, model.vocab_size, dtype=dtype, eos_id=eos_id, pad_id=pad_id)
    if cfg.moe.enabled:
        config = mixtral_config(cfg, config)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def check_hf_dir(path: Path, cfg: ModelConfig, vocab_size: int) -> None:
    """Raise ValueError (one line, every mismatch listed) unless ``path`` holds a Llama of
    exactly ``cfg``'s shapes. Reads config.json and the safetensors headers only."""
    hf = read_config(path)
    problems = config_mismatches(hf, cfg, vocab_size)
    if not problems:  # shapes follow from the config; only a damaged directory gets here
        problems = tensor_mismatches(path, expected_shapes(cfg, vocab_size))
    if problems:
        raise ValueError(f"{'; '.join(problems)} (set the model.* overrides to match "
                         f"{Path(path) / CONFIG_FILE}, or export with this model config)")


def read_hf_state_dict(path: Path, *, tied: bool, num_experts: int = 0
                       ) -> dict[str, torch.Tensor]:
    """The weights of HF directory ``path`` under our names, in the files' dtype. HF tensors
    without a counterpart (a tied model's lm_head copy, old rotary buffers) are left out;
    ``check_hf_dir`` should have passed, so none of ours is missing. ``num_experts`` > 0
    reads a Mixtral's experts too."""
    hf = {key: t for file in weight_files(path) for key, t in load_file(str(file)).items()}
    ours = take_mixtral_tensors(hf, num_experts) if num_experts else {}
    for key, t in hf.items():
        name = our_name(key)
        if name is not None and not (tied and name == "output.weight"):
            ours[name] = t
    if tied:  # the state dict of a tied model lists the shared tensor under both names
        ours["output.weight"] = ours["tok_embeddings.weight"]
    return ours


def our_name(hf: str) -> str | None:
    """The inverse of ``hf_name``; None for HF tensors we have no use for."""
    top = {v: k for k, v in _TOP.items()}
    if hf in top:
        return top[hf]
    m = _HF_LAYER_NAME.match(hf)
    per_layer = {v: k for k, v in _PER_LAYER.items()}
    if m is None or m.group(2) not in per_layer:
        return None
    return f"layers.{m.group(1)}.{per_layer[m.group(2)]}"


def read_config(path: Path) -> dict:
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{file} not found; point it at a directory written by triforge-export "
                         "or a Hugging Face Llama model")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON ({exc})") from None


def _rope_theta(hf: dict) -> float | None:
    # transformers 5 writes rope_parameters = {"rope_theta": ..., "rope_type": ...}.
    return hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))


def config_mismatches(hf: dict, cfg: ModelConfig, vocab_size: int) -> list[str]:
    """'<hf field> <value> != <our field> <value>' for every field that disagrees."""
    moe = cfg.moe.enabled
    pairs = [
        ("hidden_size", cfg.d_model, "model.d_model"),
        ("intermediate_size", (cfg.moe.expert_hidden or cfg.hidden_dim) if moe else
         cfg.hidden_dim, "model.moe.expert_hidden" if moe else "model.ffn_hidden"),
        ("num_hidden_layers", cfg.n_layers, "model.n_layers"),
        ("num_attention_heads", cfg.n_heads, "model.n_heads"),
        ("num_key_value_heads", cfg.kv_heads, "model.n_kv_heads"),
        ("head_dim", cfg.head_dim, "d_model/n_heads"),
        ("vocab_size", vocab_size, "padded vocabulary (model.vocab_size)"),
        ("tie_word_embeddings", cfg.tie_embeddings, "model.tie_embeddings"),
        ("rms_norm_eps", cfg.norm_eps, "model.norm_eps"),
        ("rope_theta", cfg.rope_theta, "model.rope_theta"),
    ]
    if moe:
        pairs += [("num_local_experts", cfg.moe.num_experts, "model.moe.num_experts"),
                  ("num_experts_per_tok", cfg.moe.top_k, "model.moe.top_k")]
    defaults = {"num_key_value_heads": hf.get("num_attention_heads"),
                "head_dim": cfg.head_dim, "tie_word_embeddings": False}
    values = {**defaults, **{k: v for k, v in hf.items() if v is not None},
              "rope_theta": _rope_theta(hf)}
    problems = [f"{key} {values.get(key)} != {ours_name} {ours}"
                for key, ours, ours_name in pairs if values.get(key) != ours]
    kind = "mixtral" if moe else "llama"
    if hf.get("model_type") != kind:
        problems.insert(0, f"model_type {hf.get('model_type')!r} is not {kind!r}")
    if moe:
        problems += mixtral_problems(cfg)
    rope_kind = hf.get("rope_scaling") or {"rope_type": (hf.get("rope_parameters") or {})
                                           .get("rope_type", "default")}
    if rope_kind.get("rope_type", rope_kind.get("type")) != "default":
        problems.append(f"rope scaling {rope_kind} is not supported (plain RoPE only)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            problems.append(f"{flag} true is not supported (no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']} != silu (SwiGLU)")
    return problems


def expected_shapes(cfg: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor a directory for ``cfg`` holds (from a meta model)."""
    meta = build_model(cfg, vocab_size=vocab_size)
    shapes = {}
    for name, t in meta.state_dict().items():
        if cfg.tie_embeddings and name == "output.weight":
            continue
        moe = mixtral_tensors(name, t) if cfg.moe.enabled else None
        shapes.update({k: tuple(v.shape) for k, v in moe.items()} if moe is not None
                      else {hf_name(name): tuple(t.shape)})
    return shapes


def tensor_mismatches(path: Path, expected: dict[str, tuple[int, ...]]) -> list[str]:
    found = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            found.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    problems = [f"{k} {found[k]} != {shape}" for k, shape in expected.items()
                if k in found and found[k] != shape]
    missing = [k for k in expected if k not in found]
    if missing:
        more = ", ..." if len(missing) > 3 else ""
        problems.append(f"missing {len(missing)} tensors ({', '.join(missing[:3])}{more})")
    return problems


def weight_files(path: Path) -> list[Path]:
    """model.safetensors, or the shards a model.safetensors.index.json names."""
    path = Path(path)
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    if (path / INDEX_FILE).is_file():
        shards = json.loads((path / INDEX_FILE).read_text())["weight_map"].values()
        return [path / name for name in sorted(set(shards))]
    raise ValueError(f"{path} has neither {WEIGHTS_FILE} nor {INDEX_FILE}; only safetensors "
                     "weights are read (no pickled .bin files)")
