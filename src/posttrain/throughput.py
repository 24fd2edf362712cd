"""Throughput and MFU: peak FLOP/s from TRL's datasheet table for GPUs (`trl.trainer.utils.get_peak_flops`), measured
for CPUs.

MFU = achieved model FLOP/s (FLOPs per token × tokens/s) / peak FLOP/s of all devices used. On a CPU there is
no datasheet number worth trusting, so the peak is measured: the best of a few large matmuls in the precision the
run computes in (fp32, or bf16 where autocast runs it), with the threads this process uses (nanochat's CPU figures are read against the same kind of measurement).
"""

from __future__ import annotations

import functools
import time

import torch


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
    if device.type == "cuda":  # TRL's datasheet table (word-boundary matches: an "L40" is not taken for an L4)
        from trl.trainer.utils import get_peak_flops

        name = torch.cuda.get_device_name(device)
        fp32 = dtype == torch.float32  # the table lists tensor-core bf16/fp16 peaks: fp32 (TF32) counts half bf16
        peak = get_peak_flops(name, "bfloat16" if fp32 else str(dtype).removeprefix("torch."))
        if peak is None:
            return float("nan"), f"unknown GPU {name!r} (not in TRL's peak-FLOPs table)"
        return (peak / 2 if fp32 else peak), f"TRL's table: {name}" + (" (fp32: half bf16)" if fp32 else "")
    if fresh:
        measured_cpu_peak.cache_clear()
    name = "bf16" if dtype == torch.bfloat16 else "fp32"  # a CPU's peak in the precision it trains in
    dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    return measured_cpu_peak(dtype=dtype), f"measured {name} matmul, {torch.get_num_threads()} threads"


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops: float, num_devices: int = 1) -> float:
    return flops_per_token * tokens_per_second / (peak_flops * num_devices)
