"""triforge against nanoGPT on the same shape, data and batch: model FLOP/s, alternating.

nanoGPT (github.com/karpathy/nanoGPT) is the usual yardstick for a small GPT training loop;
it is not a dependency, so this bench imports ``model.py`` from a checkout you name. Both
train a 6-layer, 384-wide model at sequence 256, batch 8 (nanoGPT's GPT-2 block without
biases: LayerNorm, GELU MLP of 4h; ours: RMSNorm, RoPE, SwiGLU, whose matmuls have the same
parameter count), each with its own optimizer step (nanoGPT's ``configure_optimizers``
AdamW, ours from ``optim.*``), gradient clipping at 1.0, in fp32 or under bf16 autocast as
nanoGPT's ``train.py`` runs it, eager or compiled (nanoGPT: ``torch.compile`` of the whole
model; triforge: ``trainer.compile``, per block). Rounds alternate which loop runs first.

Model FLOPs per token are counted alike for both: 6 x (matmul parameters of the blocks and
the head) + 12 L h s (PaLM's attention term; nanoGPT's ``estimate_mfu`` counts the same).

    python -m bench.nanogpt --nanogpt PATH/TO/nanoGPT [--rounds 3] [--steps 6]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.overhead import FrameworkLoop, alternate, build_bench_trainer, own_loader

SHAPE = ["model=small", "model.d_model=384", "model.n_layers=6", "model.n_heads=6",
         "trainer.seq_len=256", "trainer.batch_size=8", "trainer.micro_batch_size=8"]


def load_nanogpt(path: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", path / "model.py")
    if spec is None or not (path / "model.py").is_file():
        raise SystemExit(f"error: no model.py in {path}; pass --nanogpt a nanoGPT checkout")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matmul_params(model: torch.nn.Module, head: torch.nn.Module) -> int:
    """Weights of every linear layer in the blocks plus the head's (tied or not)."""
    blocks = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m is not head)
    return blocks + head.weight.numel()


class NanoLoop:
    """nanoGPT's model and optimizer on the trainer's training split, kept warm."""

    def __init__(self, nanogpt, job, trainer, *, compiled: bool):
        cfg = nanogpt.GPTConfig(block_size=job.trainer.seq_len,
                                vocab_size=trainer.model.vocab_size, n_layer=job.model.n_layers,
                                n_head=job.model.n_heads, n_embd=job.model.d_model,
                                dropout=0.0, bias=False)
        torch.manual_seed(job.seed)
        self.raw = nanogpt.GPT(cfg)
        self.opt = self.raw.configure_optimizers(job.optim.weight_decay, job.optim.lr,
                                                 (job.optim.beta1, job.optim.beta2), "cpu")
        self.model = torch.compile(self.raw) if compiled else self.raw
        self.batch, self.clip = job.trainer.batch_size, job.trainer.grad_clip
        self.autocast = (torch.autocast("cpu", dtype=torch.bfloat16)
                         if job.precision.dtype == "bf16" else contextlib.nullcontext())
        self.loader = own_loader(job, trainer)

    def run(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            windows = self.loader.windows(self.loader.sampler.next_batch(self.batch))
            with self.autocast:
                _, loss = self.model(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            loss.item()
            times.append(time.perf_counter() - start)
        return times


def compare(nanogpt, dtype: str, compiled: bool, rounds: int, steps: int) -> dict:
    overrides = [f"precision={dtype}", f"trainer.compile={str(compiled).lower()}",
                 # no MFU here: no matmul bursts re-measuring the peak mid-round
                 "logging.peak_flops=1e12", *SHAPE]
    with tempfile.TemporaryDirectory() as run_dir:
        job, trainer = build_bench_trainer(run_dir, (rounds + 1) * steps * 2, overrides)
        theirs = NanoLoop(nanogpt, job, trainer, compiled=compiled)
        tokens = job.trainer.batch_size * job.trainer.seq_len
        # the warm-up round compiles, and is not measured
        rates = alternate(FrameworkLoop(trainer), theirs, rounds, steps, tokens)
        attention = 12 * job.model.n_layers * job.model.d_model * job.trainer.seq_len
        per_token = {"ours": 6 * matmul_params(trainer.model, trainer.model.output) + attention,
                     "nanogpt": 6 * matmul_params(theirs.raw, theirs.raw.lm_head) + attention}
    ratios = [o * per_token["ours"] / (t * per_token["nanogpt"]) for o, t in rates]
    return {"name": f"{dtype}{' compiled' if compiled else ''}", "rates": rates,
            "flops_per_token": per_token, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--only", nargs="*", default=None,
                        help="some of: fp32 bf16 fp32-compiled bf16-compiled")
    args = parser.parse_args()
    nanogpt = load_nanogpt(args.nanogpt)
    for dtype in ("fp32", "bf16"):
        for compiled in (False, True):
            key = f"{dtype}{'-compiled' if compiled else ''}"
            if args.only and key not in args.only:
                continue
            row = compare(nanogpt, dtype, compiled, args.rounds, args.steps)
            ours = statistics.median(o for o, _ in row["rates"])
            theirs = statistics.median(t for _, t in row["rates"])
            r = row["ratios"]
            print(f"{row['name']:<14} triforge {ours:,.0f} tok/s  nanoGPT {theirs:,.0f} tok/s  "
                  f"model FLOP/s ratio per round {' '.join(f'{x:.3f}' for x in r)} (median "
                  f"{statistics.median(r):.3f}; FLOPs/token {row['flops_per_token']['ours']:,}"
                  f" vs {row['flops_per_token']['nanogpt']:,})", flush=True)


if __name__ == "__main__":
    main()
