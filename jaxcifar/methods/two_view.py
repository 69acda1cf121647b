"""The base of two-view self-supervised methods (SimCLR, VICReg): two random views of each
image (augment.ssl_view, on the device), both through backbone + projector, and a loss of
the pair of projections. Labels are never read while training. Evaluated by the weighted
kNN classifier on backbone features (the `knn` evaluator; its bank is the train split with its
labels), as solo-learn and lightly monitor their runs; the best checkpoint is the one with
the best kNN accuracy. A subclass gives the loss of the pair (`pair_loss`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxcifar import augment, models, ssl
from jaxcifar import steps as steps_lib
from jaxcifar.methods.base import Method, StageContext, model_kwargs


class TwoViewMethod(Method):

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
        super().__init__(config, num_classes)
        self.model = models.create_self_supervised(config.model, tuple(config.ssl.projector_dims),
                                                   **model_kwargs(config))

    def pair_loss(self, z1: jax.Array, z2: jax.Array) -> jax.Array:
        """The scalar loss of the projections of the two views of a batch."""
        raise NotImplementedError

    def loss(self, stage: StageContext) -> steps_lib.LossFn:
        model, config = self.model, self.config
        if stage.frozen_backbone:
            raise ValueError("a self-supervised run trains its backbone: do not freeze the `backbone` group.")

        def loss_fn(params, state, batch, key):
            images = augment.resize(batch["image"], config.data.image_size)  # batch["label"] is never read
            k1, k2 = jax.random.split(key)
            views = [augment.ssl_view(k, images, config.ssl, config.augment.normalization) for k in (k1, k2)]
            # Both views in one batch, as SimCLR does: BatchNorm sees 2n images per step.
            z, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, jnp.concatenate(views),
                                     train=True, mutable=["batch_stats"])
            z1, z2 = jnp.split(z, 2)
            loss = self.pair_loss(z1, z2)
            n = z1.shape[0]
            sums = {"loss_sum": loss * n, "correct": jnp.sum(ssl.view_matching(z1, z2)),
                    "count": jnp.asarray(n, jnp.float32)}
            return loss, (updates.get("batch_stats", {}), state.method_state, sums)

        return loss_fn

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The loss, and as `accuracy` how often a view's nearest other view is its pair."""
        return steps_lib.loss_and_accuracy(sums)
