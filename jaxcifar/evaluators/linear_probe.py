"""The linear probe: a softmax regression (`ssl.linear_probe`) fitted on the frozen backbone
features of the run's labelled train split, its accuracy on the split evaluated."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jaxcifar import ssl

if TYPE_CHECKING:
    from jaxcifar.data import ArraySplit
    from jaxcifar.evaluators import Outputs


def evaluate(outputs: Outputs, split: ArraySplit) -> dict[str, float]:
    predictions = ssl.linear_probe(outputs.features(outputs.bank), outputs.bank.labels, outputs.features(split),
                                   outputs.num_classes)
    return {"linear_probe_accuracy": float(np.mean(predictions == split.labels))}
