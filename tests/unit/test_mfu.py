"""MFU's peak: measured in the run's compute dtype, refined over the first reports, and
never above 100 % without a warning."""

from __future__ import annotations

import time

import torch

from triforge.trainer.flops import PeakFlops
from triforge.trainer.throughput import Throughput

CPU = torch.device("cpu")


def test_the_peak_is_measured_in_the_compute_dtype_or_taken_as_configured():
    assert PeakFlops(CPU, 0.0, torch.bfloat16).source == "measured bf16 matmul"
    configured = PeakFlops(CPU, 5e12, torch.bfloat16)
    assert (configured.value, configured.source, configured.measured) == (5e12, "configured",
                                                                         False)


def test_a_peak_measured_on_a_busy_moment_is_raised_and_the_first_reports_refine_it():
    peak = PeakFlops(CPU, 0.0, torch.float32)
    real = peak.value
    peak.value = real / 1000  # as if the machine had been busy when it was measured
    warnings: list[str] = []
    # 10 tokens in at least 0.1 s at real / 1e4 FLOPs each: at most 1 % of the real peak,
    # and 1000 % of the low one
    meter = Throughput(flops_per_token=int(real / 1e4), peak=peak, num_devices=1, device=CPU,
                       warn=warnings.append)
    meter.add(10)
    time.sleep(0.1)
    record = meter.report()
    assert peak.value > real / 10  # measured again, the best kept
    assert record["mfu"] < 1.0 and not warnings


def test_mfu_that_stays_above_one_hundred_percent_is_warned_about_once():
    peak = PeakFlops(CPU, 1.0, torch.float32)  # configured far too low: never re-measured
    warnings: list[str] = []
    meter = Throughput(flops_per_token=10**6, peak=peak, num_devices=1, device=CPU,
                       warn=warnings.append)
    for _ in range(3):
        meter.add(1000)
        assert meter.report()["mfu"] > 1.0
    assert len(warnings) == 1 and "set logging.peak_flops" in warnings[0]
