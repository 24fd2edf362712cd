"""User-facing errors: one clear line, a non-zero exit, no traceback unless `--debug`.

`entrypoint(main)` wraps every recipe's `main`. Inside the package, code raises `UserError` at the boundary
(configs, files, datasets) with a message that names the file, key, column or row.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input: the message is shown as one line to the user, without a traceback."""


def debug_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("POSTTRAIN_DEBUG", "") not in ("", "0")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text


def entrypoint(main: Callable[[], object]) -> None:
    """Run `main`, turning any exception into one line on stderr and exit code 2 (bad input) or 1 (bug).

    `--debug` (anywhere on the command line) or POSTTRAIN_DEBUG=1 shows the full traceback instead.
    """
    debug = debug_requested()
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # an unexpected failure: still one line, but say how to see more
        if debug:
            raise
        print(
            f"error: {exc.__class__.__name__}: {_one_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr
        )
        sys.exit(1)
