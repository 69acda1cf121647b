"""The fast int8 artefact (issue 26): LiteRT int8 against the float32 StableHLO export and
LiteRT float32, and the static batch sizes and thread counts that `jaxcifar.litert` uses.

1. Models: `python -m jaxcifar.quantize` on each workdir given (simple_cnn is trained here
   when its workdir is absent: `--config simple_cnn --config.epochs=SIMPLE_CNN_EPOCHS`):
   accuracy and agreement with the run's float32 logits on `test` and `test_jpeg`, sizes,
   batch-1 latency and batch-256 throughput of every artefact, timed in turns.
2. Batch-size sweep (simple_cnn): the run's serving function converted to LiteRT (int8 and
   float32) at static batch sizes (1, B) for each B in --sweep_sizes; 256 images run through
   each as 256/B calls at B, with 1 and 2 interpreter threads, in turns with the float32
   StableHLO export at batch 256. This is what `litert.BATCH_SIZES` and `litert.NUM_THREADS`
   were chosen from.

3. Rounds (`--rounds`, 3 by default): each model of step 1 timed again at batch 1 and 256,
   every model in turn as in step 1, `--rounds` times over with the order rotated by one model
   each round, so that a change in the machine's load falls on each model in each position.
   Each round's figures, their medians and the load average before and after each round are
   recorded, and the speed-ups are ratios of medians. Run it with nothing else running on
   the machine: a ratio taken beside another job cannot be told apart from that job's noise.
   The Qwix int8 model is timed at batch 1 only (at batch 256 XLA:CPU takes a minute a round).

Writes experiments/results/litert_int8.json (command, machine, date, reports, rounds, tables).

    python experiments/litert_int8.py --data_dir ../shared/tensorflow_datasets [--workdir NAME=DIR ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import time

import numpy as np
from common import write_result

from jaxcifar import config as config_lib
from jaxcifar import data, export, litert, quantize, quantize_report, runs, train


def sweep_batch_sizes(run: runs.Run, out: pathlib.Path, calibration: np.ndarray, images: np.ndarray,
                      sizes: tuple[int, ...], repeats: int) -> dict:
    """images/s of 256 images through LiteRT models converted at (1, B), per B, dtype and thread count."""
    calls = {"float32 StableHLO (XLA)": export.load_exported(out / "float32")}
    for size in sizes:
        for label, images_for_calibration in (("litert_float32", None), ("litert_int8", calibration)):
            path = out / f"{label}_batch{size}.tflite"
            path.write_bytes(litert.convert(run.serving_fn(False), export.image_shape(run), tuple(sorted({1, size})),
                                            images_for_calibration))
            for threads in quantize.THREADS:
                calls[f"{label} batch {size}, {threads} thread{'s' if threads > 1 else ''}"] = export.load_exported(
                    path, threads)
    timed = quantize_report.time_artefacts({256: calls}, images, repeats)
    return {name: result["batch_256"]["images_per_second"] for name, result in timed.items()}


def rotated(calls: dict[str, object], by: int) -> dict[str, object]:
    """`calls` in the same cyclic order, starting `by` entries later."""
    names = list(calls)
    return {name: calls[name] for name in names[by % len(names):] + names[:by % len(names)]}


def timing_rounds(batches: dict[int, dict], images: np.ndarray, rounds: int, repeats: int) -> dict:
    """`rounds` timings of every model at each batch size (quantize_report.time_artefacts),
    the order rotated by one model each round: each round's figures and load averages, and
    per model and batch size the median images/s over the rounds."""
    taken = []
    for r in range(rounds):
        before = [round(x, 2) for x in os.getloadavg()]
        latency = quantize_report.time_artefacts({b: rotated(calls, r) for b, calls in batches.items()}, images,
                                                 repeats)
        taken.append({"order": list(rotated(batches[1], r)), "load_average_before": before,
                      "load_average_after": [round(x, 2) for x in os.getloadavg()], "latency": latency})
        print(f"round {r + 1}/{rounds}: load {before[0]} -> {taken[-1]['load_average_after'][0]}", flush=True)
    medians = {name: {batch: float(np.median([t["latency"][name][batch]["images_per_second"] for t in taken]))
                      for batch in taken[0]["latency"][name]} for name in taken[0]["latency"]}
    return {"rounds": taken, "median_images_per_second": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out_dir", default="runs/litert_int8")
    parser.add_argument("--simple_cnn_epochs", type=int, default=1)
    parser.add_argument("--workdir", action="append", default=[], metavar="NAME=DIR",
                        help="another trained run to measure (repeatable), e.g. transfer=runs/efficient_finetune/...")
    parser.add_argument("--calibration_images", type=int, default=1000)
    parser.add_argument("--timing_repeats", type=int, default=20)
    parser.add_argument("--sweep_sizes", type=int, nargs="*", default=[1, 4, 16, 64, 256])
    parser.add_argument("--rounds", type=int, default=3, help="timings of every model, the order rotated each round")
    args = parser.parse_args()
    # force: absl (imported by TensorFlow and Orbax) has given the root logger its own format.
    logging.basicConfig(format="%(message)s", force=True)
    quantize.log.setLevel(logging.INFO)  # quantize's progress
    out = pathlib.Path(args.out_dir)
    start, load_at_start = time.time(), [round(x, 2) for x in os.getloadavg()]

    workdirs = {"simple_cnn": out / "simple_cnn", **dict(w.split("=", 1) for w in args.workdir)}
    if not (workdirs["simple_cnn"] / "checkpoints").is_dir():
        simple_cnn = config_lib.load_recipe("simple_cnn")
        simple_cnn.epochs = args.simple_cnn_epochs
        train.fit(simple_cnn, workdirs["simple_cnn"], data_dir=args.data_dir)
    reports, tables = {}, {}
    for name, workdir in workdirs.items():
        reports[name] = quantize.quantize_workdir(workdir, out / f"{name}_quantized", data_dir=args.data_dir,
                                                  calibration_images=args.calibration_images,
                                                  timing_repeats=args.timing_repeats,
                                                  extra_splits=("test_jpeg",), full=True)
        tables[name] = quantize_report.tradeoff_table(reports[name])
        print(f"{name}\n{tables[name]}", flush=True)

    run = runs.load_run(workdirs["simple_cnn"])
    calibration = data.load_split(f"train[:{args.calibration_images}]", args.data_dir).images
    test = data.load_split("test", args.data_dir).images
    rounds = {}
    for name, report in reports.items():
        published = out / f"{name}_quantized"
        batches = quantize.timing_calls({label: published / label for label in report["bytes"]}, full=False)
        rounds[name] = timing_rounds(batches, quantize.artefact_input(runs.load_run(workdirs[name]), test[:256]),
                                     args.rounds, args.timing_repeats)
    sweep = sweep_batch_sizes(run, out / "simple_cnn_quantized", calibration, test, tuple(args.sweep_sizes),
                              args.timing_repeats)
    for name, images_per_second in sweep.items():
        print(f"{name}: {images_per_second:,.0f} img/s", flush=True)
    write_result("litert_int8", {"simple_cnn_epochs": args.simple_cnn_epochs, "workdirs": {k: str(v) for k, v in
                                                                                           workdirs.items()},
                                 "calibration_images": args.calibration_images, "timing_repeats": args.timing_repeats,
                                 "batch_sizes": list(litert.BATCH_SIZES), "num_threads": litert.NUM_THREADS,
                                 "models": reports, "tables": tables, "rounds": rounds,
                                 "load_average_at_start": load_at_start,
                                 "instruction_sets": quantize_report.instruction_sets(quantize_report.cpu_flags()),
                                 "batch_size_sweep_images_per_second": sweep, "wall_seconds": time.time() - start})


if __name__ == "__main__":
    main()
