"""Classify image files with a trained run: `python -m jaxcifar.predict --workdir W a.png b.jpg`.

Preprocessing is the image-file rule of jaxcifar/image_files.py, the one a run trained on a
folder of images used: EXIF orientation applied, RGB (transparency composited on white),
resized to the run's image size (`data.image_size`, 32x32 for the CIFAR recipes) with
Pillow's bilinear filter, squeezed rather than cropped.

Each file is handled on its own: one that is missing or not a readable image gets an
error line (an "error" field with --json) and the others are still classified. The exit
status is 1 if any file failed, 2 if the run itself could not be opened.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np

from jaxcifar.image_files import READ_ERRORS, describe_error, read_image
from jaxcifar.runs import Run


def top_k(probabilities: np.ndarray, class_names: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    """The k most probable classes of one image, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"class": class_names[i], "label": int(i), "probability": float(probabilities[i])} for i in order]


def predict_files(run: Run, paths: list[str], k: int = 3, tta: bool | None = None) -> list[dict[str, Any]]:
    """One result per path, in order: {'file', 'predictions'} or {'file', 'error'}.
    Readable images are classified together in one batch."""
    images, results = {}, []
    for path in paths:
        try:
            images[path] = read_image(path, run.image_size)
            results.append({"file": path})
        except READ_ERRORS as e:
            results.append({"file": path, "error": describe_error(e)})
    if images:
        logits = run.logits(np.stack(list(images.values())), tta=run.resolve_tta(tta))
        probabilities = dict(zip(images, np.asarray(jax.nn.softmax(logits, axis=-1))))
        for result in results:
            if "error" not in result:
                result["predictions"] = top_k(probabilities[result["file"]], run.class_names, k)
    return results


def format_text(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        if "error" in result:
            lines.append(f"{result['file']}: error: {result['error']}")
            continue
        lines.append(f"{result['file']}:")
        lines += [f"  {p['class']:<12} {p['probability']:.4f}" for p in result["predictions"]]
    return "\n".join(lines)


if __name__ == "__main__":  # the command line lives in jaxcifar/cli/predict.py
    from jaxcifar.cli.predict import main

    sys.exit(main())
