"""Parameter-efficient fine-tuning against full fine-tuning, each mode at its own learning
rate chosen on a validation split held out of the labelled images.

Tasks (`--tasks`):
  split_cifar  (the default) as experiments/split_cifar_transfer.py defines it: a width-16
               ResNet-18 pretrained on classes 0-4, then classes 5-9 from 100 labels per
               class, evaluated on their 515 exact `test` images and their 5,000 `test_jpeg`
               copies.
  ssl          the SimCLR backbone of experiments/ssl_label_efficiency.py (half-width
               airbench, no labels), then all 10 classes from 100 labels per class through
               `ssl_finetune`, evaluated on `test`. Opt-in (it doubles the cost), and
               skipped, with the reason recorded, when that backbone run is absent.

Every mode runs the same two stages: the head alone on the frozen backbone (at the recipe's
rate, the same for every mode), then a second stage in which `peft.mode` decides what
trains. Modes (the table's rows):
  linear            still the head only;
  bitfit            the head, every bias and every BatchNorm scale and bias;
  lora_rR           the head and rank-R adapters on every 3x3 and 1x1 conv, alpha = R so the
                    update's scale alpha/R is 1 at every rank;
  lora_rR_norms     lora_rR with bitfit's parameters trained alongside (`peft.train_norms`),
                    a cheap and common recovery of much of the gap to full fine-tuning;
  full              everything.
LoRA goes on the convolutions only: both networks' one dense layer is the head, which every
mode trains whole (resnet18 and airbench have no other `nn.Dense`; their stems' 3x3 convs
carry adapters, airbench's 2x2 whitening conv does not). Ranks 4, 8, 16, 32 by default
(`--lora_ranks`). The trainable fraction counts the adapters in the model's parameters (as
summary.json does), so on split-CIFAR lora_r4 trains 4.96% and lora_r4_norms, 2,400
parameters more, 5.3%: over the 5% budget; `--lora_ranks 2` adds the rank below.

Phase 1, the learning rate of the second stage, per mode: seed 0, the three rates
LR_MULTIPLES x the mode's untuned rate (the recipe's fine-tuning rate for `full`, a fifth of
the first stage's on split-CIFAR; the first stage's own for the PEFT modes). Why those: a
factor of 3 is half a decade, so the grid spans 9x around the rate of the earlier, untuned
comparison, which stays a point of it (x1); the PEFT modes' x3 is 15x full's rate, the range
in which LoRA and BitFit are usually tuned. While the best rate is the largest (or smallest)
tried, the next rate past it (x3, or /3) is tried too, at most MAX_EXTENSIONS times, since a
best rate on the edge says only that the best lies that way; one still on the edge after
that is flagged in the JSON (`chosen_at_edge`). Each run
trains on the labelled images less a validation split held out of them
(`data.validation_fraction` = VALIDATION_FRACTION: 20 of each class's 100, stratified, a
fixed draw shared by every run; it is taken out of the label budget, never from beyond it)
and is scored on that split only: the test splits are not even loaded. The score is the
validation accuracy of the final weights, as phase 2 reports its final weights (the best
epoch's is recorded beside it). The highest score wins; a tie goes to the smaller rate; a
rate whose loss diverged scores nothing. One validation image is a point at 5 classes: read
close calls as ties.

Phase 2: each mode at its chosen rate, seeds 0, 1, 2, on the whole labelled budget, with no
validation split (so its final weights are reported), evaluated on `test` (and `test_jpeg`
on split-CIFAR). Recorded per mode: chosen rate and every phase-1 score, `test` (and
`test_jpeg`) accuracy over the seeds, trainable parameters of the second stage and their
fraction, the adapter's size on disk (WORKDIR/adapter/adapter.msgpack; for `full`, the
whole float32 model), and the median seconds per epoch of the second stage.

Every finished run writes its own record at once, OUT_DIR/records/*.json, and a rerun with
the same --out_dir reads the records instead of the runs (an unfinished run's workdir
resumes); experiments/results/efficient_finetune.json is assembled from the records at the
end, with the command, machine, date, load average and commit. The workdirs name their rate
(`split_lora_r8_lr0.05_0`), so a run at another rate is never mistaken for one.

    python experiments/efficient_finetune.py --data_dir ../shared/tensorflow_datasets

Cost, from the seconds per epoch recorded by the untuned comparison (its JSON's per-seed
medians, split-CIFAR, under load): 11 modes x (3 rates + 3 seeds) = 66 runs of 20 + 20
epochs, and up to 22 more where a grid is extended. Stage 1 at ~2.0 s/epoch; stage 2 at
linear 2.0, bitfit 2.4, lora_r4 5.6, lora_r8 5.1, full 6.1 s/epoch, ranks 16 and 32 taken as
2x and 4x rank 8's (an upper bound: as if the adapters' cost were all of it), a _norms mode
as its lora mode; phase 1 at 0.8 of an
epoch (80 of 100 images per class); ~30 s a run to compile and evaluate. About 110 minutes
for phase 1 and 130 for phase 2: 4 hours on the 2-core CPU. `--modes` and `--lora_ranks`
restrict the sweep, `--seeds` phase 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import time
from typing import Callable

import jax
import split_cifar_transfer
from common import stats, write_result

from jaxcifar import checkpoint, evaluate, parallel, train
from jaxcifar import config as config_lib
from jaxcifar import data as data_lib

LORA_RANKS = (4, 8, 16, 32)
LR_STEP = 3.0  # between neighbouring rates of phase 1: half a decade
LR_MULTIPLES = (1 / LR_STEP, 1.0, LR_STEP)  # of a mode's untuned rate; the docstring says why
MAX_EXTENSIONS = 2  # rates added past a winning edge of the grid, one at a time: up to 9x beyond it
VALIDATION_FRACTION = 0.2  # of each class's labelled images, held out in phase 1
SEEDS = (0, 1, 2)
SWEEP_SEED = 0
SSL_LABELS_PER_CLASS, SSL_EPOCHS = 100, 20  # ssl_label_efficiency's 100-label budget


@dataclasses.dataclass(frozen=True)
class Mode:
    """One row of the table: a `peft` block."""

    mode: str
    rank: int = 0
    train_norms: bool = False


def modes(lora_ranks=LORA_RANKS) -> dict[str, Mode]:
    """Table row -> its peft block, in table order."""
    return {"linear": Mode("linear"), "bitfit": Mode("bitfit"),
            **{f"lora_r{rank}": Mode("lora", rank) for rank in lora_ranks},
            **{f"lora_r{rank}_norms": Mode("lora", rank, True) for rank in lora_ranks},
            "full": Mode("full")}


def untuned_lr(config: config_lib.ml_collections.ConfigDict, mode: Mode) -> float:
    """The second stage's rate of the untuned comparison: the recipe's fine-tuning rate for
    `full`, the first stage's for the PEFT modes."""
    frozen, finetune = (dict(stage) for stage in config.stages)
    return finetune.get("lr", config.lr) if mode.mode == "full" else frozen.get("lr", config.lr)


