"""Process roles under `accelerate launch`: stages that write one folder do it on the main process only."""

from __future__ import annotations

import functools
from collections.abc import Callable

from accelerate import PartialState


def main_process_only(fn: Callable) -> Callable:
    """Run `fn` on the main process; the other processes wait for it, then return None.

    For stages with no data-parallel work (world, tokenizer): under `accelerate launch` with N processes they
    must not write the same folder N times.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        state = PartialState()
        result = fn(*args, **kwargs) if state.is_main_process else None
        state.wait_for_everyone()
        return result

    return wrapper
