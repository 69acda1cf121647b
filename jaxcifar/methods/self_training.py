"""A self-trained student (SimCLRv2's step 3, Noisy Student; with Iscen et al.'s weighting):
a classifier trained on the labelled budget and on every unlabelled image with the label
that propagation gave it (`python -m jaxcifar.propagate`), each weighted by that label's
certainty, under strong augmentation (RandAugment and Cutout, augment.strong_view).

Start it from the self-supervised backbone (`--init_from`) and keep an EMA of its weights
(`ema_decay`), which is what it is evaluated as and what it saves: the EMA is the teacher a
noisy student is compared against, without a second network. Optionally it ends with a
consistency phase (`consistency_weight` > 0): FixMatch's loss on the same unlabelled
images, the model's own prediction on a weak view (crop and flip) as the target of a strong
view, with distribution alignment (ReMixMatch: predictions rescaled so their running mean
matches the class prior of the labels) and a soft threshold (the target is weighted by its
confidence instead of cut at a fixed tau, as SoftMatch does), so no image is wasted early.

The unlabelled images reach it without labels (data.UnlabeledSplit); the propagated labels
come from a file made from the budget's labels alone, checked to be for this run's budget.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcifar import augment, targets
from jaxcifar import steps as steps_lib
from jaxcifar.methods.base import StageContext
from jaxcifar.methods.classification import Classification


class SelfTraining(Classification):

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
        super().__init__(config, num_classes)
        self.unlabeled_ratio = config.method.unlabeled_ratio

    def propagated_targets(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(propagated class, weight, class prior) of every image of the unlabelled stream.
        Read when a loss is built, not with the method: the tools that open a finished run
        (evaluate, export, serve) need no targets file."""
        if not self.config.method.targets:
            raise ValueError("objective=self_training trains on propagated labels: run python -m jaxcifar.propagate for "
                             "this label budget, then pass --config.method.targets=OUT/targets.npz.")
        soft, certainty = targets.read(self.config.method.targets, self.config)
        pseudo = soft.argmax(axis=1)
        # Iscen et al.: the propagated class, weighted by its certainty; scaled to mean 1 so
        # that `unlabeled_weight` means the same whatever the graph's overall confidence.
        weight = certainty / max(float(certainty.mean()), 1e-12)
        # Distribution alignment's prior: the class frequencies of the propagated labels, which
        # come from the budget (a budget of N per class gives the uniform prior).
        prior = np.bincount(pseudo, minlength=self.num_classes) / len(pseudo)
        return jnp.asarray(pseudo, jnp.int32), jnp.asarray(weight, jnp.float32), jnp.asarray(prior, jnp.float32)

    def init_state(self, state: steps_lib.TrainState) -> Any:
        """The running mean of the model's predictions on unlabelled images (alignment)."""
        del state
        return {"mean_prediction": jnp.full(self.num_classes, 1.0 / self.num_classes, jnp.float32)}

    def loss(self, stage: StageContext) -> steps_lib.LossFn:
        supervised, model, config, own = super().loss(stage), self.model, self.config, self.config.method
        pseudo, weight, prior = self.propagated_targets()

        def loss_fn(params, state, batch, key):
            loss, (batch_stats, method_state, sums) = supervised(params, state, batch, key)
            k_strong, k_weak = jax.random.split(jax.random.fold_in(key, 1))
            unlabeled = augment.resize(batch["unlabeled"], config.data.image_size)
            rows = batch["unlabeled_index"]

            def logits_of(images, train):
                return model.apply({"params": params, "batch_stats": batch_stats}, images, train=train,
                                   freeze_backbone=stage.frozen_backbone, mutable=["batch_stats"])

            strong_logits, updates = logits_of(augment.strong_view(k_strong, unlabeled, config.augment), True)
            batch_stats = updates.get("batch_stats", batch_stats)
            propagated = steps_lib.cross_entropy(strong_logits, pseudo[rows], 0.0) * weight[rows]
            total = loss + own.unlabeled_weight * propagated.mean()
            extra = {"propagated_sum": jnp.sum(propagated), "unlabeled_count": jnp.float32(len(rows))}
            if own.consistency_weight:
                weak = augment.augment(k_weak, unlabeled, config.augment)
                probabilities = jax.nn.softmax(jax.lax.stop_gradient(logits_of(weak, False)[0]))
                aligned, mean_prediction = align(probabilities, prior, method_state["mean_prediction"],
                                                 own.alignment_momentum)
                confidence = aligned.max(axis=-1)
                consistency = steps_lib.cross_entropy(strong_logits, aligned.argmax(axis=-1), 0.0) * confidence
                total = total + own.consistency_weight * consistency.mean()
                method_state = {"mean_prediction": mean_prediction}
                extra["consistency_sum"] = jnp.sum(consistency)
            return total, (batch_stats, method_state, {**sums, **extra})

        return loss_fn

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        own = {"propagated": sums["propagated_sum"] / sums["unlabeled_count"]}
        if "consistency_sum" in sums:
            own["consistency"] = sums["consistency_sum"] / sums["unlabeled_count"]
        return {**super().train_metrics(sums), **own}


def align(probabilities: jax.Array, prior: jax.Array, mean_prediction: jax.Array,
          momentum: float) -> tuple[jax.Array, jax.Array]:
    """ReMixMatch's distribution alignment: (predictions scaled by prior / running mean of
    predictions and renormalised, the updated running mean)."""
    mean_prediction = momentum * mean_prediction + (1 - momentum) * probabilities.mean(axis=0)
    aligned = probabilities * prior / jnp.maximum(mean_prediction, 1e-6)
    return aligned / aligned.sum(axis=-1, keepdims=True), mean_prediction
