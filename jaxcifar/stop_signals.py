"""SIGTERM and SIGINT during training: caught, agreed on by every process at the same step,
answered with a checkpoint and `StopRequested` (the command line exits 128 + the signal)."""

from __future__ import annotations

import pathlib
import signal

import jax

from jaxcifar import parallel


class StopRequested(Exception):
    """SIGTERM/SIGINT reached this process or, in a multi-process run, another one; every
    process stopped at the same step and a checkpoint has been written."""

    def __init__(self, signum: int, step: int, workdir: pathlib.Path):
        super().__init__(f"Stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved in {workdir}. "
                         "Run the same command again to resume.")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """What a shell reports for a tool interrupted by this signal: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + self.signum


class StopSignals:
    """The stop signal this process received (installed for the length of a run), and when
    and how the processes agree to act on it."""

    def __init__(self, log_every_steps: int):
        self.log_every_steps = log_every_steps
        self.received: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        def handler(signum, frame):
            self.received = signum
        self._previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def check_due(self, steps_done: int) -> bool:
        """Whether to act on a stop signal after this step. A lone process acts at once; several
        must agree first, or one would enter Orbax's collective save while the others enter
        the next step's all-reduce, and all would hang. Agreeing syncs the host with the
        devices, so they agree where the loop syncs anyway, every `log_every_steps` steps."""
        return jax.process_count() == 1 or steps_done % self.log_every_steps == 0

    def agreed(self) -> int | None:
        """The stop signal that reached any process (the highest number if several), or None.
        Every process must ask at the same point of the loop.

        Why not JAX's preemption service (`multihost_utils.reached_preemption_sync_point`):
        it does work with a plain SIGTERM on CPU with gloo in jax 0.10.2 (both processes met
        at the same step), but its C++ SIGTERM notifier is silenced by any Python SIGTERM
        handler, it never hears SIGINT, it cannot tell the other processes which signal came,
        and it wants a call at every step with consecutive numbers, which a scanned epoch
        does not make. One all-gathered scalar at a point where the loop syncs covers both
        signals and both epoch paths, and a single process skips it."""
        return parallel.max_over_processes(self.received or 0) or None
