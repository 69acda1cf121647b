"""The device check: one command for the few minutes a GPU is lent (issue 27).

On the GPU, one step after the other, each step in its own process (a crash or a timeout
ends that step, not the check, and each process's peak memory is its own):
  1. install: `pip install -e ".[cuda]"` (`--install none` keeps the machine's own JAX);
  2. `fast_muon` at float32, then at bfloat16 (`config.precision`), on the JPEG pack;
  3. the airbench94_muon anchor, the user's file run unchanged on the same pack (skipped,
     with a note, when no `--airbench_script` is given or the file is absent);
then writes experiments/results/device_check.json and stops.

Each training step records seconds to 94% with TTA as airbench counts them (training
seconds up to the first evaluation that reaches 94%, the final one with flip+translate TTA;
compilation excluded, experiments/fast_cpu.py), its final accuracies, images/s, and peak
device memory. The pack's images are lossy JPEG copies, so accuracies compare the systems
with each other, not with published figures; time to the anchor's final accuracy is
recorded too, for when neither reaches 94% on them.

    python experiments/device_check.py --pack ../shared/cifar10_jpeg_pack.npz \
        --airbench_script third_party/airbench94_muon.py
    python experiments/device_check.py --dry-run --pack PACK   # CPU, tiny, no install (tests/test_device_check.py)

On this workplace's device tool (its machine reaches no package registry, has JAX 0.11.2 for
CUDA 13 and lacks ml_collections; only the checkout and carried ignored folders travel, 64 MiB
in all), from the clone root:
    echo /.device/ >> .git/info/exclude && mkdir -p .device
    cp ../shared/cifar10_jpeg_pack.npz third_party/airbench94_muon.py .device/
    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .device/whl ml_collections==1.1.0
    run(carry=[".device"], timeout_s=540, command="python3 -m pip install -q --no-index --no-deps
        --target /tmp/site .device/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD &&
        python3 experiments/device_check.py --install none --pack .device/cifar10_jpeg_pack.npz
        --airbench_script .device/airbench94_muon.py && cp experiments/results/device_check.json $OUT/")
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from common import write_result

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
PRECISIONS = ("float32", "bfloat16")
# Wall-clock limit of each step on the device, so that the whole check ends inside 8 minutes (a
# dry run has none: on a busy CPU its tiny steps take longer than the GPU's real ones).
STEP_SECONDS = {"install": 240, "train": 140, "anchor": 180}
# The dry run's tiny size: images of each class per split, batch, epochs (the whitening bias trains
# in the first only, as in fast_muon's first 3 of 8) and conv widths.
DRY_RUN = {"train_per_class": 8, "test_per_class": 4, "batch_size": 32, "epochs": 1, "widths": (16, 16, 16)}


def run_step(name: str, command: list[str], seconds: float | None) -> dict:
    """Run one step's process; its record (the JSON it writes to --record), or why there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        record_path = pathlib.Path(tmp, "record.json")
        start = time.perf_counter()
        try:
            done = subprocess.run([*command, "--record", str(record_path)], cwd=REPO, capture_output=True,
                                  text=True, timeout=seconds)
        except subprocess.TimeoutExpired:
            return {"step": name, "error": f"timed out after {seconds} s"}
        outcome = {"step": name, "step_wall_seconds": round(time.perf_counter() - start, 1)}
        if done.returncode or not record_path.exists():
            return {**outcome, "error": f"exit code {done.returncode}", "stderr_tail": done.stderr[-2000:]}
        return {**outcome, **json.loads(record_path.read_text())}


def install(seconds: float) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".[cuda]"], cwd=REPO,
                              capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"step": "install", "error": f"timed out after {seconds} s"}
    return {"step": "install", "returncode": done.returncode, "seconds": round(time.perf_counter() - start, 1),
            **({"stderr_tail": done.stderr[-2000:]} if done.returncode else {})}


