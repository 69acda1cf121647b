"""How many training images int8 calibration needs (issue 35): LiteRT int8, and with --qwix
Qwix int8, calibrated on each of --sizes images, against the run's float32 self.

For each size N the run's serving function is converted to full-integer LiteRT int8,
calibrated on the first N images of its training split as `python -m jaxcifar.quantize
--calibration_images N` calibrates it, and the conversion's seconds are recorded. Every
model is evaluated on the selection split, which alone names the knee: the run's validation
split when it held one out (`data.validation_fraction`), else the last --selection_images
images of its training split, which no calibration set reaches (the run trained on them, so
accuracies there run higher than on unseen images; what counts is how they move with N).
The run's `test` split is evaluated beside, for the record: it does not steer the choice.

The knee: the smallest N whose selection accuracy is within --tolerance of the largest N's.
`quantize.CALIBRATION_IMAGES`, the default of `--calibration_images`, is taken from it.

    python experiments/calibration_size.py --workdir runs/fast --data_dir ../shared/tensorflow_datasets

Writes experiments/results/calibration_size.json (command, machine, load, the accuracy and
agreement with float32 of every model on every split, per size, and the knee).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import time

import numpy as np
from common import write_result

from jaxcifar import data as data_lib
from jaxcifar import export, quantize, runs


def tail(split: data_lib.ArraySplit, n: int) -> data_lib.ArraySplit:
    """The last `n` examples of `split`: calibration takes the first ones."""
    return data_lib.ArraySplit(split.images[-n:], split.labels[-n:])


def calibrated(run: runs.Run, label: str, images: np.ndarray, out: pathlib.Path, tta: bool) -> quantize.Model:
    """The int8 model `label` ('litert_int8' or Qwix's 'int8') of `run`, calibrated on `images`."""
    if label == "int8":
        return quantize.run_evaluator(quantize.quantize_run(run, images), tta)
    with quantize.output_to(out / quantize.CONVERTER_LOG):
        path = quantize.export_litert(run, out / f"litert_int8_{len(images)}", tta, images)
    return quantize.evaluator(export.load_exported(path), run)


def knee(accuracies: dict[int, float], tolerance: float) -> int:
    """The smallest calibration size whose accuracy is within `tolerance` of the largest size's."""
    enough = accuracies[max(accuracies)] - tolerance
    return min(n for n, accuracy in accuracies.items() if accuracy >= enough)


def measure(run: runs.Run, train: data_lib.ArraySplit, splits: dict[str, data_lib.ArraySplit], sizes: list[int],
            labels: tuple[str, ...], out: pathlib.Path, tta: bool, tolerance: float) -> dict:
    """Per size, quantize's report rows (accuracy, agreement with float32) of each int8
    model in `labels` on each split, and the seconds making it took (calibration, and for
    LiteRT the conversion around it); and per model the knee, on the first split of
    `splits` (the selection split)."""
    out.mkdir(parents=True, exist_ok=True)
    progress = quantize.Progress()
    reference = progress.logits("float32", quantize.run_evaluator(run, tta), splits)
    result = {"selection_split": next(iter(splits)), "examples": {name: len(s) for name, s in splits.items()},
              "tolerance": tolerance, "sizes": {}}
    for n in sizes:
        seconds, logits = {}, {name: {"float32": values} for name, values in reference.items()}
        for label in labels:
            progress("%s: calibrating on %d images", quantize.ARTEFACTS[label], n)
            started = time.perf_counter()
            model = calibrated(run, label, train.images[:n], out, tta)
            seconds[label] = time.perf_counter() - started
            for name, values in progress.logits(label, model, splits).items():
                logits[name][label] = values
        result["sizes"][n] = {"seconds": seconds, **{name: quantize.agreement(logits[name], split.labels)
                                                     for name, split in splits.items()}}
    selection = result["selection_split"]
    result["knee"] = {label: knee({n: row[selection][f"{label}_accuracy"] for n, row in result["sizes"].items()},
                                  tolerance) for label in labels}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runs.add_run_arguments(parser)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out_dir", default="runs/calibration_size",
                        help="where the converted models and the converter's log are written")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 250, 500, 1000],
                        help="calibration sizes, in training images")
    parser.add_argument("--selection_images", type=int, default=5000,
                        help="the selection split's size when the run held out no validation split")
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="how far below the largest size's accuracy the knee may be (0.005: half a point)")
    parser.add_argument("--qwix", action="store_true",
                        help="also Qwix int8: quick to calibrate, but many times slower than float32 to evaluate on "
                             "a CPU (XLA:CPU has no fast int8 convolution)")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    if sizes[0] < 1:
        parser.error(f"--sizes must be at least 1 image each, not {sizes[0]}.")
    # force: absl (imported by TensorFlow and Orbax) has given the root logger its own format.
    logging.basicConfig(format="%(message)s", force=True)
    quantize.log.setLevel(logging.INFO)  # quantize's progress: its lines and bars
    started = time.time()
    run = runs.load_run(args.workdir, args.checkpoint)
    run.require_classifier()
    data = data_lib.load_data(run.config, args.data_dir)
    if data.validation is not None:
        splits = {data_lib.validation_split_name(run.config.data): data.validation}
    elif len(data.train) - args.selection_images >= sizes[-1]:
        splits = {f"the last {args.selection_images} training images": tail(data.train, args.selection_images)}
    else:
        parser.error(f"{len(data.train)} training images cannot hold {sizes[-1]} for calibration and "
                     f"--selection_images={args.selection_images} apart from them.")
    if data.eval is not None:
        splits[run.config.data.eval_split] = data.eval
    labels = ("litert_int8", "int8") if args.qwix else ("litert_int8",)
    result = measure(run, data.train, splits, sizes, labels, pathlib.Path(args.out_dir), run.resolve_tta(args.tta),
                     args.tolerance)
    for label, n in result["knee"].items():
        print(f"{quantize.ARTEFACTS[label]}: the knee is {n} calibration images")
    write_result("calibration_size", {"workdir": args.workdir, "checkpoint_step": run.step,
                                      "model": run.config.model, "tta": run.resolve_tta(args.tta), **result,
                                      "wall_seconds": time.time() - started})


if __name__ == "__main__":
    main()
