"""User-facing errors: one clear line, a non-zero exit, no traceback unless `--debug`.

`entrypoint(main)` wraps every recipe's `main`. Inside the package, code raises `UserError` at the boundary
(configs, files, datasets) with a message that names the file, key, column or row.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """Bad input: the message is shown as one line to the user, without a traceback."""


def debug_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("POSTTRAIN_DEBUG", "") not in ("", "0")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large", "file write failed")
_SHORT_WRITE_TEXT = ("unexpected pos",)  # torch's zip writer after a short write: no errno, the disk is the suspect


def _chain(exc: BaseException | None):
    """`exc` and the exceptions it was raised from (or while handling), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full(exc: BaseException) -> str | None:
    """A write that failed for want of space (ENOSPC, a quota, a file-size limit), however the library that wrote
    wrapped it (torch.save and safetensors raise RuntimeError): the line to show, else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            where = f" writing {e.filename}" if e.filename else ""
            return f"{os.strerror(e.errno)}{where}"
        if any(t in str(e) for t in _DISK_FULL_TEXT):
            return _one_line(e)
    return None


def short_write(exc: BaseException) -> bool:
    return any(t in str(e) for e in _chain(exc) for t in _SHORT_WRITE_TEXT)


_OUTPUTS: set[str] = set()


def note_output(*paths) -> None:
    """Remember where this process writes (`parse_config` notes run_dir/output_dir): `low_space` looks there."""
    _OUTPUTS.update(str(p) for p in paths if p)


def low_space(paths=None) -> str | None:
    """torch.save and safetensors report a short write without its errno ("unexpected pos ..."): after such an
    error, a nearly full disk under one of `paths` (default: the noted outputs) is the cause to name."""
    for out in sorted(str(p) for p in paths) if paths is not None else sorted(_OUTPUTS):
        path = Path(out).absolute()
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        if usage.free < max(64 * 2**20, usage.total // 100):
            return f"{usage.free / 2**20:.1f} MiB left on the disk holding {out}"
    return None


def raise_if_disk_full(path, exc: BaseException) -> None:
    """Called where a save failed, before its temporary files are removed (which frees the space again): turn a
    failure for want of space into OSError(ENOSPC) naming `path`, which `entrypoint` reports in one line."""
    if disk_full(exc) or low_space([path]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


REFUSED_PICKLE = (
    "a state file is a pickle with more than tensors in it: refused, not run (torch.load with "
    "weights_only=True); resume only from checkpoints you trust, as written by posttrain"
)


def refused_pickle(exc: BaseException) -> bool:
    """torch's weights-only unpickler refused a file (its own message goes on to suggest turning that off)."""
    return "Weights only load failed" in str(exc)


def _close_progress_bars() -> None:
    """A failure mid-loop leaves tqdm's bar open without a newline: close it so the error starts its own line."""
    tqdm_std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001  (a bar that cannot close must not hide the error)
            pass


def _exit_launched_worker() -> None:
    """Under `accelerate launch` with several processes, end a worker whose work is done without the interpreter's
    finalization. The recipes have already written everything (atomically), finished the trackers and destroyed the
    process group; what is left are C++ destructors (gloo's worker threads, a DDP reducer's) that run in no fixed
    order at finalization and now and then abort a finished worker ("terminate called without an active
    exception", a non-zero exit after all its work; pytorch/pytorch#179291 describes the race). Not written by hand
    elsewhere: no library offers a clean exit for this."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import logging

    _close_progress_bars()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def entrypoint(main: Callable[[], object]) -> None:
    """Run `main`, turning any exception into one line on stderr and exit code 2 (bad input) or 1 (bug).

    `--debug` (anywhere on the command line) or POSTTRAIN_DEBUG=1 shows the full traceback instead.
    """
    debug = debug_requested()
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        main()
        _exit_launched_worker()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as exc:
        if debug:
            raise
        _close_progress_bars()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # an unexpected failure: still one line, but say how to see more
        if debug:
            raise
        _close_progress_bars()
        if refused_pickle(exc):
            print(f"error: {REFUSED_PICKLE}", file=sys.stderr)
            sys.exit(2)
        full = disk_full(exc) or (short_write(exc) and low_space())
        if full:
            print(
                f"error: disk full: {full}; nothing earlier was overwritten (checkpoints and stages are swapped in "
                "only when complete): free space, then rerun with --resume_from_checkpoint latest",
                file=sys.stderr,
            )
            sys.exit(1)
        print(
            f"error: {exc.__class__.__name__}: {_one_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr
        )
        sys.exit(1)
