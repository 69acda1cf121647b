"""Classify image files with a trained run: `python -m jaxcifar.predict --workdir W a.png b.jpg`.

Preprocessing (the model only ever saw 32x32 RGB CIFAR-10 images):
  1. the EXIF orientation is applied (phone photos are often stored sideways);
  2. the image becomes RGB: transparency (RGBA, LA, palette with a transparent colour) is
     composited on a white background, greyscale and palette images are converted;
  3. it is resized to 32x32 with Pillow's bilinear filter (which averages over the whole
     footprint when shrinking, so large photos are not aliased). The aspect ratio is not
     kept: a non-square image is squeezed, not cropped, so nothing is cut out of view.

Each file is handled on its own: one that is missing or not a readable image gets an
error line (an "error" field with --json) and the others are still classified. The exit
status is 1 if any file failed, 2 if the run itself could not be opened.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageOps

from jaxcifar.runs import Run, add_run_arguments, load_run

IMAGE_SIZE = (32, 32)
BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, with transparent pixels composited on white (plain
    `convert('RGB')` would drop alpha and expose whatever colour hides under it, often black)."""
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image) -> np.ndarray:
    """A Pillow image -> uint8 (32, 32, 3) model input (see the module docstring)."""
    image = to_rgb(ImageOps.exif_transpose(image))
    return np.asarray(image.resize(IMAGE_SIZE, Image.Resampling.BILINEAR), np.uint8)


def load_image(path: str | pathlib.Path) -> np.ndarray:
    with Image.open(path) as image:
        return preprocess(image)


def describe_error(error: Exception) -> str:
    """A one-line reason a file could not be read, without a traceback."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image Pillow can read (unknown format or corrupt file)"
    return f"could not read image: {error}"


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
            images[path] = load_image(path)
            results.append({"file": path})
        except (OSError, ValueError, Image.DecompressionBombError) as e:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcifar.predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Top-k classes of image files (any size, format and colour mode), by a trained run.",
        epilog="Preprocessing: each image is converted to RGB (transparency composited on white,\n"
               "greyscale/palette converted), EXIF-rotated, and resized to 32x32 with Pillow's bilinear\n"
               "filter without keeping the aspect ratio.\n"
               "Exit status: 0 all files classified, 1 some file failed, 2 the run could not be opened.")
    add_run_arguments(parser)
    parser.add_argument("--top_k", type=int, default=3, help="classes to show per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, anything Pillow reads)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top_k must be at least 1")
    try:
        run = load_run(args.workdir, args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = predict_files(run, args.images, args.top_k, args.tta)
    if args.json:
        print(json.dumps({"workdir": str(run.workdir), "checkpoint_step": run.step,
                          "tta": run.resolve_tta(args.tta), "results": results}, indent=2))
    else:
        print(format_text(results))
    return int(any("error" in r for r in results))


if __name__ == "__main__":
    sys.exit(main())
