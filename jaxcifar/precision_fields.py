"""`precision`, the dtype a run's network computes in (jaxcifar/precision.py), declared
apart from precision.py so that a config is read without JAX (schema.py says why)."""

from __future__ import annotations

from jaxcifar import schema

FIELDS = (
    schema.Field("precision", "float32", "dtype of convolutions, matmuls and activations; parameters, optimizer "
                                         "state, BatchNorm statistics and the loss stay float32. auto = bfloat16 on "
                                         "GPU/TPU, float32 on CPU (see jaxcifar/precision.py)",
                 choices=("float32", "bfloat16", "auto")),
)
