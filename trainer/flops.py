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


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a large square matmul on ``device``: the CPU 'peak' MFU is measured against,
    since CPUs have no spec-sheet number that a framework could look up. The best of several
    trials is taken, so a briefly busy machine does not lower the peak (and inflate MFU)."""
    n = 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for trial in range(6):
        reps, start = 0, time.perf_counter()
        while reps < 2 or time.perf_counter() - start < 0.1:
            torch.matmul(a, b)
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if trial > 0:  # the first trial warms up threads and caches
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def device_peak_flops(device: torch.device, configured: float) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for MFU: configured, a known GPU, or measured."""
    if configured > 0:
        return configured, "configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak, f"{name} bf16 spec"
    return measure_matmul_peak(device), "measured fp32 matmul"
