"""Per-interval training speed: tokens/s, MFU and peak memory."""

from __future__ import annotations

import contextlib
import resource
import time

import torch


class Throughput:
    def __init__(self, *, flops_per_token: int, peak_flops: float, num_devices: int,
                 device: torch.device):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.num_devices = num_devices
        self.device = device
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self._tokens = 0

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    @contextlib.contextmanager
    def paused(self):
        """Leave the enclosed time (evaluation, checkpointing) out of the training rate."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - start

    def report(self) -> dict:
        """Metrics since the last report, then start a new interval."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        tokens_per_s = self._tokens / elapsed
        mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * self.num_devices)
        self.reset()
        return {"tokens_per_s": tokens_per_s, "mfu": mfu, "peak_mem_gib": peak_memory_gib(self.device)}


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
