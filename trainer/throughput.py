"""Per-interval training speed: tokens/s, MFU and peak memory."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable

import torch

from .flops import PeakFlops


class Throughput:
    def __init__(self, *, flops_per_token: int, peak: PeakFlops, num_devices: int,
                 device: torch.device, warn: Callable[[str], None] = print):
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.num_devices = num_devices
        self.device = device
        self.warn = warn
        self.reports = 0
        self.warned = False
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self._tokens = 0
        self._waited = 0.0

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def add_wait(self, seconds: float) -> None:
        """Time the step spent waiting for its batch (reported as a share of the interval)."""
        self._waited += seconds

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
        self.reports += 1
        if self.reports <= PeakFlops.REFINE or self._mfu(tokens_per_s) > 1.0:
            self.peak.refine()  # outside the interval: it ends above, the next starts below
        mfu = self._mfu(tokens_per_s)
        if mfu > 1.0 and not self.warned:
            self.warned = True
            self.warn(f"[warn] MFU {mfu:.0%} is above 100 %: the peak it divides by "
                      f"({self.peak.value / 1e12:.3f} TFLOP/s, {self.peak.source}) is too low "
                      "(a busy machine when it was measured?); set logging.peak_flops to "
                      "the device's real peak")
        waited = self._waited / elapsed
        self.reset()
        return {"tokens_per_s": tokens_per_s, "mfu": mfu, "data_wait": waited,
                "peak_mem_gib": peak_memory_gib(self.device)}

    def _mfu(self, tokens_per_s: float) -> float:
        return tokens_per_s * self.flops_per_token / (self.peak.value * self.num_devices)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
