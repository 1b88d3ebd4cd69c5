"""Model FLOPs utilization: achieved model FLOP/s over the device's peak.

FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): 6N for the matmuls of the
N non-embedding parameters (forward + backward) plus 12 * L * h * s for attention scores,
with h the model width, L the layer count and s the sequence length.
"""

from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peaks (FLOP/s) of common training GPUs, by device-name substring.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "MI300X": 1307e12,
    "B200": 2250e12,
}


def flops_per_token(n_params_non_embedding: int, n_layers: int, d_model: int, seq_len: int) -> int:
    return 6 * n_params_non_embedding + 12 * n_layers * d_model * seq_len


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, *,
                        trials: int = 5) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``: the CPU 'peak' MFU is
    measured against, since CPUs have no spec-sheet number that a framework could look up.
    The best of ``trials`` bursts of 0.1 s is taken (after one to warm up threads and caches),
    so a briefly busy machine does not lower the peak (and inflate MFU). The size is the
    largest of 256, 512, 1024 whose matmul takes at most ~50 ms here: fp16 on a CPU without
    fp16 units runs at a few GFLOP/s, where a 1024 matmul alone would take seconds."""
    # A generator of its own: a measurement (some ranks re-measure mid-run) must not move
    # the global RNG streams that checkpoints save.
    gen = torch.Generator().manual_seed(0)
    n = _matmul_size(device, dtype, gen)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    best = 0.0
    for trial in range(trials + 1):
        reps, start = 0, time.perf_counter()
        while reps < 2 or time.perf_counter() - start < 0.1:
            torch.matmul(a, b)
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if trial > 0:
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def _matmul_size(device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> int:
    if device.type == "cuda":
        return 1024
    a = torch.randn(256, 256, generator=gen).to(dtype=dtype)
    torch.matmul(a, a)  # warm-up
    start = time.perf_counter()
    torch.matmul(a, a)
    seconds = max(time.perf_counter() - start, 1e-6)
    n = 256
    while n < 1024 and seconds * (2 * n / 256) ** 3 <= 0.05:
        n *= 2
    return n


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class PeakFlops:
    """The per-device peak that MFU divides by, for the run's compute dtype: configured
    (``logging.peak_flops``), a known GPU's dense bf16/fp16 spec, or measured.

    A measured peak is only as good as the moment it was measured: contention then gives a
    low peak and an MFU far above 100 %. So it is measured again at the first ``REFINE``
    reports and whenever MFU comes out above 100 %, keeping the best; MFU still above 100 %
    after that gets one warning naming the fix."""

    REFINE = 3

    def __init__(self, device: torch.device, configured: float, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.measured = False
        name = DTYPE_NAMES.get(dtype, str(dtype))
        if configured > 0:
            self.value, self.source = configured, "configured"
            return
        if device.type == "cuda" and dtype != torch.float32:
            gpu = torch.cuda.get_device_name(device)
            for key, peak in GPU_PEAK_BF16.items():
                if key in gpu:
                    self.value, self.source = peak, f"{gpu} {name} spec"
                    return
        self.value, self.source = measure_matmul_peak(device, dtype), f"measured {name} matmul"
        self.measured = True

    def refine(self) -> None:
        """One more measurement (two bursts); the best peak so far is kept."""
        if self.measured:
            self.value = max(self.value, measure_matmul_peak(self.device, self.dtype, trials=2))
