"""What a run learns: the loss of a batch, the metrics of an evaluation, and which
checkpoint is the best. The training loop (train.py) and the train step (steps.py) are
written once against this seam; supervised classification and each self-supervised method
are instances of it, chosen by `config.objective`.

An objective holds its model and the config, and provides:
  - `loss(freeze_backbone, steps_per_epoch)`: a pure `LossFn` for steps.make_train_step;
  - `evaluate(evaluator, state, split)`: metrics of `state` on a split, computed through
    an `Evaluator` (which owns the mesh and the processes);
  - `metric`: the eval metric that picks the best checkpoint and heads summary.json.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcifar import augment, models, parallel, peft, precision, ssl
from jaxcifar import data as data_lib
from jaxcifar import steps as steps_lib
from jaxcifar.data import ArraySplit

# (params, batch_stats, batch, step key, run key, step) -> (mean loss, (new batch_stats, metric sums)).
# Metric sums are `loss_sum`, `correct` and `count`, which the loop accumulates and averages.
LossFn = Callable[[Any, Any, dict, jax.Array, jax.Array, jax.Array], tuple[jax.Array, tuple[Any, dict]]]


class Evaluator:
    """Runs an objective's eval functions over a split on the run's mesh: global batches
    covering the split once, padded and masked, each process feeding its own rows."""

    def __init__(self, mesh: jax.sharding.Mesh, batch_size: int, train: ArraySplit):
        self.mesh, self.batch_size = mesh, batch_size
        self.train = train  # the run's training split (the kNN monitor's labelled bank)
        self._jitted: dict[Callable, Callable] = {}

    def _batches(self, split: ArraySplit) -> Iterator[dict]:
        for local in data_lib.eval_batches(split, self.batch_size, jax.process_index(), jax.process_count()):
            yield parallel.to_global(local, self.mesh)

    def sums(self, eval_step: Callable[[steps_lib.TrainState, dict], dict], state: steps_lib.TrainState,
             split: ArraySplit) -> dict:
        """Metric sums of a jitted `eval_step(state, batch)` over `split`, kept on the device."""
        sums = None
        for batch in self._batches(split):
            sums = steps_lib.accumulate(sums, eval_step(state, batch))
        return sums

    def outputs(self, fn: Callable[[dict, jax.Array], jax.Array], state: steps_lib.TrainState,
                split: ArraySplit) -> np.ndarray:
        """`fn(variables, images)` of every example of `split`, in order, on the host, from
        the weights the run evaluates. Replicated before they leave the devices, so every
        process gets all of them."""
        if fn not in self._jitted:
            self._jitted[fn] = jax.jit(fn, out_shardings=parallel.replicated(self.mesh))
        variables = steps_lib.eval_variables(state)
        return np.concatenate([np.asarray(self._jitted[fn](variables, batch["image"]))
                               for batch in self._batches(split)])[:len(split)]


class Classification:
    """Supervised classification: cross-entropy on augmented images; evaluated by accuracy
    (with the recipe's test-time augmentation) and loss on the eval split."""

    metric = "accuracy"
    metrics = ("loss", "accuracy")

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, model: nn.Module | None = None):
        """`model`: one built elsewhere (a benchmark's dtype variant); default: the config's."""
        self.config = config
        self.model = model or models.create_model(config.model, num_classes, **model_kwargs(config))
        self._eval_step = jax.jit(steps_lib.make_eval_step(self.model, config))

    def loss(self, freeze_backbone: bool, steps_per_epoch: int) -> LossFn:
        """`freeze_backbone` runs the backbone's BatchNorm in inference mode (its statistics
        neither used from the batch nor updated), as Keras does for `trainable=False`."""
        model, config = self.model, self.config

        def loss_fn(params, batch_stats, batch, key, run_key, step):
            images = augment.augment(key, augment.resize(batch["image"], config.data.image_size), config.augment,
                                     run_key=run_key, index=batch.get("index"), epoch=step // steps_per_epoch)
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                          freeze_backbone=freeze_backbone, mutable=["batch_stats"],
                                          rngs={"dropout": steps_lib.dropout_key(run_key, step)})
            loss = steps_lib.cross_entropy(logits, batch["label"], config.label_smoothing)
            return loss.mean(), (updates.get("batch_stats", {}), steps_lib.metric_sums(logits, batch["label"], loss))

        return loss_fn

    def evaluate(self, evaluator: Evaluator, state: steps_lib.TrainState, split: ArraySplit) -> dict[str, float]:
        return steps_lib.summarize(evaluator.sums(self._eval_step, state, split))


