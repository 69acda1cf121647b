"""A run's stages (config.stages: e.g. a frozen-backbone stage, then fine-tuning) as epoch
ranges, each stage's optimizer and pure train step (`build_stage`, the one place a step is
built), and a run's initial state. `build_step` puts them together as the loop does, with
nothing written: what benchmarks/ and the experiments time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from jaxcifar import config as config_lib
from jaxcifar import augment, batch_order, methods, models, optim, parallel, prune, steps
from jaxcifar.data import Data
from jaxcifar.methods.base import Method, StageContext
from jaxcifar.pretrained import load_pretrained_backbone


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
    tx, labels = optim.make_optimizer(stage.config, config.param_groups, params, steps_per_epoch, config.peft.mode,
                                      config.peft.train_norms)
    trainable = optim.trainable_paths(labels)
    frozen_backbone = optim.is_subtree_frozen(labels, "backbone")
    stage_steps = (stage.first_epoch * steps_per_epoch, (stage.end_epoch - stage.first_epoch) * steps_per_epoch)
    tx = prune.wrap(tx, config, trainable, params, stage_steps[1])
    train_step = method.train_step(tx, StageContext(steps_per_epoch, frozen_backbone, stage_steps))
    return BuiltStage(tx, train_step, trainable, frozen_backbone)


def initial_state(config: ml_collections.ConfigDict, method: Method, train_images: np.ndarray,
                  sharding: jax.sharding.Sharding, init_from: str | None = None) -> steps.TrainState:
    """A run's state before its first step (without optimizer state): initialised from the
    seed, then data-dependent layers from the training images, then the backbone from
    `init_from`, and the method's own state from those weights."""
    rng = jax.random.key(config.seed)
    size = config.data.image_size
    create = lambda: steps.create_state(method.model, rng, (1, size, size, 3),  # noqa: E731
                                        ema=config.ema_decay > 0, lookahead=config.lookahead_every > 0)
    state = jax.jit(create, out_shardings=sharding)()
    data_init = models.DATA_DEPENDENT_INIT.get(config.model)
    if data_init is not None:  # e.g. airbench's whitening layer, from 5,000 training images
        sample = augment.model_input(train_images[:5000], size, config.augment.normalization)
        state = state.replace(params=jax.device_put(data_init(state.params, np.asarray(sample)), sharding))
    if init_from:
        state = load_pretrained_backbone(init_from, state, method.model, config.prune.channels)
    state = steps.reset_averages(state)
    # The method's own state (a momentum teacher, ...) starts from the weights the run starts from.
    return state.replace(method_state=jax.jit(method.init_state, out_shardings=sharding)(state))


@dataclasses.dataclass(frozen=True)
class FirstStep:
    """A run's first stage, ready to step: `state, metrics = train_step(state, batch)` for the
    batches of `stream`."""

    state: steps.TrainState  # the initial state, with the first stage's optimizer state
    train_step: Callable[[steps.TrainState, dict], tuple[steps.TrainState, dict]]  # jitted, donates the state
    stream: batch_order.TrainStream
    built: BuiltStage


def build_step(config: ml_collections.ConfigDict, data: Data) -> FirstStep:
    """The first stage's step, state and batches of `config` on `data`, built as the loop
    builds them but with no workdir, checkpoint or log written."""
    mesh = parallel.make_mesh()
    method = methods.create(config, data.num_classes)
    stream = batch_order.TrainStream(config, data, mesh, method.unlabeled_ratio)
    sharding = parallel.replicated(mesh)
    state = initial_state(config, method, data.train.images, sharding)
    built = build_stage(method, config, plan_stages(config)[0], state.params, stream.steps_per_epoch)
    state = state.replace(opt_state=jax.jit(built.tx.init, out_shardings=sharding)(state.params))
    return FirstStep(state, jax.jit(built.train_step, donate_argnums=0), stream, built)
