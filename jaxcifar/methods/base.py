"""The protocol every method follows (`Method`, with its defaults), what the loop tells a
method about a stage (`StageContext`), and the `Evaluator` that runs a method's evaluators
(jaxcifar/evaluators/) on the mesh.
The package docstring says what a method declares and why."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from jaxcifar import batch_order, evaluators, methods, parallel, peft, precision
from jaxcifar import steps as steps_lib
from jaxcifar.data import ArraySplit


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
    """The network's constructor arguments, the one place a run's config becomes them: the
    recipe's `model_kwargs`, the PEFT adapters, and the compute dtype of `precision`."""
    return {**config.model_kwargs.to_dict(), "lora": peft.lora_of(config),
            "dtype": precision.compute_dtype(config.precision)[0]}


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What the loop tells a method about the stage it builds a loss for."""

    steps_per_epoch: int
    frozen_backbone: bool = False  # no backbone parameter trains: run its BatchNorm in inference mode
    stage_steps: tuple[int, int] | None = None  # (the stage's first global step, its number of steps)


class Method:
    """What a run learns. A subclass sets `model` (the network the optimizer trains) in its
    constructor and implements `loss`; the rest has defaults for a method that keeps no
    state of its own, reads labelled batches only and is measured by the evaluators its
    registry entry names."""

    model: nn.Module
    # Unlabelled images per labelled image in each step, as batch['unlabeled'] (uint8
    # images, no labels); 0: the method reads none.
    unlabeled_ratio: int = 0

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
        self.config, self.num_classes = config, num_classes

    @property
    def info(self) -> methods.MethodInfo:
        """The registry entry of the method this is (the one `config.objective` names)."""
        return methods.info(self.config.objective)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The eval metrics `evaluate` returns, in display order."""
        return tuple(self.info.eval_metrics)

    @property
    def metric(self) -> str:
        """The eval metric that picks the best checkpoint (higher is better)."""
        return self.info.selection

    def init_state(self, state: steps_lib.TrainState) -> Any:
        """`TrainState.method_state` for a run starting from `state`'s weights; None: none."""
        del state
        return None

    def loss(self, stage: StageContext) -> steps_lib.LossFn:
        raise NotImplementedError

    def after_update(self, state: steps_lib.TrainState) -> Any:
        """`method_state` once the optimizer step that produced `state` is done."""
        return steps_lib.keep_method_state(state)

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The averages of an epoch's (or a window's) metric sums logged as `train_<name>`."""
        return {"loss": sums["loss_sum"] / sums["count"]}

    def evaluate(self, evaluator: Evaluator, state: steps_lib.TrainState, split: ArraySplit) -> dict[str, float]:
        """`metrics` of `state` on `split`, from the evaluators the registry entry names."""
        return evaluators.evaluate(self.info.evaluators, StateOutputs(self, evaluator, state), split)

    @functools.cached_property
    def features(self) -> Callable[[dict, jax.Array], jax.Array]:
        """(variables, uint8 images) -> backbone features: what the kNN and the probe read."""
        return steps_lib.make_features(self.model, self.config.data.image_size, self.config.augment.normalization)

    @functools.cached_property
    def logits(self) -> Callable[[dict, jax.Array], jax.Array]:
        """(variables, uint8 images) -> class logits with the run's test-time augmentation,
        through the one inference path every tool uses (`steps.make_forward`)."""
        forward = steps_lib.make_forward(self.model, self.config.data.image_size, self.config.augment.normalization,
                                         self.config.tta_translate)
        return functools.partial(forward, tta=self.config.tta)

    def train_step(self, tx: optax.GradientTransformation,
                   stage: StageContext) -> Callable[[steps_lib.TrainState, dict], tuple[steps_lib.TrainState, dict]]:
        """The pure train step of this method in `stage`, with optimizer `tx`."""
        return steps_lib.make_train_step(self.loss(stage), tx, self.config, stage.stage_steps, self.after_update)


class Evaluator:
    """Runs a method's eval functions over a split on the run's mesh: global batches
    covering the split once, padded and masked, each process feeding its own rows."""

    def __init__(self, mesh: jax.sharding.Mesh, batch_size: int, train: ArraySplit):
        self.mesh, self.batch_size = mesh, batch_size
        self.train = train  # the run's training split (the kNN's and the probe's labelled bank)
        self._jitted: dict[Callable, Callable] = {}
        self._bank: tuple[Callable, jax.Array, np.ndarray] | None = None  # (fn, a weight, fn's outputs on train)

    def _batches(self, split: ArraySplit) -> Iterator[dict]:
        for local in batch_order.eval_batches(split, self.batch_size, jax.process_index(), jax.process_count()):
            yield parallel.to_global(local, self.mesh)

    def outputs(self, fn: Callable[[dict, jax.Array], jax.Array], state: steps_lib.TrainState,
                split: ArraySplit) -> np.ndarray:
        """`fn(variables, images)` of every example of `split`, in order, on the host, from
        the weights the run evaluates. Replicated before they leave the devices, so every
        process gets all of them. The train split's (the bank) are computed once per set of
        weights, which the eval split and each extra split share: arrays are immutable, so
        the same first weight object means the same weights (the step would not do: early
        stopping restores other weights at a step)."""
        variables = steps_lib.eval_variables(state)
        weight = jax.tree_util.tree_leaves(variables["params"])[0]
        if split is self.train and self._bank is not None and self._bank[0] is fn and self._bank[1] is weight:
            return self._bank[2]
        if fn not in self._jitted:
            self._jitted[fn] = jax.jit(fn, out_shardings=parallel.replicated(self.mesh))
        outputs = np.concatenate([np.asarray(self._jitted[fn](variables, batch["image"]))
                                  for batch in self._batches(split)])[:len(split)]
        if split is self.train:
            self._bank = (fn, weight, outputs)
        return outputs


@dataclasses.dataclass(frozen=True)
class StateOutputs:
    """`evaluators.Outputs` of a training state: its method's functions run on the mesh."""

    method: Method
    evaluator: Evaluator
    state: steps_lib.TrainState

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.method.config

    @property
    def num_classes(self) -> int:
        return self.method.num_classes

    @property
    def bank(self) -> ArraySplit:
        return self.evaluator.train

    def features(self, split: ArraySplit) -> np.ndarray:
        return self.evaluator.outputs(self.method.features, self.state, split)

    def logits(self, split: ArraySplit) -> np.ndarray:
        return self.evaluator.outputs(self.method.logits, self.state, split)