def lr_grid(config: config_lib.ml_collections.ConfigDict, mode: Mode) -> list[float]:
    """The rates phase 1 tries, to 4 significant figures (they name workdirs)."""
    return [float(f"{untuned_lr(config, mode) * multiple:.4g}") for multiple in LR_MULTIPLES]


def with_mode(config: config_lib.ml_collections.ConfigDict, mode: Mode, lr: float):
    """`config` (a frozen stage, then a fine-tuning stage) with its peft block set to `mode`
    (LoRA at alpha = rank) and the second stage at `lr`."""
    frozen, finetune = (dict(stage) for stage in config.stages)
    config.stages = (frozen, {**finetune, "lr": lr})
    config.peft.mode, config.peft.train_norms = mode.mode, mode.train_norms
    if mode.mode == "lora":
        config.peft.rank, config.peft.alpha = mode.rank, float(mode.rank)
    return config


def for_lr_sweep(config: config_lib.ml_collections.ConfigDict):
    """`config` for phase 1: VALIDATION_FRACTION of its labelled images held out and scored,
    and no test split read at all."""
    config.data.validation_fraction = VALIDATION_FRACTION
    config.data.eval_split, config.data.extra_eval_splits = "", ()
    return config


def split_cifar_config(epochs: int, seed: int):
    return split_cifar_transfer.transfer_config("finetune", epochs, seed)


