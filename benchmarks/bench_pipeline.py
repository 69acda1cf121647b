"""The input pipeline alone: TFDS split in memory -> tf.data batches -> global jax.Arrays.

This is what train.py feeds the step (``batch_order.train_batches`` + ``parallel.to_global``),
timed without any training, so it shows whether input could ever be the bottleneck.
Loading the split from TFDS is setup, not timed; epochs follow one another endlessly.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

from harness import Spec, Target

DEFAULT_DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tensorflow_datasets")


def endless_batches(split, batch: int) -> Iterator[dict]:
    """Epoch after epoch of train batches, exactly as train.py iterates them."""
    from jaxcifar import batch_order

    for epoch in itertools.count():
        yield from batch_order.train_batches(split, batch, seed=0, epoch=epoch)


def build(spec: Spec) -> Target:
    import jax

    from jaxcifar import data, parallel

    data_dir = spec.options.get("data_dir") or data.resolve_data_dir(None) or DEFAULT_DATA_DIR
    split = data.load_split("train", data_dir)
    mesh = parallel.make_mesh()
    batches = endless_batches(split, spec.batch)

    def run(n: int) -> None:
        for _ in range(n):
            batch = parallel.to_global(next(batches), mesh)
        jax.block_until_ready(batch)

    return Target(run=run, images_per_step=spec.batch)
