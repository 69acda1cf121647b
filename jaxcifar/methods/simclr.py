"""SimCLR (Chen et al. 2020): two views of each image pulled together and pushed from every
other view of the global batch by the NT-Xent loss (`ssl.nt_xent`, temperature
`ssl.temperature`)."""

from __future__ import annotations

import jax

from jaxcifar import ssl
from jaxcifar.methods.two_view import TwoViewMethod


class SimCLR(TwoViewMethod):

    def pair_loss(self, z1: jax.Array, z2: jax.Array) -> jax.Array:
        return ssl.nt_xent(z1, z2, self.config.ssl.temperature).mean()
