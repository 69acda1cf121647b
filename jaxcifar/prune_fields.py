"""The `prune` block of a config: global magnitude pruning and structured channel pruning
(jaxcifar/prune.py), declared apart from prune.py so that a config is read without JAX
(schema.py says why)."""

from __future__ import annotations

from jaxcifar import schema

FIELDS = schema.block("prune", (
    schema.Field("sparsity", 0.0, "global magnitude pruning: the fraction of the trained kernels' weights set to "
                                  "zero and kept there (reached along a cubic ramp in each stage); 0 = off",
                 check=schema.in_range(0, 1, high_open=True)),
    schema.Field("ramp_fraction", 0.5, "pruning: the fraction of each stage over which sparsity rises to "
                                       "prune.sparsity", check=schema.in_range(0, 1, low_open=True)),
    schema.Field("every_steps", 10, "pruning: steps between recomputations of the mask", check=schema.positive_int),
    schema.Field("channels", 0.0, "structured pruning, with --init_from a trained ResNet: the fraction of its basic "
                                  "blocks' inner channels removed (smallest |BatchNorm scale| first); the model is "
                                  "built narrower", check=schema.in_range(0, 1, high_open=True)),
))
