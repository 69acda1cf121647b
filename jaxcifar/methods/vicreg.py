"""VICReg (Bardes et al. 2022): two views of each image pulled together, with variance and
covariance terms against collapse instead of negatives (`ssl.vicreg`, weights
`ssl.vicreg_weights`)."""

from __future__ import annotations

import jax

from jaxcifar import ssl
from jaxcifar.methods.two_view import TwoViewMethod


class VICReg(TwoViewMethod):

    def pair_loss(self, z1: jax.Array, z2: jax.Array) -> jax.Array:
        return ssl.vicreg(z1, z2, *self.config.ssl.vicreg_weights)
