"""The device check: one command for the few minutes a GPU is lent (issues 27 and 34).

On the GPU, one step after the other, each step in its own process with its own time guard
(a crash or a timeout ends that step, not the check, and each process's peak memory is its
own), every step reading the JPEG pack decoded once:
  1. install: `pip install -e ".[cuda]"` (`--install none` keeps the machine's own JAX);
  2. `fast_muon` at float32, then at bfloat16 (`config.precision`);
  3. one epoch of each self-supervised recipe (ssl_simclr, ssl_vicreg, ssl_multicrop), each
     at float32 and at bfloat16;
  4. the few-label path of experiments/few_labels.py, from the float32 ssl_multicrop epoch's
     backbone: the budget's labels propagated over its features (jaxcifar.propagate), then
     one epoch of each few-label recipe, each at float32 and at bfloat16: `ssl_finetune`
     (classification: a probe epoch, then a fine-tune epoch) and `ssl_student` (the
     self_training method, on the propagated labels);
  5. the loss curve of tests/test_precision.py's run at bfloat16 against float32 (same seed,
     same batches), checked against the bound that test holds the CPU to;
  6. the airbench94_muon anchor, the user's file run unchanged on the same pack (skipped,
     with a note, when no `--airbench_script` is given or the file is absent);
then writes experiments/results/device_check.json and stops.

Every training step records images/s (compilation excluded), its per-epoch train loss, its
wall time and its peak memory: the device's where the backend reports it (GPU, TPU), and
the process's host memory. A `fast_muon` step also records seconds to 94% with TTA as
airbench counts them (training seconds up to the first evaluation that reaches 94%, the
final one with flip+translate TTA; compilation excluded, experiments/fast_cpu.py) and its
final accuracies. The pack's images are lossy JPEG copies, so accuracies compare the systems
with each other, not with published figures; time to the anchor's final accuracy is
recorded too, for when neither reaches 94% on them.

    python experiments/device_check.py --pack ../shared/cifar10_jpeg_pack.npz \\
        --airbench_script third_party/airbench94_muon.py
    python experiments/device_check.py --dry-run --pack PACK   # CPU, tiny, no install (tests/test_device_check.py)

A dry run checks the logic in under a minute: its first step runs in its own process, as on
the device (the process, its guard and its record proven once), the others but the anchor in
the check's own process, where each fresh process would cost seconds of imports for a second
of work (their peak host memory is then the check's so far).

On an accelerator machine without a package registry, everything the check needs travels
inside the checkout, in a folder git ignores (the whole tree must stay within 64 MiB; the
pack is about 55 MB): the pack, the anchor's script, and a wheel of each pure-Python
requirement the machine lacks (here ml_collections and dm-pix, beside a JAX of its own and
no TensorFlow, which the check never imports). From the clone root, before copying:
    echo /.device/ >> .git/info/exclude && mkdir -p .device
    cp ../shared/cifar10_jpeg_pack.npz third_party/airbench94_muon.py .device/
    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .device/whl \\
        ml_collections==1.1.0 dm-pix==0.4.5
and on the machine, from the clone root, installing the wheels without a registry and
keeping its JAX:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 experiments/device_check.py --install none \\
        --pack .device/cifar10_jpeg_pack.npz --airbench_script .device/airbench94_muon.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
from common import write_result

from jaxcifar import xla_cpu

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
PRECISIONS = ("float32", "bfloat16")
SSL_RECIPES = ("ssl_simclr", "ssl_vicreg", "ssl_multicrop")
# One recipe per method a few-label run trains with (jaxcifar/methods): probe + fine-tune is
# `classification` with its backbone frozen first; the student is `self_training`.
FEW_LABEL_RECIPES = ("ssl_finetune", "ssl_student")
# The step (and workdir) whose backbone the few-label steps start from and propagate over:
# the many-crop pretraining, as in experiments/few_labels.py.
PRETRAINED = "ssl_multicrop_float32"
PROPAGATED = "propagated"  # the propagation's output folder, beside the steps' workdirs
# The few-label budget per class on the device. Not the experiment's 25: at the recipes' own
# batches (50 labelled + 350 unlabelled images a step; 100 for the fine-tune) an epoch of its
# 250 labels is 5 steps (2), too few to time; 2,500 labels make it 50 (25) of the same steps.
FEW_LABELS = 250
NUM_CLASSES = 10
DEVICE_SECONDS = 8 * 60  # the whole check on an H100, so that a second try fits in 15 minutes
# Wall-clock limit of each kind of step on the device, the sum of all of them (plan_seconds)
# within DEVICE_SECONDS (the pack's decoding, a few seconds, comes on top). Estimates for an
# H100 (a fresh process starting JAX and CUDA, compiling, then the work), to be corrected from
# the `step_wall_seconds` each run records: fast_muon's 8 epochs; one epoch of a recipe at
# the full pack or budget; the propagation's graph over 50,000 features; the curve's 2 x 32
# tiny epochs. The anchor's 40 s may not cover its own `torch.compile(mode="max-autotune")`.
# A dry run has none: on a busy CPU its tiny steps take longer than the GPU's real ones.
STEP_SECONDS = {"fast_muon": 60, "one_epoch": 25, "propagate": 20, "loss_curve": 20, "anchor": 40}
# The install's limit fits a `pip install -e .` whose requirements are already there, not one
# that downloads JAX: install that first and pass --install none.
INSTALL_SECONDS = 30
# The dry run's tiny size: images of each class per split and of each class labelled, the
# network's conv groups (one of airbench's three: its compile time, most of a tiny step's,
# grows with the depth; 42 -> 38 s for the whole dry run, measured), projector, the many-crop
# and student settings that scale a step, and the curve's epochs.
DRY_RUN = {"train_per_class": 8, "test_per_class": 4, "labels_per_class": 2, "widths": (16,),
           "projector_dims": (32, 16), "method": {"crops": 4, "unlabeled_ratio": 2}, "curve_epochs": 2}
SPLITS = "splits.npz"  # the decoded pack, in the check's folder
# No TensorBoard events: the steps' workdirs are temporary and the JSON holds what they measure;
# where TensorFlow is installed (a CI dry run), writing them would import it, seconds of a step.
TENSORBOARD = False


@dataclasses.dataclass(frozen=True)
class Step:
    name: str  # its key in the JSON, and its workdir's name
    kind: str  # what it runs (--step), which sets its time guard
    options: tuple[str, ...] = ()


def planned_steps(airbench_script: str | None) -> list[Step]:
    """Every step after the install, in order: the few-label steps read what the propagation
    and the PRETRAINED step wrote (and fail, recorded, if that failed)."""
    def at_each_precision(kind: str, recipes: tuple[str, ...]) -> list[Step]:
        return [Step(f"{recipe}_{precision}", kind, ("--recipe", recipe, "--precision", precision))
                for recipe in recipes for precision in PRECISIONS]

    steps = [*at_each_precision("fast_muon", ("fast_muon",)), *at_each_precision("one_epoch", SSL_RECIPES),
             Step(PROPAGATED, "propagate"), *at_each_precision("one_epoch", FEW_LABEL_RECIPES),
             Step("loss_curve", "loss_curve")]
    if airbench_script:
        steps.append(Step("airbench94_muon", "anchor", ("--airbench_script", airbench_script)))
    return steps


def plan_seconds(steps: list[Step], install: bool) -> int:
    """The most the check's steps may take on the device: the sum of their time guards."""
    return INSTALL_SECONDS * install + sum(STEP_SECONDS[step.kind] for step in steps)


