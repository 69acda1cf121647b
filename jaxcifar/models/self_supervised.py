"""The network a self-supervised run trains: a registered model's backbone with a projector
MLP on top. The backbone's parameters sit under `backbone`, exactly where the classifier
of the same model keeps them, so `--init_from` an SSL workdir hands them to a classifier
unchanged (and the projector, which only the SSL loss needs, stays behind)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Projector(nn.Module):
    """Dense -> BatchNorm -> ReLU for each hidden width, then a plain Dense (SimCLR's and
    VICReg's projector/expander)."""

    dims: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        for i, width in enumerate(self.dims[:-1]):
            x = nn.Dense(width, use_bias=False, name=f"dense{i}")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, name=f"bn{i}")(x))
        return nn.Dense(self.dims[-1], name="out")(x)


class SelfSupervisedNet(nn.Module):
    backbone: nn.Module
    projector_dims: tuple[int, ...]

    def setup(self) -> None:
        self.projector = Projector(tuple(self.projector_dims))

    def __call__(self, x: jax.Array, *, train: bool, freeze_backbone: bool = False) -> jax.Array:
        del freeze_backbone  # an SSL run trains its backbone; accepted for the model contract
        features = self.backbone(x, use_running_average=not train)
        return self.projector(features, use_running_average=not train).astype(jnp.float32)
