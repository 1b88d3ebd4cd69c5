"""The devices the planner knows: dense bf16 peak, memory, and link bandwidths per GPU.

Bandwidths are bytes/s per GPU in one direction, as a ring collective sees them: NVLink
inside a node (H100/H200: 900 GB/s bidirectional, 450 each way; A100: 600/300), and the
GPU's share of the inter-node network (one 400 Gb/s NIC per GPU on H100/H200 clusters,
200 Gb/s on A100 ones: 50 and 25 GB/s). ``intra_bw=``/``inter_bw=`` override them for a
cluster that differs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from triforge.trainer.flops import GPU_PEAK_BF16

GiB = 2**30


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    memory_bytes: float  # what the device reports as total memory
    intra_bw: float  # bytes/s per GPU inside a node
    inter_bw: float  # bytes/s per GPU across nodes


DEVICES = {
    "h100": Device("H100 SXM 80GB", GPU_PEAK_BF16["H100"], 79.6 * GiB, 450e9, 50e9),
    "h200": Device("H200 141GB", GPU_PEAK_BF16["H200"], 139.8 * GiB, 450e9, 50e9),
    "a100": Device("A100 SXM 80GB", GPU_PEAK_BF16["A100"], 79.2 * GiB, 300e9, 25e9),
    "a100_40gb": Device("A100 SXM 40GB", GPU_PEAK_BF16["A100"], 39.4 * GiB, 300e9, 25e9),
    "b200": Device("B200 180GB", GPU_PEAK_BF16["B200"], 178.4 * GiB, 900e9, 50e9),
    "mi300x": Device("MI300X 192GB", GPU_PEAK_BF16["MI300X"], 191.5 * GiB, 448e9, 50e9),
}


def device_named(name: str, *, intra_bw: float = 0, inter_bw: float = 0) -> Device:
    """The device ``name`` (a key of DEVICES), with bandwidths overridden where given (GB/s)."""
    if name not in DEVICES:
        raise ValueError(f"gpu={name} is not one of {sorted(DEVICES)}")
    dev = DEVICES[name]
    if intra_bw:
        dev = replace(dev, intra_bw=intra_bw * 1e9)
    if inter_bw:
        dev = replace(dev, inter_bw=inter_bw * 1e9)
    return dev
