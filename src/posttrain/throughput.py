"""Throughput and MFU: peak FLOP/s from a table for known GPUs, measured for CPUs.

MFU = achieved model FLOP/s (FLOPs per token × tokens/s) / peak FLOP/s of all devices used. On a CPU there is
no datasheet number worth trusting, so the peak is measured: the best of a few large fp32 matmuls with the
threads this process uses (nanochat's CPU figures are read against the same kind of measurement).
"""

from __future__ import annotations

import functools
import time

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from the vendors' datasheets.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16
    "T4": 65e12,  # fp16
}


@functools.cache
def measured_cpu_peak(n: int = 1024, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of an n×n matmul on this CPU with the current torch thread count (best of `repeats`: a busy
    neighbour process makes single timings slow, never fast). Measured once per process."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak_flops(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, fresh: bool = False
) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from); `fresh` re-measures a CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():  # longest names first in the table where it matters
            if key in name:
                return (peak if dtype in (torch.bfloat16, torch.float16) else peak / 2), f"table: {key}"
        return float("nan"), f"unknown GPU {name!r}"
    if fresh:
        measured_cpu_peak.cache_clear()
    return measured_cpu_peak(), f"measured fp32 matmul, {torch.get_num_threads()} threads"


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops: float, num_devices: int = 1) -> float:
    return flops_per_token * tokens_per_second / (peak_flops * num_devices)
