"""Orbax checkpoints of the whole `TrainState` (params, optimizer state, BatchNorm
statistics, EMA, step, RNG) plus a small JSON record, in `WORKDIR/checkpoints`.

Saves are asynchronous; `wait()` before exit surfaces their errors. Kept: the latest
`keep` checkpoints, the best one by the objective's metric on the validation split (accuracy,
or kNN accuracy for SSL; a separate policy, so the latest is never deleted in favour of the
best; a run without a validation split has no best), and early stopping's best epoch of the current stage
(which the stage's end restores, however many epochs later). Restores go into the
*current* mesh's shardings, so a checkpoint written on 8 devices restores on 1 and vice versa.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from jaxcifar.steps import TrainState, inference_variables

# The model-selection score, higher is better: the objective's validation metric (accuracy, kNN
# accuracy, ...), or with early stopping on, the step of its newest best epoch (train.py).
METRIC = "selection"
STAGE_BEST = "early_stopping_best"  # saved among a checkpoint's metrics: its epoch improved the stage's best


def _best_metric(metrics: dict) -> float:
    return metrics[METRIC]


@contextlib.contextmanager
def _absl_warnings_off():
    """Orbax logs through absl; raise its threshold to errors for one call."""
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(before)


@dataclasses.dataclass
class NewestFlagged:
    """An Orbax preservation policy: keep the newest checkpoint whose metrics set `flag`.
    Stateless (the flag is stored with each checkpoint), so it holds across restarts."""

    flag: str

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        flagged = [c.step for c in checkpoints if (c.metrics or {}).get(self.flag)]
        return [bool(flagged) and c.step == flagged[-1] for c in checkpoints]


class Checkpointer:
    """A thin policy layer over `ocp.CheckpointManager`; one per workdir."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
            NewestFlagged(STAGE_BEST),
        ])
        options = ocp.CheckpointManagerOptions(best_fn=_best_metric, best_mode="max", preservation_policy=policy,
                                               enable_async_checkpointing=True)
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        # Handlers named up front, so a fresh process can read a checkpoint's metadata.
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "record": ocp.JsonCheckpointHandler()})

    def save(self, state: TrainState, record: dict, metrics: dict | None = None) -> None:
        """Start an async save at `state.step`; `record` is JSON (epoch, stage, history).
        `metrics` with STAGE_BEST true: kept until a newer such checkpoint is saved."""
        step = int(state.step)
        if step in self.manager.all_steps():
            return  # e.g. a signal arrived right after the epoch's save
        record = json.loads(json.dumps(record))  # a copy: the save is written later, while the caller goes on
        # A mid-epoch save (after a stop signal) has no eval metrics by design, so it never
        # competes for "best"; Orbax warns about each such save, which reads like a failure.
        with _absl_warnings_off() if metrics is None else contextlib.nullcontext():
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            record=ocp.args.JsonSave(record)), metrics=metrics)

    def wait(self) -> None:
        """Block until pending saves are on disk; raises if one failed."""
        self.manager.wait_until_finished()
        self.manager.check_for_errors()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict]:
        """Restore `step` into `target`'s structure and shardings (abstract or concrete).
        A checkpoint written before a TrainState field existed (e.g. lookahead's `slow`)
        restores when that field is off (None) in `target`."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)}
        on_disk = self.manager.item_metadata(step).state
        absent = [name for name in fields if name not in on_disk]
        if any(fields[name] is not None for name in absent):
            raise ValueError(f"The checkpoint at step {step} has no {absent}: it was written by a jaxcifar "
                             "without those features. Resume it with them turned off, or start a new run.")
        item = {name: value for name, value in fields.items() if name not in absent}
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(item),
                                                                      record=ocp.args.JsonRestore()))
        return type(target)(**{name: None for name in absent}, **restored.state), restored.record

    def restore_record(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record

    def restore_latest_good(self, make_target) -> tuple[TrainState, dict] | None:
        """Restore the newest checkpoint that reads back; a corrupt or truncated one is
        reported and skipped (never deleted). `make_target(record)` builds the target,
        since the optimizer state's structure depends on the checkpoint's stage."""
        for step in reversed(self.steps()):
            try:
                record = self.restore_record(step)
                return self.restore(step, make_target(record))
            except Exception as e:  # noqa: BLE001 - any read failure means "try the previous one"
                aside = self._move_aside(step)
                logging.warning("Checkpoint at step %d could not be restored (%s: %s); moved it to %s and "
                                "falling back to the previous one.", step, type(e).__name__, e, aside)
        return None

    def _move_aside(self, step: int) -> pathlib.Path:
        """Keep an unreadable checkpoint for inspection, out of the manager's way (so the
        re-trained step can be saved again)."""
        aside = self.directory.parent / "corrupt_checkpoints" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            aside.parent.mkdir(exist_ok=True)
            (self.directory / str(step)).rename(aside)
        multihost_utils.sync_global_devices(f"jaxcifar_move_aside_{step}")
        self.manager.reload()
        return aside

    def close(self) -> None:
        self.manager.close()


def load_state(source: str | pathlib.Path, which: str | int = "best") -> tuple[dict[str, Any], int]:
    """(every field of a saved TrainState, as a dict of host arrays, step), without knowing
    its model: `source` is a workdir, its `checkpoints` directory or one step directory;
    `which` is 'best', 'latest' or a step number."""
    path = pathlib.Path(source).absolute()
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / "state").is_dir():  # one step directory: read it through its checkpoints directory
        path, which = path.parent, int(path.name)
    if not path.is_dir():
        raise FileNotFoundError(f"No jaxcifar run or checkpoint at {source}.")
    manager = _open_for_reading(path)
    try:
        step = resolve_step(manager, which)
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(f"No checkpoint {which!r} in {path}; saved steps: {list(manager.all_steps())}.")
        target = _on_one_device(manager.item_metadata(step).state)
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    finally:
        manager.close()
    return state, step


def load_variables(source: str | pathlib.Path, which: str | int = "best") -> tuple[dict[str, Any], int]:
    """({'params', 'batch_stats'}, step) of a saved run, as host arrays, without knowing
    its model (`source` and `which` as for `load_state`). EMA weights are returned as
    `params` when the run kept them, since those are what it evaluates."""
    state, step = load_state(source, which)
    return inference_variables(state), step


def resolve_step(manager: ocp.CheckpointManager, which: str | int) -> int | None:
    """The step `which` names. 'best' is the checkpoint chosen on the validation split; a run
    that held out none chose nothing, so its 'best' is its final checkpoint, the weights its
    summary.json reports."""
    if which == "latest":
        return manager.latest_step()
    if which == "best":
        best = manager.best_step()
        return manager.latest_step() if best is None else best
    return int(which)


def _open_for_reading(directory: pathlib.Path) -> ocp.CheckpointManager:
    """A manager over an existing checkpoints directory, for restores only.

    Not `read_only=True`: in Orbax 0.12 that logs three warnings on every open (two for
    defaults it overrides, one unconditional) which read like errors to every user of
    evaluate, predict and export. A manager that is never asked to save, with create=False
    and no retention policy, writes and deletes nothing either (tests/test_evaluate.py
    checks that loading leaves the directory untouched)."""
    return ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=False, best_fn=_best_metric),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "record": ocp.JsonCheckpointHandler()})


def _on_one_device(tree_metadata: Any) -> Any:
    """Restore target from saved metadata, placed on this process's first device: the
    checkpoint may come from any number of devices (Orbax refuses a target-less restore
    onto a different topology)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree_metadata)