def step_arguments(step: Step, root: str, dry_run: bool) -> list[str]:
    """The command-line arguments that run `step` alone (run_one reads them)."""
    return ["--root", root, *(["--dry-run"] if dry_run else []), "--step", step.kind, *step.options]


def run_step(name: str, arguments: list[str], seconds: float | None) -> dict:
    """Run one step in its own process; its record (the JSON it writes to --record), or why there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        record_path = pathlib.Path(tmp, "record.json")
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, __file__, *arguments, "--record", str(record_path)], cwd=REPO,
                                  capture_output=True, text=True, timeout=seconds)
        except subprocess.TimeoutExpired:
            return {"step": name, "step_wall_seconds": seconds, "error": f"timed out after {seconds} s"}
        outcome = {"step": name, "step_wall_seconds": round(time.perf_counter() - start, 1)}
        if done.returncode or not record_path.exists():
            return {**outcome, "error": f"exit code {done.returncode}", "stderr_tail": done.stderr[-2000:]}
        return {**outcome, **json.loads(record_path.read_text())}


def run_step_here(name: str, arguments: list[str]) -> dict:
    """Run one step in this process (a dry run's); its record, or the error that ended it."""
    start = time.perf_counter()
    try:
        record = run_one(build_parser().parse_args(arguments))
    except Exception:  # a failed step is recorded and the check goes on, as with a failed process
        return {"step": name, "step_wall_seconds": round(time.perf_counter() - start, 1),
                "error": "raised", "stderr_tail": traceback.format_exc()[-2000:]}
    return {"step": name, "step_wall_seconds": round(time.perf_counter() - start, 1), **record}


def install(seconds: float) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".[cuda]"], cwd=REPO,
                              capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"step": "install", "error": f"timed out after {seconds} s"}
    return {"step": "install", "returncode": done.returncode, "seconds": round(time.perf_counter() - start, 1),
            **({"stderr_tail": done.stderr[-2000:]} if done.returncode else {})}


