"""Per-image soft labels made before a run for its unlabelled stream (a propagation's
`targets.npz`): one row per image of the stream, in its order, with the data settings they
were made for. Written by `python -m jaxcifar.propagate`, read by the `self_training` method;
its own module so that a method reads them without importing the tool that makes them.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

TARGETS = "targets.npz"
# The data settings that decide which images are labelled and the unlabelled stream's order.
BUDGET_FIELDS = ("dataset", "image_folder", "train_split", "classes", "examples_per_class", "label_seed",
                 "labels_csv", "validation_fraction")


def budget_settings(config) -> dict:
    return json.loads(json.dumps({field: config.data[field] for field in BUDGET_FIELDS}))


def write(path: pathlib.Path, soft_labels: np.ndarray, certainty: np.ndarray, config) -> None:
    """`soft_labels` (n, classes) and `certainty` (n,) of the unlabelled stream of the label
    budget `config` chooses."""
    np.savez(path, soft_labels=soft_labels, certainty=certainty, budget=json.dumps(budget_settings(config)))


def read(path: str | pathlib.Path, config) -> tuple[np.ndarray, np.ndarray]:
    """(soft labels, certainties) of `path`, after checking that they were made for the label
    budget `config` chooses (else their rows would be another stream's images)."""
    try:
        stored = np.load(pathlib.Path(path))
    except OSError as e:
        raise ValueError(f"Cannot read the propagated targets {str(path)!r}: {e}. Run python -m "
                         "jaxcifar.propagate first.") from None
    made_for, wanted = json.loads(str(stored["budget"])), budget_settings(config)
    if made_for != wanted:
        changed = ", ".join(f"data.{k}: {made_for.get(k)!r} there, {v!r} here" for k, v in wanted.items()
                            if made_for.get(k) != v)
        raise ValueError(f"{path} was propagated for another label budget ({changed}); propagate again with this "
                         "run's data settings.")
    return stored["soft_labels"], stored["certainty"]