def ssl_config(epochs: int, seed: int):
    config = config_lib.load_recipe("ssl_finetune")
    config.seed, config.batch_size, config.log_every_steps = seed, 50, 10
    config.data.examples_per_class = SSL_LABELS_PER_CLASS
    frozen, finetune = dict(config.stages[0]), dict(config.stages[1])
    config.stages = ({**frozen, "epochs": epochs // 4}, {**finetune, "epochs": epochs - epochs // 4})
    return config


def tried_rates(grid: list[float], run: Callable[[float], dict]) -> dict[float, dict]:
    """{rate: run(rate)'s record} for each rate of `grid`, then, while the best so far
    (`choose_lr` on the records' val_accuracy) is the largest or the smallest rate tried, the
    next rate past that edge (x or / LR_STEP), at most MAX_EXTENSIONS of them: a best rate on
    the grid's edge says only that the best lies that way."""
    records = {lr: run(lr) for lr in grid}
    for _ in range(MAX_EXTENSIONS):
        best = choose_lr({lr: record.get("val_accuracy") for lr, record in records.items()})
        if best not in (min(records), max(records)):
            break
        lr = float(f"{best * LR_STEP if best == max(records) else best / LR_STEP:.4g}")
        records[lr] = run(lr)
    return dict(sorted(records.items()))


def choose_lr(scores: dict[float, float | None]) -> float:
    """The rate with the highest phase-1 score; a tie goes to the smaller rate; a rate that
    diverged (None) never wins."""
    finite = {lr: score for lr, score in scores.items() if score is not None}
    if not finite:
        raise ValueError(f"every rate of the sweep diverged: {sorted(scores)}")
    return max(finite, key=lambda lr: (finite[lr], -lr))


# ----- one run -----
def measure(config, workdir: pathlib.Path, data: data_lib.Data, base: pathlib.Path) -> dict:
    """A finished run's record (a run whose loss diverged records only that)."""
    try:
        summary = train.fit(config, workdir, data=data, init_from=str(base))
    except train.NonFiniteLoss as e:
        return {"diverged": str(e)}
    last_stage = config.stages[-1]["name"]
    history = evaluate.read_history(workdir)
    epoch_seconds = [h["epoch_train_seconds"] for h in history if h["stage"] == last_stage]
    adapter = summary["adapter"]
    return {"test_accuracy": summary.get("test_accuracy"),
            "extra_eval_accuracy": summary["extra_eval_accuracy"],
            # phase 1: the final weights' score (what phase 2 reports), and the best epoch's
            "val_accuracy": history[-1].get("val_accuracy"), "val_accuracy_best_epoch": summary.get("val_accuracy"),
            "validation_examples": summary["validation_examples"],
            "trainable_parameters": summary["trainable_parameters"][last_stage],
            "parameters": summary["parameters"],
            "saved_bytes": adapter["adapter_bytes"] if adapter else model_bytes(workdir),
            "seconds_per_epoch": statistics.median(epoch_seconds)}


def model_bytes(workdir: pathlib.Path) -> int:
    """float32 bytes of the inference weights of a run saved whole."""
    variables, _ = checkpoint.load_variables(workdir, "best")
    return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(variables)))


def run_name(task: str, row: str, lr: float, seed: int) -> str:
    return f"{task}_{row}_lr{lr:g}_{seed}"


