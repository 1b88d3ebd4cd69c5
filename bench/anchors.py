"""The planner's predictions for published training runs, beside what those runs achieved.

- Megatron-LM (Narayanan et al. 2021, section 5.1): GPT-3 175B (96 layers, width 12288,
  96 heads, sequence 2048, vocabulary 51200), batch 1536 on 1024 A100 80GB, at 140 TFLOP/s
  per GPU counted with their eq. 3 (which includes the recomputed forward): 34 days for
  300B tokens. Our block stands in with a SwiGLU of the GPT MLP's parameter count (8h^2).
- torchtitan (benchmarks/llama3_h100_202412_torchtitan.md, table 1): Llama 3.1 8B, FSDP
  over 8 H100s, local batch 2 x 8192, selective activation checkpointing: 5,762 tokens/s
  per GPU and 82.4 GiB of memory (their H100s have 96 GB and run at 500 W; they note the
  peak is below the SXM figure, which the planner assumes).

The planner's efficiency is an assumption (0.5 of the dense peak), not fitted to these.
"""

from __future__ import annotations

from triforge.models.config import ModelConfig
from triforge.plan import DEVICES, Layout, Workload, plan, predict

GPT3 = ModelConfig(name="gpt3_175b", d_model=12288, n_layers=96, n_heads=96,
                   ffn_hidden=32768, vocab_size=51200, max_seq_len=2048, tie_embeddings=True)


def megatron_tokens_per_gpu(tflops: float, cfg: ModelConfig, seq: int) -> float:
    """Tokens/s per GPU behind Megatron's eq. 3 figure: 96 l h^2 (1 + s/6h + V/16lh) FLOPs
    per token."""
    layers, h, v = cfg.n_layers, cfg.d_model, cfg.vocab_size
    return tflops * 1e12 / (96 * layers * h * h * (1 + seq / (6 * h) + v / (16 * layers * h)))


def rows() -> list[dict]:
    """Predicted / published for each anchor: throughput in tokens/s per GPU, memory in GiB."""
    from triforge.launcher.config import load_config

    out = []
    work = Workload(model=GPT3, vocab=51200, seq_len=2048, batch_size=1536)
    a100 = DEVICES["a100"]
    published = megatron_tokens_per_gpu(140, GPT3, 2048)
    # Megatron's layout for this size (tensor 8 inside a node, pipeline over nodes, full
    # recomputation, interleaved schedule), then the one the planner ranks first.
    megatron = Layout(dp_replicate=8, tp=8, pp=16, schedule="interleaved_1f1b", virtual=2,
                      ac="full")
    pred = predict(work, megatron, a100, gpus_per_node=8, efficiency=0.5)
    out.append({"name": "GPT-3 175B, 1024 A100, Megatron's layout", "unit": "tok/s/GPU",
                "predicted": pred.tokens_per_s_per_gpu, "published": published,
                "layout": megatron.overrides(), "rejected": pred.rejected})
    best = plan(work, 1024, a100, gpus_per_node=8)[0][0]
    out.append({"name": "GPT-3 175B, 1024 A100, planner's first", "unit": "tok/s/GPU",
                "predicted": best.tokens_per_s_per_gpu, "published": published,
                "layout": best.layout.overrides(), "rejected": ""})
    llama = load_config(["model=llama_8b"]).model
    work = Workload(model=llama, vocab=llama.vocab_size, seq_len=8192, batch_size=16)
    lay = Layout(dp_shard=8, micro_batch=2, ac="selective")
    pred = predict(work, lay, DEVICES["h100"], gpus_per_node=8, efficiency=0.5)
    out.append({"name": "Llama 3.1 8B, 8 H100, torchtitan FSDP", "unit": "tok/s/GPU",
                "predicted": pred.tokens_per_s_per_gpu, "published": 5762.0,
                "layout": lay.overrides(), "rejected": ""})
    out.append({"name": "Llama 3.1 8B, 8 H100, memory", "unit": "GiB",
                "predicted": sum(pred.memory.values()) / 2**30, "published": 82.4,
                "layout": lay.overrides(), "rejected": ""})
    for row in out:
        row["ratio"] = row["predicted"] / row["published"]
    return out


if __name__ == "__main__":
    for row in rows():
        print(f"{row['name']:<42} predicted {row['predicted']:8.1f} {row['unit']}, published "
              f"{row['published']:8.1f}, ratio {row['ratio']:.2f}  {' '.join(row['layout'])}"
              f" {row['rejected']}")
