"""Process roles under `accelerate launch`.

On a machine without a GPU, several processes must use the CPU over gloo. accelerate only does so when told
(`Accelerator(cpu=True)` or ACCELERATE_USE_CPU=1), otherwise every process believes it is alone and trains on
its own; `use_cpu()` makes that decision once for every stage. Stages that write a single folder (world,
tokenizer) run on the main process only (`main_process_only`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from accelerate import PartialState


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def use_cpu() -> bool:
    """CPU when asked (ACCELERATE_USE_CPU) or when several processes were launched and there is no CUDA device.

    Never under DeepSpeed: accelerate only builds the DeepSpeed engine when `cpu` is False; without CUDA,
    DeepSpeed's own CPU accelerator then runs it over the gloo group that `process_group_kwargs` forces.
    """
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return False
    if _flag("ACCELERATE_USE_CPU"):
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_group_kwargs() -> dict:
    """gloo for several processes without CUDA (DeepSpeed on CPU dies on a batch-size assertion otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        _deepspeed_reduces_over_gloo()
        return {"backend": "gloo"}
    return {}


def accelerator_kwargs() -> dict:
    """`Accelerator(**accelerator_kwargs(), ...)`: the CPU decision and the process group, as every stage sets them."""
    from accelerate.utils import InitProcessGroupKwargs

    group = process_group_kwargs()
    return {"cpu": use_cpu(), "kwargs_handlers": [InitProcessGroupKwargs(**group)] if group else []}


def _deepspeed_reduces_over_gloo() -> None:
    """DeepSpeed on CPU JIT-compiles a shared-memory all-reduce kernel the first time it sets up its comm layer
    (a minute of C++ build on 2 cores, and a compiler on the machine). The group here is gloo, which does the same
    reductions, so mark that op as unavailable: DeepSpeed then reduces through torch.distributed, its own path
    for machines without the op. DeepSpeed has no setting for this; `ops.__compatible_ops__` is its op table,
    probed once and kept (its comment: "edits to it persist")."""
    if not _flag("ACCELERATE_USE_DEEPSPEED"):
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str | None = None) -> bool:
    """Does `device` (default: CUDA if present, else the CPU) compute bf16 natively? A GPU with bf16 support, or a
    CPU with AVX512-BF16 or AMX-BF16 (where oneDNN's bf16 matmuls run ~2x fp32: LOG 2026-12-06). Elsewhere bf16
    is emulated and slower than fp32."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def resolve_precision(setting: str | None, device: torch.device | str | None = None) -> str:
    """`mixed_precision` as accelerate takes it: auto → bf16 where `device` computes it natively, else no."""
    if setting in (None, "auto"):
        return "bf16" if native_bf16(device) else "no"
    return setting


def amp_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast computes in for a resolved `mixed_precision` (bf16 / fp16); None for no."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(precision: str, device: torch.device | str):
    """Mixed-precision context for inference outside a Trainer (probe, evals, rollouts): weights stay fp32 (the
    autocast cache casts each weight once per context, so wrap the whole generation), matmuls run in bf16/fp16."""
    dtype = amp_dtype(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def process_state() -> PartialState:
    """The process group, set up once; `Accelerator()` later joins the same one."""
    return PartialState(cpu=use_cpu(), **process_group_kwargs())


def main_process_only(fn: Callable) -> Callable:
    """Run `fn` on the main process; the other processes wait for it, then return None."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        state = process_state()
        if state.num_processes > 1 and state.is_main_process:
            print(
                f"[posttrain] {state.num_processes} processes ({state.distributed_type.value}); this stage runs on the main one"
            )
        result = fn(*args, **kwargs) if state.is_main_process else None
        state.wait_for_everyone()
        return result

    return wrapper
