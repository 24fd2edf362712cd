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