class SelfSupervised:
    """A self-supervised method: two random views of each image (augment.ssl_view, on the
    device), both through backbone + projector, and a loss of the pair of projections. Labels
    are never read while training. Evaluated by the weighted kNN classifier on backbone
    features (`ssl.knn`; its bank is the train split with its labels), as solo-learn and
    lightly monitor their runs; the best checkpoint is the one with the best kNN accuracy."""

    metric = "knn_accuracy"
    metrics = ("knn_accuracy",)

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int,
                 pair_loss: Callable[[jax.Array, jax.Array, ml_collections.ConfigDict], jax.Array]):
        self.config, self.num_classes, self.pair_loss = config, num_classes, pair_loss
        self.model = models.create_self_supervised(config.model, tuple(config.ssl.projector_dims),
                                                   **model_kwargs(config))
        self._features = make_features_fn(self.model, config)
        self._bank: tuple[jax.Array, np.ndarray] | None = None  # (a weight of the evaluated state, its bank)

    def loss(self, freeze_backbone: bool, steps_per_epoch: int) -> LossFn:
        del steps_per_epoch  # no epoch-dependent augmentation
        model, config = self.model, self.config
        if freeze_backbone:
            raise ValueError("a self-supervised run trains its backbone: do not freeze the `backbone` group.")

        def loss_fn(params, batch_stats, batch, key, run_key, step):
            del run_key, step
            images = augment.resize(batch["image"], config.data.image_size)  # batch["label"] is never read
            k1, k2 = jax.random.split(key)
            views = [augment.ssl_view(k, images, config.ssl, config.augment.normalization) for k in (k1, k2)]
            # Both views in one batch, as SimCLR does: BatchNorm sees 2n images per step.
            z, updates = model.apply({"params": params, "batch_stats": batch_stats}, jnp.concatenate(views),
                                     train=True, mutable=["batch_stats"])
            z1, z2 = jnp.split(z, 2)
            loss = self.pair_loss(z1, z2, config.ssl)
            n = z1.shape[0]
            sums = {"loss_sum": loss * n, "correct": jnp.sum(ssl.view_matching(z1, z2)),
                    "count": jnp.asarray(n, jnp.float32)}
            return loss, (updates.get("batch_stats", {}), sums)

        return loss_fn

    def evaluate(self, evaluator: Evaluator, state: steps_lib.TrainState, split: ArraySplit) -> dict[str, float]:
        # The bank is computed once per set of weights (the eval split and each extra split
        # share it). Arrays are immutable, so the same first weight object means the same
        # weights; the step would not do: early stopping restores other weights at a step.
        weight = jax.tree_util.tree_leaves(steps_lib.eval_variables(state)["params"])[0]
        if self._bank is None or self._bank[0] is not weight:
            self._bank = (weight, evaluator.outputs(self._features, state, evaluator.train))
        queries = evaluator.outputs(self._features, state, split)
        predicted = ssl.knn_predict(self._bank[1], evaluator.train.labels, queries, self.num_classes,
                                    self.config.ssl.knn_k, self.config.ssl.knn_temperature)
        return {"knn_accuracy": float(np.mean(predicted == split.labels))}


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
    """The network's constructor arguments, the one place a run's config becomes them: the
    recipe's `model_kwargs`, the PEFT adapters, and the compute dtype of `precision`."""
    return {**config.model_kwargs.to_dict(), "lora": peft.lora_of(config),
            "dtype": precision.compute_dtype(config.precision)[0]}


def make_features_fn(model: nn.Module, config: ml_collections.ConfigDict) -> Callable[[dict, jax.Array], jax.Array]:
    """(variables, uint8 images) -> backbone features, with the run's input pipeline."""

    def features(variables: dict, images: jax.Array) -> jax.Array:
        x = augment.model_input(images, config.data.image_size, config.augment.normalization)
        return model.apply(variables, x, method="features")

    return features


def _simclr(z1: jax.Array, z2: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    return ssl.nt_xent(z1, z2, cfg.temperature).mean()


def _vicreg(z1: jax.Array, z2: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    return ssl.vicreg(z1, z2, *cfg.vicreg_weights)


_OBJECTIVES: dict[str, Callable[[ml_collections.ConfigDict, int], Any]] = {
    "classification": Classification,
    "simclr": lambda config, num_classes: SelfSupervised(config, num_classes, _simclr),
    "vicreg": lambda config, num_classes: SelfSupervised(config, num_classes, _vicreg),
}
NAMES = tuple(_OBJECTIVES)


Objective = Union[Classification, SelfSupervised]


def create(config: ml_collections.ConfigDict, num_classes: int) -> Objective:
    """The objective `config.objective` names (validated against NAMES by config.validate)."""
    return _OBJECTIVES[config.objective](config, num_classes)
