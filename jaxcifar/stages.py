"""A run's stages (config.stages: e.g. a frozen-backbone stage, then fine-tuning) as epoch
ranges, and each stage's optimizer and pure train step: `build_stage`, the one place a
step is built, shared by the loop and by benchmarks/ (side-effect free: nothing is written).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import optax

from jaxcifar import config as config_lib
from jaxcifar import optim, prune, steps
from jaxcifar.methods.base import Method, StageContext


@dataclasses.dataclass
class Stage:
    """One stage of the run with its epoch range and compiled step."""

    index: int
    name: str
    config: ml_collections.ConfigDict
    first_epoch: int
    end_epoch: int

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.first_epoch


def plan_stages(config: ml_collections.ConfigDict) -> list[Stage]:
    out, epoch = [], 0
    for i, (name, stage_cfg) in enumerate(config_lib.stage_plan(config)):
        out.append(Stage(i, name, stage_cfg, epoch, epoch + stage_cfg.epochs))
        epoch += stage_cfg.epochs
    return out


def stage_of_epoch(stages: list[Stage], epoch: int) -> Stage:
    return next((s for s in stages if s.first_epoch <= epoch < s.end_epoch), stages[-1])


@dataclasses.dataclass(frozen=True)
class BuiltStage:
    tx: optax.GradientTransformation
    train_step: Callable[[steps.TrainState, dict], tuple[steps.TrainState, dict]]  # pure, not yet jitted
    trainable: set[str]  # '/'-joined paths of the parameters the stage trains
    frozen_backbone: bool  # no backbone parameter trains: its BatchNorm runs in inference mode


def build_stage(method: Method, config: ml_collections.ConfigDict, stage: Stage, params: Any,
                steps_per_epoch: int) -> BuiltStage:
    """The one place a stage's step is built, for the loop and for benchmarks/: the stage's
    optimizer over the parameter groups and `peft.mode`, and the method's step, told
    whether any backbone parameter trains (if none, its BatchNorm runs in inference mode)
    and the stage's length (lookahead's schedule)."""
    tx, labels = optim.make_optimizer(stage.config, config.param_groups, params, steps_per_epoch, config.peft.mode)
    trainable = optim.trainable_paths(labels)
    frozen_backbone = optim.is_subtree_frozen(labels, "backbone")
    stage_steps = (stage.first_epoch * steps_per_epoch, (stage.end_epoch - stage.first_epoch) * steps_per_epoch)
    tx = prune.wrap(tx, config, trainable, params, stage_steps[1])
    train_step = method.train_step(tx, StageContext(steps_per_epoch, frozen_backbone, stage_steps))
    return BuiltStage(tx, train_step, trainable, frozen_backbone)