def recorded_run(records: pathlib.Path, name: str, run: Callable[[], dict], about: dict) -> dict:
    """RECORDS/NAME.json if a run wrote it, else `run()`'s record, written there at once."""
    path = records / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    record = {**about, **run()}
    records.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


# ----- a task's sweep -----
@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    make_config: Callable[[int], config_lib.ml_collections.ConfigDict]  # seed -> the two-stage config
    base: pathlib.Path
    about: dict


def sweep(task: Task, rows: dict[str, Mode], seeds, out: pathlib.Path, data_dir: str | None) -> dict:
    """Phase 1 then phase 2 of every row on `task`: {row: {"sweep": ..., "runs": [...]}}."""
    records = out / "records"
    sweep_data = data_lib.load_data(for_lr_sweep(task.make_config(SWEEP_SEED)), data_dir)
    results = {}
    for row, mode in rows.items():
        def run_at(lr: float) -> dict:
            name = run_name(f"{task.name}_sweep", row, lr, SWEEP_SEED)
            config = for_lr_sweep(with_mode(task.make_config(SWEEP_SEED), mode, lr))
            record = recorded_run(records, name, lambda: measure(config, out / "lr_sweep" / name, sweep_data, task.base),
                                  {"task": task.name, "phase": "lr_sweep", "mode": row, "lr": lr, "seed": SWEEP_SEED})
            print(f"{task.name} {row} lr {lr:g}: validation {record.get('val_accuracy')}", flush=True)
            return record

        scores = tried_rates(lr_grid(task.make_config(SWEEP_SEED), mode), run_at)
        results[row] = {"sweep": scores, "lr": choose_lr({lr: r.get("val_accuracy") for lr, r in scores.items()})}
    data = data_lib.load_data(task.make_config(0), data_dir)
    for row, mode in rows.items():
        lr = results[row]["lr"]
        results[row]["runs"] = []
        for seed in seeds:
            name = run_name(task.name, row, lr, seed)
            config = with_mode(task.make_config(seed), mode, lr)
            record = recorded_run(records, name, lambda: measure(config, out / name, data, task.base),
                                  {"task": task.name, "phase": "final", "mode": row, "lr": lr, "seed": seed})
            results[row]["runs"].append(record)
            print(f"{task.name} {row} lr {lr:g} seed {seed}: test {record.get('test_accuracy')}", flush=True)
    return results


