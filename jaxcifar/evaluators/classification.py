"""Loss and accuracy of a classifier's logits (with the run's test-time augmentation, which
`Outputs.logits` applies), on the host in float64 so every process and tool agrees."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jaxcifar.data import ArraySplit
    from jaxcifar.evaluators import Outputs


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_softmax(logits.astype(np.float64))[np.arange(len(labels)), labels].mean())


def metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"loss": mean_cross_entropy(logits, labels), "accuracy": float(np.mean(logits.argmax(axis=-1) == labels))}


def evaluate(outputs: Outputs, split: ArraySplit) -> dict[str, float]:
    return metrics(outputs.logits(split), split.labels)