def peak_memory() -> dict:
    """The device's peak bytes in use (GPU/TPU allocators report it; XLA:CPU does not) and the
    process's peak host memory."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return {"peak_device_bytes": stats.get("peak_bytes_in_use"),
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


def train_fast_muon(pack: str, precision: str, dry_run: bool) -> dict:
    """Train `fast_muon` at `precision` on the pack; its time-to-accuracy record."""
    import jax
    from fast_cpu import collect, recipe_config

    from jaxcifar import data as data_lib
    from jaxcifar import train

    splits = load_pack(pack, dry_run)
    data = data_lib.Data(splits["train"], splits["test"], 10)
    config = recipe_config("fast_muon", seed=0, epochs=DRY_RUN["epochs"] if dry_run else None)
    config.precision = precision
    if dry_run:
        config.batch_size, config.eval_batch_size = DRY_RUN["batch_size"], len(data.eval)
        config.model_kwargs.widths = DRY_RUN["widths"]
        config.group_epochs.whiten_bias = DRY_RUN["epochs"]
    with tempfile.TemporaryDirectory() as workdir:
        train.fit(config, workdir, data=data)
        record = collect(pathlib.Path(workdir), 0, data)
    device = jax.devices()[0]
    return {"recipe": "fast_muon", "precision": precision, "device": f"{device.platform}: {device.device_kind}",
            "jax": jax.__version__, "train_images": len(data.train), "test_images": len(data.eval),
            **record, **peak_memory()}


def run_anchor(script: str, pack: str, dry_run: bool) -> dict:
    """The user's airbench94_muon.py, its `main` unchanged, as its `__main__` runs it (the model
    compiled, one warm-up run on random labels) but for one seeded run instead of 200, on
    the pack's images written where its CifarLoader reads them. A dry run adapts it to the
    CPU at float32 first, as experiments/airbench_muon_cpu.py does, and gives its loaders
    the dry run's batch size (its 2,000 would leave a tiny split no training step)."""
    import hashlib

    import torch
    from airbench_cpu import record_printed_rows, write_loader_files
    from airbench_muon_cpu import import_script, run_on_cpu_in_fp32

    if dry_run:
        run_on_cpu_in_fp32()
    record = import_script(pathlib.Path(script))
    if dry_run:
        loader = record.CifarLoader
        record.CifarLoader = lambda path, train=True, batch_size=0, aug=None: loader(path, train,
                                                                                      DRY_RUN["batch_size"], aug)
    rows = record_printed_rows(record)
    splits = load_pack(pack, dry_run)
    with tempfile.TemporaryDirectory() as root:
        write_loader_files(root, splits, [str(i) for i in range(10)])  # it never reads the class names
        os.chdir(root)
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
        steps["install"] = install(STEP_SECONDS["install"])
    step = [sys.executable, __file__, "--pack", args.pack, *(["--dry-run"] if args.dry_run else [])]
    limit = {name: None for name in STEP_SECONDS} if args.dry_run else STEP_SECONDS
    for precision in PRECISIONS:
        steps[f"fast_muon_{precision}"] = run_step(
            f"fast_muon_{precision}", [*step, "--step", "train", "--precision", precision], limit["train"])
    if args.airbench_script and pathlib.Path(args.airbench_script).is_file():
        steps["airbench94_muon"] = run_step(
            "airbench94_muon", [*step, "--step", "anchor", "--airbench_script", args.airbench_script],
            limit["anchor"])
        anchor_accuracy = steps["airbench94_muon"].get("final_accuracy_tta")
        for precision in PRECISIONS:
            record = steps[f"fast_muon_{precision}"]
            if anchor_accuracy is not None and "error" not in record:
                record["seconds_to_anchor_final_accuracy"] = seconds_to_accuracy(record, anchor_accuracy)
    else:
        steps["airbench94_muon"] = {"skipped": f"no airbench94_muon.py at --airbench_script={args.airbench_script!r}; "
                                               "copy it from github.com/KellerJordan/cifar10-airbench"}
    return {"dry_run": args.dry_run, "pack": os.path.basename(args.pack),
            "check_wall_seconds": round(time.perf_counter() - started, 1), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", required=True, help="a CIFAR-10 JPEG pack (../shared/cifar10_jpeg_pack.npz)")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="every step at tiny size on the CPU, without the install")
    parser.add_argument("--airbench_script", help="your copy of airbench94_muon.py (the anchor)")
    parser.add_argument("--install", choices=("pip", "none"), default="pip")
    parser.add_argument("--out", default=str(HERE / "results" / "device_check.json"))
    # One step in its own process, as the check starts it: what to run, and where its record goes.
    parser.add_argument("--step", choices=("train", "anchor"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step is None:
        out = pathlib.Path(args.out)
        write_result(out.stem, check(args), out.parent)
        return
    record = (train_fast_muon(args.pack, args.precision, args.dry_run) if args.step == "train"
              else run_anchor(args.airbench_script, args.pack, args.dry_run))
    pathlib.Path(args.record).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