def mode_table(results: dict, rows: dict[str, Mode]) -> dict:
    """Per row: the chosen rate and every phase-1 score (`chosen_at_edge`: the best rate is
    still the largest or smallest tried), then phase 2's figures over seeds."""
    table = {}
    for row, r in results.items():
        runs = [run for run in r["runs"] if "diverged" not in run]
        grid = sorted(r["sweep"])
        entry = {"peft": dataclasses.asdict(rows[row]), "lr": r["lr"], "lr_grid": grid,
                 "chosen_at_edge": r["lr"] in (grid[0], grid[-1]),
                 "lr_sweep": {f"{lr:g}": {key: run.get(key) for key in ("val_accuracy", "val_accuracy_best_epoch",
                                                                          "validation_examples", "diverged")
                                          if key in run} for lr, run in r["sweep"].items()},
                 "diverged_seeds": len(r["runs"]) - len(runs)}
        if runs:
            entry.update({"test_accuracy": stats([run["test_accuracy"] for run in runs]),
                          **({"test_jpeg_accuracy": stats([run["extra_eval_accuracy"]["test_jpeg"] for run in runs])}
                             if "test_jpeg" in runs[0]["extra_eval_accuracy"] else {}),
                          "trainable_parameters": runs[0]["trainable_parameters"],
                          "parameters": runs[0]["parameters"],
                          "trainable_fraction": runs[0]["trainable_parameters"] / runs[0]["parameters"],
                          "saved_bytes": runs[0]["saved_bytes"],
                          "seconds_per_epoch": stats([run["seconds_per_epoch"] for run in runs])})
        table[row] = entry
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out_dir", default="runs/efficient_finetune")
    parser.add_argument("--split_dir", default="runs/split_cifar",
                        help="split_cifar_transfer.py's --out_dir: its `pretrain` run is reused or trained here")
    parser.add_argument("--ssl_dir", default="runs/ssl_label_efficiency",
                        help="ssl_label_efficiency.py's --out_dir, whose `ssl` run is the SSL backbone")
    parser.add_argument("--tasks", nargs="+", choices=("split_cifar", "ssl"), default=["split_cifar"])
    parser.add_argument("--pretrain_epochs", type=int, default=8)
    parser.add_argument("--transfer_epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="phase 2's seeds")
    parser.add_argument("--lora_ranks", type=int, nargs="+", default=list(LORA_RANKS))
    parser.add_argument("--modes", nargs="+", default=None, help="table rows to run (default: all), e.g. full lora_r4")
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    parallel.configure_compilation_cache()
    start, load_before = time.time(), [round(x, 2) for x in os.getloadavg()]
    rows = modes(args.lora_ranks)
    if args.modes:
        unknown = set(args.modes) - set(rows)
        if unknown:
            parser.error(f"unknown --modes {sorted(unknown)}; known: {', '.join(rows)}")
        rows = {row: mode for row, mode in rows.items() if row in args.modes}

    tasks, skipped = [], {}
    if "split_cifar" in args.tasks:
        base = pathlib.Path(args.split_dir) / "pretrain"
        train.fit(split_cifar_transfer.pretrain_config(args.pretrain_epochs), base, data_dir=args.data_dir)
        tasks.append(Task("split", lambda seed: split_cifar_config(args.transfer_epochs, seed), base, {
            "task": "split_cifar", "epochs": args.transfer_epochs, "network": "resnet18 (CIFAR stem) at width 16",
            "eval": "test classes 5-9 (515 exact images); test_jpeg: their 5,000 JPEG copies"}))
    if "ssl" in args.tasks:
        base = pathlib.Path(args.ssl_dir) / "ssl"
        if (base / "checkpoints").is_dir():
            tasks.append(Task("ssl", lambda seed: ssl_config(SSL_EPOCHS, seed), base, {
                "task": "ssl", "epochs": SSL_EPOCHS, "labels_per_class": SSL_LABELS_PER_CLASS,
                "network": "airbench at half width (ssl_finetune)", "eval": "test (1,000 images)"}))
        else:
            skipped["ssl"] = f"no SSL backbone run at {base} (run experiments/ssl_label_efficiency.py first)"
            print(f"SSL task skipped: {skipped['ssl']}", flush=True)

    result = {"split_cifar": None, "ssl": None}
    for task in tasks:
        results = sweep(task, rows, args.seeds, out, args.data_dir)
        result[task.about["task"]] = {**task.about, "base": str(task.base), "seeds": args.seeds,
                                      "modes": mode_table(results, rows),
                                      "runs": {row: r["runs"] for row, r in results.items()}}
    write_result("efficient_finetune", {
        **result,
        "skipped": skipped,
        "lr_sweep": {"multiples": list(LR_MULTIPLES), "of": "the untuned rate: the recipe's fine-tuning rate "
                     "(full), the first stage's (PEFT modes)", "seed": SWEEP_SEED,
                     "extended": f"while the best rate is the largest (smallest) tried, x (/) {LR_STEP:g} past it, "
                                 f"at most {MAX_EXTENSIONS} times",
                     "validation_fraction": VALIDATION_FRACTION,
                     "validation": "held out of the labelled images (data.validation_fraction), stratified, fixed draw",
                     "score": "validation accuracy of the final weights; ties to the smaller rate"},
        "lora": {"ranks": args.lora_ranks, "alpha": "= rank (update scale alpha/rank = 1)"},
        "load_average_at_start": load_before,
        "wall_seconds": time.time() - start,
    })


if __name__ == "__main__":
    main()
