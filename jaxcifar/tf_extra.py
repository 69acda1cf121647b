"""The optional `tf` extra: TensorFlow, TensorFlow Datasets and TensorBoard.

TFDS input, TensorBoard events, the SavedModel export and LiteRT conversion need it; training
from arrays or an image folder, checkpoints, evaluation and the StableHLO export do not
(`make test-latest` runs the quick tests without it). TensorFlow is imported here alone, when
first needed, with accelerators hidden: it must never take GPU/TPU memory from JAX. Where it
is absent, the feature that asked gets TensorFlowMissing, which the tools print as one
`error:` line (jaxcifar/cli/__init__.py).
"""

from __future__ import annotations

import os

TF_INSTALL = 'pip install -e ".[tf]"'


class TensorFlowMissing(ImportError):
    """A feature that needs the `tf` extra was asked for where it cannot be imported; the
    message names the feature, what to install, and what to do instead if anything."""

    def __init__(self, needed_for: str, error: ImportError, instead: str = ""):
        super().__init__(f"{needed_for} needs TensorFlow (the `tf` extra: TensorFlow, TFDS, TensorBoard), which "
                         f"cannot be imported here ({error}): {TF_INSTALL}{f', or {instead}' if instead else ''}")


def import_tf(needed_for: str, instead: str = ""):
    """TensorFlow with accelerators hidden, for `needed_for` (the feature, named in the error)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise TensorFlowMissing(needed_for, e, instead) from None
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
    return tf


def import_tfds(needed_for: str, instead: str = ""):
    """tensorflow_datasets, TensorFlow's accelerators hidden first."""
    import_tf(needed_for, instead)
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise TensorFlowMissing(needed_for, e, instead) from None
    return tfds
