"""What the server serves: one `uint8 (b, S, S, 3) -> float32 logits (b, k)` function and
its description. Logits come from `Run.logits` (training's evaluation's computation, as evaluate,
predict and export use) or from an artefact written by `jaxcifar.export`, never from a
second implementation, so the server answers exactly what the offline tools answer."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxcifar import export, runs


@dataclasses.dataclass(frozen=True)
class ServedModel:
    name: str
    logits: Callable[[np.ndarray], np.ndarray]  # uint8 (b, S, S, 3) -> float32 (b, k), any b >= 1
    class_names: tuple[str, ...]
    image_size: int  # S: the run's data.image_size (32 for the CIFAR recipes)
    step: int
    platform: str  # "jax_orbax" for a checkpoint, else its export format's (export.FORMATS)
    device: str  # where the logits are computed: JAX's backend, or "cpu" for LiteRT
    tta: bool
    accuracy: float | None  # summary.json's test_accuracy, if the run wrote one

    @property
    def version(self) -> str:
        return str(self.step)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)


def from_workdir(name: str, workdir: str | pathlib.Path, which: str | int = "best",
                 tta: bool | None = None) -> ServedModel:
    """A checkpoint of a training run, served through `Run.logits` (default TTA: the run's own,
    as `jaxcifar.predict` does)."""
    run = runs.load_run(workdir, which)
    tta = run.resolve_tta(tta)
    return ServedModel(name, lambda images: np.asarray(run.logits(images, tta=tta)), run.class_names,
                       run.image_size, run.step, "jax_orbax", jax.default_backend(), tta,
                       summary_accuracy(run.workdir))


def from_export(name: str, directory: str | pathlib.Path) -> ServedModel:
    """An artefact written by `python -m jaxcifar.export` (its model.stablehlo) or by
    `python -m jaxcifar.quantize` (a LiteRT model.tflite), with its serving.json."""
    directory = pathlib.Path(directory)
    call = export.load_exported(directory)
    meta_path = directory / export.SERVING_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: the class names come from it; re-run jaxcifar.export.")
    meta = json.loads(meta_path.read_text())
    fmt = export.artefact_format(export.artefact_file(directory))
    return ServedModel(name, lambda images: np.asarray(call(images)), tuple(meta["class_names"]),
                       int(meta["input"]["shape"][1]), int(meta["checkpoint_step"]), fmt.platform, fmt.device(),
                       bool(meta["tta"]), summary_accuracy(pathlib.Path(meta["workdir"])))


def summary_accuracy(workdir: pathlib.Path) -> float | None:
    path = workdir / "summary.json"
    return json.loads(path.read_text()).get("test_accuracy") if path.is_file() else None


def softmax(logits: np.ndarray) -> np.ndarray:
    """In NumPy, because jax.nn.softmax would compile once per batch size inside requests."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def metadata(model: ServedModel) -> dict[str, Any]:
    """The Open Inference Protocol's model metadata, with class names and provenance added."""
    k = len(model.class_names)
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": model.platform,
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *model.image_shape]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]}],
        "parameters": {"class_names": list(model.class_names), "step": model.step, "tta": model.tta,
                       "accuracy": model.accuracy, "device": model.device,
                       "layout": f"NHWC RGB, 0..255; resize other sizes to {model.image_size}x{model.image_size} "
                                 "(or upload files to /v1/predict)"},
    }