def device_record() -> dict:
    """Where a step ran, and its peak memory: the device's peak bytes in use (GPU/TPU
    allocators report it; XLA:CPU does not) and the process's peak host memory."""
    import jax

    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    return {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
            "peak_device_bytes": stats.get("peak_bytes_in_use"),
            "peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def load_pack(path: str, dry_run: bool) -> dict:
    """{'train', 'test'} ArraySplits of the pack; in a dry run, the first few of each class (the
    pack is sorted by class, so its first images are all airplanes)."""
    from jaxcifar import data as data_lib

    splits = data_lib.load_jpeg_pack(path)
    if not dry_run:
        return splits
    return {name: data_lib.select_examples(split, examples_per_class=DRY_RUN[f"{name}_per_class"])
            for name, split in splits.items()}


def write_splits(splits: dict, root: pathlib.Path) -> None:
    """The decoded splits where every step reads them: decoding 60,000 JPEGs once, not in each step."""
    np.savez(root / SPLITS, **{f"{name}_{field}": getattr(split, field) for name, split in splits.items()
                               for field in ("images", "labels")})


def read_splits(root: pathlib.Path) -> dict:
    """The splits `write_splits` left in ROOT."""
    from jaxcifar import data as data_lib

    with np.load(root / SPLITS) as stored:
        return {name: data_lib.ArraySplit(stored[f"{name}_images"], stored[f"{name}_labels"])
                for name in ("train", "test")}


def run_data(config, splits: dict):
    """The run's Data from the pack's splits, as data.load_data assembles it from TFDS: the
    label budget's images labelled (all of them when it is 0), the rest unlabelled."""
    from jaxcifar import data as data_lib

    d = config.data
    labelled, rest = data_lib.split_label_budget(splits["train"], d.examples_per_class, d.label_seed)
    return data_lib.Data(labelled, splits["test"], NUM_CLASSES, unlabeled=data_lib.unlabeled_images(d, rest))


def shrink(config, data) -> None:
    """The dry run's tiny network and settings, with two steps an epoch (the first compiles,
    the second is timed) and one evaluation batch."""
    config.batch_size, config.eval_batch_size = len(data.train) // 2, len(data.eval)
    config.model_kwargs.widths, config.ssl.projector_dims = DRY_RUN["widths"], DRY_RUN["projector_dims"]
    for field, value in DRY_RUN["method"].items():  # those of the recipe's method
        if field in config.method:
            config.method[field] = value


def train_fast_muon(root: pathlib.Path, precision: str, dry_run: bool) -> dict:
    """Train `fast_muon` at `precision` on the pack; its time-to-accuracy record."""
    from fast_cpu import collect, recipe_config

    from jaxcifar import train

    config = recipe_config("fast_muon", seed=0, epochs=1 if dry_run else None)
    config.precision, config.tensorboard = precision, TENSORBOARD
    data = run_data(config, read_splits(root))
    if dry_run:
        shrink(config, data)
        config.group_epochs.whiten_bias = 1  # it trains in the first epochs only, as in fast_muon's first 3 of 8
    with tempfile.TemporaryDirectory() as workdir:
        train.fit(config, workdir, data=data)
        record = collect(pathlib.Path(workdir), 0, data)
    return {"recipe": "fast_muon", "precision": precision, "train_images": len(data.train),
            "test_images": len(data.eval), **record, **device_record()}


def one_epoch_config(recipe: str, precision: str, dry_run: bool):
    """`recipe` at `precision`, seed 0, one epoch of each of its stages; a few-label recipe
    on the budget of FEW_LABELS per class (label seed 0)."""
    from jaxcifar import config as config_lib

    config = config_lib.load_recipe(recipe)
    config.seed, config.precision, config.epochs, config.tensorboard = 0, precision, 1, TENSORBOARD
    config.stages = tuple({**dict(stage), "epochs": 1} for stage in config.stages)
    if recipe in FEW_LABEL_RECIPES:
        config.data.examples_per_class = DRY_RUN["labels_per_class"] if dry_run else FEW_LABELS
        config.data.label_seed = 0
    return config


def train_one_epoch(root: pathlib.Path, recipe: str, precision: str, dry_run: bool) -> dict:
    """One epoch of `recipe` at `precision` in ROOT/RECIPE_PRECISION (kept for the later steps);
    a few-label recipe starts from the PRETRAINED backbone, the student reads the propagated labels."""
    from jaxcifar import targets, train
    from jaxcifar.evaluate import read_history

    config = one_epoch_config(recipe, precision, dry_run)
    data = run_data(config, read_splits(root))
    if dry_run:
        shrink(config, data)
    if config.objective == "self_training":
        config.method.targets = str(root / PROPAGATED / targets.TARGETS)
    workdir = root / f"{recipe}_{precision}"
    summary = train.fit(config, workdir, data=data,
                        init_from=str(root / PRETRAINED) if recipe in FEW_LABEL_RECIPES else None)
    metric = f"test_{summary['metric']}"
    return {"recipe": recipe, "precision": precision, "objective": config.objective,
            "train_images": len(data.train), "unlabeled_images": len(data.unlabeled) if data.unlabeled else 0,
            "batch_size": config.batch_size,
            # The student's step also reads this many unlabelled images per labelled one;
            # images/s counts the labelled ones, as the package's summary does.
            "unlabeled_per_labelled": config.method.get("unlabeled_ratio", 0),
            "epochs": summary["epochs_completed"], "steps": summary["steps"],
            "train_images_per_second": summary["train_images_per_second"],
            "compile_seconds": summary["compile_seconds"], "train_seconds": summary["train_seconds"],
            "train_loss": [entry["train_loss"] for entry in read_history(workdir)], metric: summary[metric],
            **device_record()}


def propagate_labels(root: pathlib.Path, dry_run: bool) -> dict:
    """The student's targets, by the propagation a few-label run takes (jaxcifar.propagate:
    the PRETRAINED backbone's features, the kNN graph on the device, diffusion, a targets file
    checked against the student's budget), rather than drawn from the pack's own labels,
    which would leave that path unexercised; on the device it costs seconds."""
    from jaxcifar import propagate

    splits = read_splits(root)
    start = time.perf_counter()
    report = propagate.propagate_run(root / PRETRAINED, root / PROPAGATED,
                                     one_epoch_config("ssl_student", "float32", dry_run),
                                     whole=splits["train"], test=splits["test"])
    return {"seconds": round(time.perf_counter() - start, 1),
            **{key: value for key, value in report.items() if key != "workdir"}, **device_record()}


def compare_precisions(dry_run: bool) -> dict:
    """tests/test_precision.py's loss-curve run at float32 and at bfloat16 (same seed, same
    batches) and the largest gap between their per-epoch mean train losses, against the
    bound that test holds the CPU to."""
    from jaxcifar import testing

    epochs = DRY_RUN["curve_epochs"] if dry_run else testing.PRECISION_CURVE["epochs"]
    with tempfile.TemporaryDirectory() as tmp:
        losses = {precision: testing.loss_curve(pathlib.Path(tmp, precision), precision, epochs)[0]
                  for precision in PRECISIONS}
    gap = max(abs(low - exact) for low, exact in zip(losses["bfloat16"], losses["float32"]))
    return {"epochs": epochs, "train_loss": losses, "max_abs_gap": gap, "bound": testing.PRECISION_CURVE_ATOL,
            "within_bound": gap <= testing.PRECISION_CURVE_ATOL, **device_record()}


def run_anchor(script: str, root: pathlib.Path, dry_run: bool) -> dict:
    """The user's airbench94_muon.py, its `main` unchanged, as its `__main__` runs it (the model
    compiled, one warm-up run on random labels) but for one seeded run instead of 200, on
    the pack's images written where its CifarLoader reads them. A dry run adapts it to the
    CPU at float32 first, as experiments/airbench_muon_cpu.py does, and gives its loaders
    a batch of half its training images (its 2,000 would leave a tiny split no training step)."""
    import hashlib

    import torch
    from airbench_cpu import record_printed_rows, write_loader_files
    from airbench_muon_cpu import import_script, run_on_cpu_in_fp32

    splits = read_splits(root)
    if dry_run:
        run_on_cpu_in_fp32()
    record = import_script(pathlib.Path(script))
    if dry_run:
        loader, half = record.CifarLoader, len(splits["train"]) // 2
        record.CifarLoader = lambda path, train=True, batch_size=0, aug=None: loader(path, train, half, aug)
    rows = record_printed_rows(record)
    with tempfile.TemporaryDirectory() as data_root:
        write_loader_files(data_root, splits, [str(i) for i in range(NUM_CLASSES)])  # it never reads the names
        os.chdir(data_root)
        torch.manual_seed(0)
        model = record.CifarNet().cuda().to(memory_format=torch.channels_last)
        if not dry_run:
            model.compile(mode="max-autotune")
        record.print_columns(record.logging_columns_list, is_head=True)
        record.main("warmup", model)
        rows.clear()
        final_tta_accuracy = record.main(0, model)
    epochs = [r for r in rows if isinstance(r["epoch"], int)]
    final = next(r for r in rows if r["epoch"] == "eval")
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"script_sha256": hashlib.sha256(pathlib.Path(script).read_bytes()).hexdigest(),
            "torch": torch.__version__, "epochs": len(epochs),
            "test_accuracy": [round(r["val_acc"], 4) for r in epochs],
            "cumulative_train_seconds": [r["time_seconds"] for r in epochs],
            "final_accuracy_tta": round(final_tta_accuracy, 4), "final_seconds_with_tta": final["time_seconds"],
            "seconds_to_94": final["time_seconds"] if final_tta_accuracy >= 0.94 else None,
            "train_images_per_second": len(splits["train"]) * len(epochs) / epochs[-1]["time_seconds"],
            "peak_device_bytes": peak,
            "peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def seconds_to_accuracy(record: dict, accuracy: float) -> float | None:
    """Training seconds of a fast_muon record up to `accuracy` (per-epoch curve, then the final TTA)."""
    reached = [s for a, s in zip(record["test_accuracy"], record["cumulative_train_seconds"]) if a >= accuracy]
    if reached:
        return reached[0]
    if record.get("complete") and record["final_accuracy_tta"] >= accuracy:
        return record["cumulative_train_seconds"][-1] + record["final_tta_seconds"]
    return None


def check(args: argparse.Namespace) -> dict:
    """Every step, one after the other; the JSON's content."""
    started = time.perf_counter()
    steps = {}
    if args.install == "pip" and not args.dry_run:
        steps["install"] = install(INSTALL_SECONDS)
    anchor = args.airbench_script if args.airbench_script and pathlib.Path(args.airbench_script).is_file() else None
    planned = planned_steps(anchor)
    with tempfile.TemporaryDirectory() as root:
        prepare_started = time.perf_counter()
        write_splits(load_pack(args.pack, args.dry_run), pathlib.Path(root))
        prepare_seconds = round(time.perf_counter() - prepare_started, 1)
        for index, step in enumerate(planned):
            arguments = step_arguments(step, root, args.dry_run)
            # The anchor patches torch and changes directory: never in the check's process.
            if args.dry_run and index and step.kind != "anchor":
                steps[step.name] = run_step_here(step.name, arguments)
            else:
                steps[step.name] = run_step(step.name, arguments, None if args.dry_run else STEP_SECONDS[step.kind])
    if anchor:
        anchor_accuracy = steps["airbench94_muon"].get("final_accuracy_tta")
        for precision in PRECISIONS:
            record = steps[f"fast_muon_{precision}"]
            if anchor_accuracy is not None and "error" not in record:
                record["seconds_to_anchor_final_accuracy"] = seconds_to_accuracy(record, anchor_accuracy)
    else:
        steps["airbench94_muon"] = {"skipped": f"no airbench94_muon.py at --airbench_script={args.airbench_script!r}; "
                                               "copy it from github.com/KellerJordan/cifar10-airbench"}
    return {"dry_run": args.dry_run, "pack": os.path.basename(args.pack),
            "plan_seconds": plan_seconds(planned, "install" in steps), "device_seconds": DEVICE_SECONDS,
            "prepare_seconds": prepare_seconds, "check_wall_seconds": round(time.perf_counter() - started, 1),
            "steps": steps}


def run_one(args: argparse.Namespace) -> dict:
    """The record of the one step `args.step` names, in this process."""
    root = pathlib.Path(args.root)
    steps = {"fast_muon": lambda: train_fast_muon(root, args.precision, args.dry_run),
             "one_epoch": lambda: train_one_epoch(root, args.recipe, args.precision, args.dry_run),
             "propagate": lambda: propagate_labels(root, args.dry_run),
             "loss_curve": lambda: compare_precisions(args.dry_run),
             "anchor": lambda: run_anchor(args.airbench_script, root, args.dry_run)}
    return steps[args.step]()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", help="a CIFAR-10 JPEG pack (../shared/cifar10_jpeg_pack.npz)")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="every step at tiny size on the CPU, without the install")
    parser.add_argument("--airbench_script", help="your copy of airbench94_muon.py (the anchor)")
    parser.add_argument("--install", choices=("pip", "none"), default="pip")
    parser.add_argument("--out", default=str(HERE / "results" / "device_check.json"))
    # One step in its own process, as the check starts it: what to run, the check's folder
    # (the decoded pack, the workdirs), and where its record goes.
    parser.add_argument("--step", choices=tuple(STEP_SECONDS), help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    # The lent machine has no TensorFlow and nothing here needs it (no TFDS, no TensorBoard):
    # hiding an installed one runs here the code that runs there, and saves its import (4 s).
    sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None
    arguments = build_parser()
    args = arguments.parse_args()
    if args.dry_run:  # it checks the logic, not the speed (the whole dry run 2 minutes, not 6)
        xla_cpu.use_compile_flags(xla_cpu.FAST_COMPILE)
    if args.step is not None:
        pathlib.Path(args.record).write_text(json.dumps(run_one(args), indent=1))
        return
    if not args.pack:
        arguments.error("--pack is required: the CIFAR-10 JPEG pack to train on")
    out = pathlib.Path(args.out)
    write_result(out.stem, check(args), out.parent)


if __name__ == "__main__":
    main()
