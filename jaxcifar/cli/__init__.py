"""What every `python -m jaxcifar.*` tool shares at its edge: a user's mistake is reported as
one `error:` line on stderr with exit status 2, never a traceback; tracebacks stay for bugs.

The package raises ValueError (a bad value), FileNotFoundError (a missing run, split or file),
FileExistsError (a workdir holding another run) and TensorFlowMissing (a feature of the
optional `tf` extra where it is not installed) for what the user can fix, with a message
that says how; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator

from jaxcifar.tf_extra import TensorFlowMissing

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, TensorFlowMissing)
USAGE_ERROR = 2  # argparse's status for a bad command line; ours for any other user mistake


def reports_user_errors(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a tool's `main(argv) -> status` so that a user error prints one line and returns 2."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            return USAGE_ERROR

    return wrapped


@contextlib.contextmanager
def shows_progress(prefix: str = "") -> Iterator[None]:
    """The package's progress lines (the `jaxcifar` logger at INFO) on stderr as `PREFIX
    message`, while a tool runs. A handler of its own, because absl (imported by TensorFlow
    and Orbax) may already have configured the root logger, which would print every line as
    `INFO:jaxcifar:...` and every library's INFO lines too; removed afterwards, so a tool
    called in-process (a notebook, a test) leaves no handler on a stream that has gone."""
    log = logging.getLogger("jaxcifar")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]
