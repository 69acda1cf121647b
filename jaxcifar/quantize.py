"""int8 post-training quantization of a trained run, measured against its float32 self.

    python -m jaxcifar.quantize --workdir runs/fast --out quantized/fast --data_dir ../shared/tensorflow_datasets

1. **BatchNorm folded into the convs** (`fold_batch_norm`): each BatchNorm's per-channel
   scale gamma / sqrt(var + eps) is multiplied into the kernel of the conv before it, and
   what is left of the BatchNorm is its shift, an add after the int8 conv. airbench's
   BatchNorm comes after a 2x2 max-pool; its scale is positive (it has no gamma), so it
   commutes with the max and folds exactly. The folded float32 network is checked against
   the run's on the calibration images before anything is quantized.
2. **Static int8 quantization with Qwix** (google/qwix, pinned): every conv and dense layer
   gets per-output-channel symmetric int8 weights (absmax) and a per-tensor symmetric int8
   input whose scale is calibrated on `--calibration_images` images of the run's training
   split (Qwix's static-range calibration: the mean of each image's absmax). The convs and
   the head then run as int8 x int8 -> int32 `stablehlo.convolution` / `dot_general`, and
   the result is rescaled to float32 for the shift, the activation and the pooling.
   Why Qwix: it is the JAX ecosystem's maintained quantization library, it fits the pinned
   JAX and Flax (AQT is in maintenance; jax2onnx for ONNX Runtime pins an older Orbax than
   ours), and it intercepts the model's own Flax modules, so the int8 network is the run's
   model and inference path (`runs.Run`), not a re-implementation.
3. **The fast int8 artefact: LiteRT** (`jaxcifar/litert.py` says why and how). XLA:CPU has
   no fast int8 convolution, so the Qwix artefact is smaller but slower than float32. The
   run's serving function is also converted by `tf.lite.TFLiteConverter` into a full-integer
   int8 `.tflite` model (int8 weights and activations, calibrated on the same images) and a
   float32 one, run by `ai-edge-litert` (XNNPACK kernels): the float32 LiteRT model
   separates the runtime's gain from int8's.
4. **Artefacts**, each a directory with its model and serving.json, all computing the same
   `uint8 images -> float32 logits` function (`export.load_exported` runs any of them,
   `python -m jaxcifar.serve --export` serves any of them): `DIR/float32/` and `DIR/int8/`
   (StableHLO, XLA), `DIR/litert_float32/` and `DIR/litert_int8/` (model.tflite).
5. **Proven before published**: everything is written to a new folder beside DIR, which
   replaces DIR at the end (nothing half-written is left at DIR). Each artefact is loaded
   and run (a batch of 1 and of its largest batch size) in a child process first
   (`export.probe`), since a model can abort the process that runs it; one that fails is
   left out, reported in report.json's `failed` and in an `error:` line (exit status 1),
   and the others are kept. The converter's own log lines go to `DIR/converter.log`.
6. **`DIR/report.json`**: on `test` and on `--extra_splits` (e.g. `test_jpeg`), each
   model's `{label}_accuracy` and `{label}_agreement` (the fraction of images whose class is
   the one the run's own float32 logits give); the artefacts' sizes; and their CPU latency
   (batch 1) and throughput (batch 256), timed in turns in this process
   (`--timing_repeats`), the LiteRT ones with 1 and 2 interpreter threads. On a CPU the Qwix
   int8 model is sized and timed at batch 1 only, unless `--full`: XLA:CPU has no fast int8
   convolution, and `fast`'s network with its TTA runs at about 2 images/s, so evaluating it
   on 1,000 images took 8 minutes. The CLI prints the report as a table and names the fastest
   model here (jaxcifar/quantize_report.py times the artefacts and prints the report).
7. **Progress**: a line per step with the seconds since the start (how long each LiteRT
   conversion took among them), and a bar per model and split with images/s and the time
   left; shown when the `jaxcifar` log is at INFO, as the command line sets it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import traverse_util

from jaxcifar import data as data_lib
from jaxcifar import progress as progress_lib
from jaxcifar import augment, evaluate, export, litert, peft
from jaxcifar.quantize_report import fastest, machine, time_artefacts, timed_label
from jaxcifar.runs import Run, load_run

log = logging.getLogger("jaxcifar")
REPORT = "report.json"
# Training images that calibrate the int8 activation ranges, Qwix's and LiteRT's. The LiteRT
# conversion's time grows with them (about 0.13 s an image for `fast`'s network here), its
# accuracy did not: experiments/calibration_size.py found the knee at 25 images on a `fast`
# run (25 to 1,000 all within 0.3 points). 100 leaves a margin for networks not measured.
CALIBRATION_IMAGES = 100
# Timed calls per artefact and batch size, after one untimed call: the report's medians say
# which model to deploy, not a benchmark's (experiments/litert_int8.py passes 20). At batch 256
# one call of `fast`'s network takes 0.6-4 s on 2 cores, so each repeat costs about 10 s.
TIMING_REPEATS = 3
CONVERTER_LOG = "converter.log"  # TensorFlow's converter writes its own lines, not this tool's
# The folded float32 network must give the run's logits to float rounding.
FOLD_TOLERANCE = 1e-3
SCHEME = ("BatchNorm folded; int8 weights per output channel (symmetric, absmax); int8 inputs of every conv and "
          "dense layer per tensor (symmetric, static scale calibrated on training images); int32 accumulation")
LITERT_SCHEME = ("full-integer int8 (TFLITE_BUILTINS_INT8): int8 weights per output channel, int8 activations per "
                 "tensor (ranges calibrated on training images), int32 accumulation; uint8 input, float32 logits")
ARTEFACTS = {"float32": "float32 StableHLO (XLA)", "int8": "Qwix int8 StableHLO (XLA)",
             "litert_float32": "LiteRT float32", "litert_int8": "LiteRT int8"}
LITERT_ARTEFACTS = ("litert_float32", "litert_int8")
THREADS = (1, 2)  # the LiteRT interpreter's thread counts timed side by side
INT8_RULE = qwix.QuantizationRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8, act_static_scale=True,
                                  weight_calibration_method="absmax", act_calibration_method="absmax")


def conv_of_batch_norm(bn_path: str, params: dict[str, np.ndarray]) -> str | None:
    """The conv whose output a BatchNorm normalises, by the models' naming (models/): `bnK`
    follows `convK` and `downsample_bn` follows `downsample_conv` in the same module."""
    parent, _, name = bn_path.rpartition("/")
    conv_name = name.replace("bn", "conv", 1) if name.startswith(("bn", "downsample_bn")) else None
    conv = f"{parent}/{conv_name}" if parent else conv_name
    return conv if conv_name and f"{conv}/kernel" in params and f"{conv}/bias" not in params else None


def batch_norm_epsilons(model: flax.linen.Module, variables: dict, images: jax.Array) -> dict[str, float]:
    """{'/'-joined BatchNorm path: its epsilon}: a module attribute, stored in no variable
    (1e-5 in the ResNets, 1e-12 in airbench), read by intercepting one forward pass."""
    epsilons = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, flax.linen.BatchNorm):
            epsilons["/".join(context.module.path)] = context.module.epsilon
        return next_fun(*args, **kwargs)

    with flax.linen.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    return epsilons


def fold_batch_norm(variables: dict, epsilons: dict[str, float]) -> dict:
    """{'params', 'batch_stats'} of the same network with every BatchNorm that follows a
    bias-free conv folded into it: the kernel scaled per output channel by gamma / sqrt(var
    + eps), and the BatchNorm left as a pure shift (mean 0, variance 1 - eps so that its
    division is by 1, gamma 1, beta the folded shift)."""
    params, stats = peft.flat(variables["params"]), peft.flat(variables["batch_stats"])
    for bn, eps in epsilons.items():
        conv = conv_of_batch_norm(bn, params)
        if conv is None or f"{bn}/bias" not in params:  # no conv to scale, or no bias to hold the shift
            continue
        mean, var = stats[f"{bn}/mean"], stats[f"{bn}/var"]
        gamma = params.get(f"{bn}/scale", np.ones_like(mean))
        scale = gamma / np.sqrt(var + eps)
        params[f"{conv}/kernel"] = params[f"{conv}/kernel"] * scale
        params[f"{bn}/bias"] = params[f"{bn}/bias"] - mean * scale
        if f"{bn}/scale" in params:
            params[f"{bn}/scale"] = np.ones_like(gamma)
        stats[f"{bn}/mean"], stats[f"{bn}/var"] = np.zeros_like(mean), np.full_like(var, 1.0 - eps)
    unflat = lambda tree: traverse_util.unflatten_dict(tree, sep="/")  # noqa: E731
    return {"params": unflat(params), "batch_stats": unflat(stats)}


def quantize_run(run: Run, calibration_images: np.ndarray, batch_size: int = 250) -> Run:
    """The int8 version of `run` (same class names, image size, normalisation and inference
    path): BatchNorm folded, then Qwix's static int8 quantization calibrated on
    `calibration_images` (uint8, the run's image size), fed in batches of `batch_size`."""
    run.require_classifier()
    images = jnp.asarray(augment.model_input(calibration_images, run.image_size, run.config.augment.normalization))
    folded = jax.device_put(fold_batch_norm(jax.tree_util.tree_map(np.asarray, run.variables),
                                            batch_norm_epsilons(run.model, run.variables, images[:1])))
    logits = jax.jit(lambda variables, x: run.model.apply(variables, x, train=False))
    drift = float(jnp.abs(logits(folded, images[:batch_size]) - logits(run.variables, images[:batch_size])).max())
    if drift > FOLD_TOLERANCE:
        raise ValueError(f"Folding BatchNorm into the convs changed the logits by {drift:.2g} (> {FOLD_TOLERANCE}): "
                         f"{run.config.model} has a BatchNorm that does not follow its conv directly.")
    # Calibration: the float network with Qwix's quantization-statistics collection, over every image.
    observed = qwix.quantize_model(run.model, qwix.QtProvider([INT8_RULE]))
    quant_stats = None
    for start in range(0, len(images), batch_size):
        variables = folded if quant_stats is None else {**folded, "quant_stats": quant_stats}
        _, updates = observed.apply(variables, images[start:start + batch_size], train=False, mutable=["quant_stats"])
        quant_stats = updates["quant_stats"]
    int8_model = qwix.quantize_model(run.model, qwix.PtqProvider([INT8_RULE]))
    abstract = jax.eval_shape(lambda x: int8_model.init(jax.random.key(0), x, train=False), images[:1])["params"]
    params = qwix.quantize_params(folded["params"], abstract, quant_stats)
    return dataclasses.replace(run, model=int8_model, variables=jax.device_put({**folded, "params": params}))


def export_litert(run: Run, out: pathlib.Path, tta: bool, calibration: np.ndarray | None) -> pathlib.Path:
    """`out/model.tflite` (float32, or full-integer int8 calibrated on `calibration`) and its
    serving.json; returns the model's path."""
    if calibration is not None:
        calibration = artefact_input(run, calibration)
    model = litert.convert(run.serving_fn(tta), export.image_shape(run), litert.BATCH_SIZES, calibration)
    out.mkdir(parents=True, exist_ok=True)
    (out / litert.MODEL_FILE).write_bytes(model)
    meta = export.serving_metadata(run, tta, ("cpu",), ["litert"])
    meta["litert"] = {"batch_sizes": list(litert.BATCH_SIZES), "num_threads": litert.NUM_THREADS,
                      "quantization": LITERT_SCHEME if calibration is not None else "none (float32)",
                      "calibration_images": 0 if calibration is None else len(calibration)}
    (out / export.SERVING_FILE).write_text(json.dumps(meta, indent=2))
    return out / litert.MODEL_FILE


def artefact_input(run: Run, images: np.ndarray) -> np.ndarray:
    """uint8 images at the run's image size, which the artefacts take (a dataset's may differ)."""
    return np.asarray(augment.resize(images, run.image_size)).round().astype(np.uint8)


def artefact_logits(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = 256,
                    seen: Callable[[int], object] = lambda images: None) -> np.ndarray:
    """An artefact's logits of `images`, in batches of `batch_size`; `seen` is told each
    batch's size once its logits are here (a progress bar's `update`)."""
    chunks = []
    for i in range(0, len(images), batch_size):
        chunks.append(np.asarray(call(images[i:i + batch_size])))
        seen(len(chunks[-1]))
    return np.concatenate(chunks)


def agreement(logits: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """`{label}_accuracy` of each artefact's logits, and `{label}_agreement`: the fraction of
    images whose class is the one the run's float32 logits (`logits["float32"]`) give."""
    reference = logits["float32"].argmax(-1)
    row = {}
    for label, values in logits.items():
        row[f"{label}_accuracy"] = float(np.mean(values.argmax(-1) == labels))
        if label != "float32":
            row[f"{label}_agreement"] = float(np.mean(values.argmax(-1) == reference))
    return row


@contextlib.contextmanager
def output_to(log_file: pathlib.Path) -> Iterator[None]:
    """This process's stdout and stderr, as file descriptors (so the converter's C++ log lines
    and its warnings too), appended to `log_file` inside the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with log_file.open("a") as log_stream:
            os.dup2(log_stream.fileno(), 1)
            os.dup2(log_stream.fileno(), 2)
            yield
            sys.stdout.flush()
            sys.stderr.flush()
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def staged(out: pathlib.Path) -> Iterator[pathlib.Path]:
    """A new folder beside `out` to write into, renamed to `out` (replacing it) when the
    block ends normally and deleted when it raises: nothing half-written lands at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield staging
        if out.exists():  # renamed away first, so that `out` is never a mix of two runs
            old = staging.with_suffix(".replaced")
            out.rename(old)
            shutil.rmtree(old)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def quantize_workdir(workdir: str | pathlib.Path, out: str | pathlib.Path, checkpoint: str | int = "best",
                     data_dir: str | None = None, calibration_images: int = CALIBRATION_IMAGES,
                     extra_splits: tuple[str, ...] = (), timing_repeats: int = TIMING_REPEATS,
                     train_split: data_lib.ArraySplit | None = None,
                     eval_splits: dict[str, data_lib.ArraySplit] | None = None, tta: bool | None = None,
                     full: bool = False) -> dict:
    """Library form of the CLI; returns the report. `train_split` and `eval_splits` (name ->
    split) replace reading the run's data, e.g. for synthetic runs in tests. `tta` (default:
    the run's own) applies to every model's evaluations, exports and timings alike. The Qwix
    int8 model, slow on a CPU (XLA has no fast int8 convolution), is evaluated and timed at
    batch 256 there only if `full` (`int8_in_full`). Every artefact is proven in a child process
    (`export.probe`) before it is published; one that fails is left out, and
    `report["failed"]` says why."""
    out = pathlib.Path(out)
    with staged(out) as staging:
        return _quantize_into(staging, workdir, checkpoint, data_dir, calibration_images, extra_splits,
                              timing_repeats, train_split, eval_splits, tta, full)


Model = Callable[[data_lib.ArraySplit, Callable[[int], object]], np.ndarray]  # (split, seen) -> logits


class Progress:
    """What quantize says as it goes, each line stamped with the seconds since it started:
    log lines, and a bar per model and split it evaluates. Shown when the `jaxcifar` log is
    at INFO."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def stamp(self) -> str:
        return f"[{time.perf_counter() - self.started:4.0f} s]"

    def __call__(self, message: str, *args) -> None:
        log.info(f"{self.stamp()} {message}", *args)

    def logits(self, label: str, model: Model, splits: dict[str, data_lib.ArraySplit]) -> dict[str, np.ndarray]:
        """{split name: logits} of `model` (ARTEFACTS[label]) on each split, under a bar each."""
        logits = {}
        for name, split in splits.items():
            with progress_lib.images_bar(f"{self.stamp()} evaluating {ARTEFACTS[label]} on {name}", len(split),
                                         show=log.isEnabledFor(logging.INFO)) as bar:
                logits[name] = model(split, bar.update)
        return logits


def int8_in_full(full: bool) -> bool:
    """Whether the Qwix int8 model is evaluated and timed at batch 256: not on a CPU, unless
    `full`, because XLA:CPU has no fast int8 convolution (see the module docstring)."""
    return full or jax.default_backend() != "cpu"


SLOW_INT8_NOTE = (f"{ARTEFACTS['int8']} is not evaluated here: XLA:CPU has no fast int8 convolution, so it runs "
                  "many times slower than float32 (minutes for 1,000 images); it is sized and timed at batch 1, "
                  "and --full evaluates it and times it at batch 256 too")


def _quantize_into(out: pathlib.Path, workdir, checkpoint, data_dir, calibration_images, extra_splits, timing_repeats,
                   train_split, eval_splits, tta, full) -> dict:
    progress = Progress()
    run = load_run(workdir, checkpoint)
    run.require_classifier()
    if train_split is None:
        progress("reading the training split for calibration")
        train_split = data_lib.load_data(run.config, data_dir).train
    if eval_splits is None:
        eval_splits = {name: evaluate.load_eval_split(run, name, data_dir)
                       for name in (run.config.data.eval_split, *extra_splits)}
    calibration = train_split.images[:calibration_images]
    tta = run.resolve_tta(tta)
    progress("Qwix int8: folding BatchNorm, calibrating on %d images", len(calibration))
    int8_run = quantize_run(run, calibration)
    report = {"workdir": str(run.workdir), "checkpoint_step": run.step, "model": run.config.model,
              "calibration_images": len(calibration), "scheme": SCHEME, "litert_scheme": LITERT_SCHEME,
              "artefacts": ARTEFACTS, "tta": tta}
    paths = {}
    for label, candidate in (("float32", run), ("int8", int8_run)):
        progress("exporting %s", ARTEFACTS[label])
        export.export_run(candidate, out / label, fmt="stablehlo", tta=tta, platforms=("cpu",))
        paths[label] = out / label / export.STABLEHLO_FILE
    for label, images in (("litert_float32", None), ("litert_int8", calibration)):
        progress("converting to %s%s (the converter's log: %s)", ARTEFACTS[label],
                 "" if images is None else f", calibrating on {len(images)} images in one call that shows no progress",
                 CONVERTER_LOG)
        converting = time.perf_counter()
        with output_to(out / CONVERTER_LOG):
            paths[label] = export_litert(run, out / label, tta, images)
        progress("converted to %s in %.0f s", ARTEFACTS[label], time.perf_counter() - converting)
    report["failed"] = {}
    progress("proving %s, each in a child process, side by side", ", ".join(ARTEFACTS[label] for label in paths))
    # Side by side: each child spends most of its time importing, so they overlap well.
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        failures = dict(zip(list(paths), pool.map(export.probe, paths.values())))
    for label, failure in failures.items():
        if failure:
            report["failed"][label] = failure
            shutil.rmtree(paths.pop(label).parent)  # not published
    report["bytes"] = {label: path.stat().st_size for label, path in paths.items()}
    # The run's float32 logits are evaluated whatever became of its artefact: they are the
    # reference every agreement is measured against.
    models = {"float32": run_evaluator(run, tta), **({"int8": run_evaluator(int8_run, tta)} if "int8" in paths else {}),
              **{label: evaluator(export.load_exported(paths[label]), run) for label in LITERT_ARTEFACTS
                 if label in paths}}
    if "int8" in models and not int8_in_full(full):
        progress(SLOW_INT8_NOTE)
        del models["int8"]
    logits = {name: {} for name in eval_splits}
    for label, model in models.items():
        for name, values in progress.logits(label, model, eval_splits).items():
            logits[name][label] = values
    for name, split in eval_splits.items():
        report[name] = {**agreement(logits[name], split.labels), "examples": len(split)}
    batches = timing_calls(paths, full)
    progress("timing %d models at batch 1 and 256, %d calls each, in turns", len(batches[1]), timing_repeats)
    images = artefact_input(run, next(iter(eval_splits.values())).images[:256])
    report["latency"] = time_artefacts(batches, images, timing_repeats)
    report["fastest"] = fastest(report["latency"])
    report["machine"] = machine()
    (out / REPORT).write_text(json.dumps(report, indent=2))
    progress("done")
    return report


def timing_calls(paths: dict[str, pathlib.Path], full: bool) -> dict[int, dict[str, Callable]]:
    """{batch size: {timed label: images -> logits}} of the artefacts at `paths` (label ->
    file or folder): every one at batch 1, and at 256 all but the Qwix int8 model unless
    `full` (int8_in_full); each LiteRT artefact at each of THREADS interpreter threads."""
    calls = {label: export.load_exported(paths[label]) for label in ("float32", "int8") if label in paths}
    calls.update({timed_label(label, threads): export.load_exported(paths[label], threads)
                  for label in LITERT_ARTEFACTS if label in paths for threads in THREADS})
    return {1: calls, 256: {label: call for label, call in calls.items() if label != "int8" or int8_in_full(full)}}


def evaluator(call: Callable[[np.ndarray], np.ndarray], run: Run) -> Model:
    """(split, seen) -> logits of an artefact's `call`, on the split's images at the run's
    image size; `seen` is told each batch's size (artefact_logits)."""
    return lambda split, seen: artefact_logits(call, artefact_input(run, split.images), seen=seen)


def run_evaluator(run: Run, tta: bool) -> Model:
    """(split, seen) -> logits of a run itself (float32, or Qwix int8: quantize_run), as
    `evaluate` computes them."""
    return lambda split, seen: evaluate.evaluate_run(run, split, tta, seen=seen).logits


if __name__ == "__main__":  # the command line lives in jaxcifar/cli/quantize.py
    from jaxcifar.cli.quantize import main

    sys.exit(main())
