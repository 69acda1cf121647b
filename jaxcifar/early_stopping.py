"""Early stopping on an eval metric, counted within each stage.

Per stage, because stages train different things (a frozen backbone's head, then the whole
network at a lower learning rate): a plateau of the head says that stage is done, not that
fine-tuning has nothing to add. So an early stop ends the current stage and the run goes on
to the next one; the metric's best and the patience count start afresh in every stage.
While early stopping is on, every stage ends on the weights of its best epoch (whether its
patience ran out or its epochs did, as Keras 3's `restore_best_weights` does), so the next
stage starts from them and the run ends on the last stage's best; the trainer restores
them from that epoch's checkpoint, and skips the step count to the next stage's first
step, so that stage runs on its planned schedule and data order.

The state is plain JSON in each checkpoint's record, so a resumed run keeps its count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax.training.early_stopping import EarlyStopping

from jaxcifar import early_stopping_fields

log = logging.getLogger("jaxcifar")


@dataclasses.dataclass(frozen=True)
class StageStopper:
    """Flax's `EarlyStopping` for one stage, plus where the stage's best epoch was."""

    stage_index: int
    flax_state: EarlyStopping
    best_epoch: int | None = None  # 1-based, as in metrics.jsonl
    best_step: int | None = None  # the step of that epoch's checkpoint

    @property
    def should_stop(self) -> bool:
        return self.flax_state.should_stop

    @property
    def has_improved(self) -> bool:
        """Whether the last epoch counted was the stage's new best."""
        return self.flax_state.has_improved


def is_enabled(config: ml_collections.ConfigDict) -> bool:
    return config.early_stopping.patience > 0


def require_validation(config: ml_collections.ConfigDict, has_validation: bool) -> None:
    """Refuse early stopping on data without a validation split, saying how to hold one out."""
    if is_enabled(config) and not has_validation:
        raise ValueError("early stopping picks epochs on a validation split, and this data has none: hold one out "
                         "with --config.data.validation_fraction=0.1 (or pass data.Data(validation=...)).")


def start(config: ml_collections.ConfigDict, stage_index: int) -> StageStopper:
    # Flax's EarlyStopping stops once `patience` epochs *before* the current one went without
    # improvement, i.e. after patience + 1 such epochs; the field means what Keras' does.
    flax_state = EarlyStopping(min_delta=config.early_stopping.min_delta,
                               patience=config.early_stopping.patience - 1)
    return StageStopper(stage_index, flax_state)


def _sign(config: ml_collections.ConfigDict) -> float:
    """-1 for a metric to maximise, +1 for one to minimise: Flax's EarlyStopping only minimises."""
    return -1.0 if early_stopping_fields.watchable_metrics(config.objective)[config.early_stopping.metric] else 1.0


def update(config: ml_collections.ConfigDict, stopper: StageStopper, entry: dict) -> StageStopper:
    """`stopper` after the epoch logged as `entry` (a metrics.jsonl entry)."""
    flax_state = stopper.flax_state.update(_sign(config) * entry[config.early_stopping.metric])
    if not flax_state.has_improved:
        return dataclasses.replace(stopper, flax_state=flax_state)
    return dataclasses.replace(stopper, flax_state=flax_state, best_epoch=entry["epoch"], best_step=entry["step"])


def best_value(config: ml_collections.ConfigDict, stopper: StageStopper) -> float:
    """The watched metric's best value in the stage, as metrics.jsonl has it."""
    return _sign(config) * stopper.flax_state.best_metric


def report(config: ml_collections.ConfigDict, stopper: StageStopper, stage_name: str, epoch: int) -> dict:
    """What summary.json says of a stage that stopped early after `epoch`."""
    return {"stage": stage_name, "epoch": epoch, "best_epoch": stopper.best_epoch,
            "metric": config.early_stopping.metric, "best_value": best_value(config, stopper)}


def to_json(stopper: StageStopper) -> dict:
    s = stopper.flax_state
    # No epoch of the stage evaluated yet: Flax's best is inf, which JSON cannot hold.
    best = None if math.isinf(s.best_metric) else s.best_metric
    return {"stage_index": stopper.stage_index, "best_metric": best, "patience_count": s.patience_count,
            "should_stop": s.should_stop, "has_improved": s.has_improved, "best_epoch": stopper.best_epoch,
            "best_step": stopper.best_step}


def from_json(config: ml_collections.ConfigDict, saved: dict) -> StageStopper:
    fresh = start(config, saved["stage_index"])
    best = math.inf if saved["best_metric"] is None else saved["best_metric"]
    flax_state = fresh.flax_state.replace(best_metric=best, patience_count=saved["patience_count"],
                                          should_stop=saved["should_stop"], has_improved=saved["has_improved"])
    return dataclasses.replace(fresh, flax_state=flax_state, best_epoch=saved["best_epoch"],
                               best_step=saved["best_step"])


def from_record(config: ml_collections.ConfigDict, record: dict) -> StageStopper | None:
    """Early stopping's count for a checkpoint's stage, as saved with it (None when off)."""
    if not is_enabled(config):
        return None
    saved = record.get("early_stopping")
    if saved is None:
        return start(config, record["stage_index"])
    return from_json(config, saved)


def end_stage_if_over(config: ml_collections.ConfigDict, stopper: StageStopper | None, stages: list,
                      steps_per_epoch: int, state: Any, stopped_early: list[dict],
                      restore: Callable[[int, Any], tuple[Any, dict]], sharding: jax.sharding.Sharding) -> Any:
    """Once the stopper's stage is over (its patience ran out, or its epochs did): the
    weights of its best epoch, restored from that epoch's checkpoint (`restore(step, state)`),
    at the next stage's first step, so that stage keeps its planned schedule and data order.
    An early stop is appended to `stopped_early`. Follows from the checkpoint's record alone,
    so a run resumed from the checkpoint saved just before does the same."""
    if stopper is None:
        return state
    stage = stages[stopper.stage_index]
    end_step = stage.end_epoch * steps_per_epoch
    if not stopper.should_stop and int(state.step) < end_step:
        return state
    if stopper.should_stop:
        stopped_early.append(report(config, stopper, stage.name, int(state.step) // steps_per_epoch))
        log.info("Stage %r stopped early after epoch %d: %s did not improve for %d epochs. Going on from its "
                 "best epoch, %d.", stage.name, stopped_early[-1]["epoch"], config.early_stopping.metric,
                 config.early_stopping.patience, stopper.best_epoch)
    if stopper.best_step not in (None, int(state.step)):  # None: the stage trained no epoch
        state, _ = restore(stopper.best_step, state)
    return state.replace(step=jax.device_put(np.int32(end_step), sharding))
