"""Many-crop self-supervision (EMP-SSL, Tong et al. 2023): each image is seen as `crops`
small random crops in one step; each crop's projection is pulled toward the mean projection
of its image's crops, and a total-coding-rate term keeps the projections of every crop
position spread over the batch (no collapse, no negatives, no teacher).

Why this loss and not a teacher-based multi-crop loss (SwAV, DINO): it needs no momentum
network, no queue and no centring, so it has no schedule to tune on a CPU budget, and
EMP-SSL reports that it learns most of its features in one epoch (ResNet-18, 20 crops:
about 84% linear after one epoch against about 57% for two-view SimCLR after the same
passes), which is the regime a two-core machine can afford.

Why small crops at their native resolution: a 16 x 16 crop is taken from the 32 x 32 image
without upsampling, so the network sees objects at the scale it sees at evaluation (the
whole image, through the same fully convolutional backbone and global pooling) while a
step costs about half of a 32 x 32 one on XLA:CPU.

The loss, per step, on L2-normalised projections z[c, i] (crop c of image i, c < crops):
    invariance  = - mean over c, i of cos(z[c, i], mean_c z[c, i])
    coding rate = mean over c of 1/2 logdet(I + d / (n eps) Z_c^T Z_c)    (Z_c: n x d)
    loss        = invariance_weight * invariance - coding rate
with EMP-SSL's weights (200, eps 0.2). Labels are never read; evaluation is the weighted
kNN monitor of every self-supervised method (two_view.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcifar import augment, ssl
from jaxcifar import steps as steps_lib
from jaxcifar.methods.base import StageContext
from jaxcifar.methods.two_view import TwoViewMethod


def normalize(z: jax.Array) -> jax.Array:
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def invariance(z: jax.Array) -> jax.Array:
    """- mean cosine similarity of each crop's projection to its image's mean projection;
    `z` is (crops, n, d), normalised."""
    return -jnp.mean(jnp.sum(z * normalize(z.mean(axis=0))[None], axis=-1))


def coding_rate(z: jax.Array, eps: float) -> jax.Array:
    """Mean over crop positions of the total coding rate 1/2 logdet(I + d/(n eps) Z^T Z) of
    the batch's (n, d) projections Z; larger = more spread. `z` is (crops, n, d)."""
    _, n, d = z.shape
    gram = jnp.einsum("cnd,cne->cde", z, z) * (d / (n * eps)) + jnp.eye(d)
    return jnp.mean(jax.vmap(lambda m: jnp.linalg.slogdet(m)[1])(gram)) / 2


class MultiCrop(TwoViewMethod):

    def loss(self, stage: StageContext) -> steps_lib.LossFn:
        model, config, own = self.model, self.config, self.config.method
        if stage.frozen_backbone:
            raise ValueError("a self-supervised run trains its backbone: do not freeze the `backbone` group.")

        def loss_fn(params, state, batch, key):
            images = augment.resize(batch["image"], config.data.image_size)  # batch["label"] is never read
            n = images.shape[0]
            crops = jnp.concatenate([augment.ssl_view(k, images, config.ssl, config.augment.normalization,
                                                      tuple(own.crop_scale), own.crop_size)
                                     for k in jax.random.split(key, own.crops)])
            # Every crop of the batch in one pass, so BatchNorm sees all of them, as EMP-SSL does.
            projections, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, crops,
                                               train=True, mutable=["batch_stats"])
            z = normalize(projections.astype(jnp.float32)).reshape(own.crops, n, -1)
            loss = own.invariance_weight * invariance(z) - coding_rate(z, own.coding_rate_eps)
            sums = {"loss_sum": loss * n, "correct": jnp.sum(ssl.view_matching(z[0], z[1])),
                    "count": jnp.asarray(n, jnp.float32)}
            return loss, (updates.get("batch_stats", {}), state.method_state, sums)

        return loss_fn
