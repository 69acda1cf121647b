"""Few labels: many-crop self-supervised pretraining, then learning from 1, 10 and 25 labels
per class. Every finished part is written into experiments/results/few_labels.json as soon
as it ends (a table with parts missing renders them as pending), and every training resumes
from its checkpoint, so the experiment can stop and go on across sessions.

    python experiments/few_labels.py --data_dir ../shared/tensorflow_datasets [--parts pretrain ...]

Parts (each label budget uses the same images for every method at a seed: data.label_seed):
  budget     this machine's `fast` epoch (the unit the CPU budgets are scaled by: 60 minutes
             of pretraining and 30 per row where a `fast` epoch takes 150 s).
  pretrain   `ssl_multicrop` on all 50,000 training images, labels unread; the kNN accuracy
             on `test` after every epoch with its wall time (the curve), and the final
             backbone's kNN and linear probe (the probe with every label, as a ceiling).
  embedding  the kNN of the whole image's embedding against the mean of it and five crops,
             on 5,000 held-out training images (the bank: the other 45,000).
  propagate  label propagation alone (python -m jaxcifar.propagate) at 25 and 10 labels per
             class, 3 seeds: accuracy on the unlabelled images and on `test`.
  select     1 label per class: select_labels (TypiClust, 3 k-means seeds, the CSV filled
             from the true labels as a person would fill it) against a random balanced draw
             (3 seeds), each through propagation.
  student    `ssl_student` from the backbone and the propagated labels, 25 and 10 per class.
  teacher_student
             the same student, its labels propagated over the features of the `finetune` row
             of its budget and seed (the teacher, trained first if missing) instead of the
             self-supervised backbone's.
  consistency
             the teacher's student with the consistency loss (method.consistency_weight=1):
             FixMatch's weak-to-strong target, aligned to the class prior and weighted by its
             confidence, beside the propagated labels (the teacher's, propagated if missing).
  finetune   today's probe + fine-tune (`ssl_finetune`) of the new backbone, same budgets.
  scratch    the same network trained from scratch on the budget alone.
  select_finetune
             1 label per class through probe + fine-tune: TypiClust's labels (from `select`)
             against the random draw, 3 seeds.

Every training row runs the same number of optimizer steps (ROW_STEPS), sized to fit the
30-minute row budget on this project's 2-core machine; the JSON records the wall time each
took and the load average when it ended. The pretraining's epoch count was sized likewise
(1.7 s a step of 128 images x 16 crops, measured at a load of about 2).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np
from common import FAST_EPOCH_REFERENCE_SECONDS, RESULTS, commit, fast_epoch_seconds, write_result

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import batch_order, evaluate, parallel, propagate, select_labels, targets, train

NAME = "few_labels"
PRETRAIN_RECIPE = "ssl_multicrop"


def record(part: str, result: dict) -> None:
    """Write `result` as `part` of few_labels.json, keeping the parts already there."""
    path = RESULTS / f"{NAME}.json"
    parts = json.loads(path.read_text()).get("parts", {}) if path.exists() else {}
    parts[part] = {**result, "command": " ".join(["python", *sys.argv]), "date": datetime.date.today().isoformat(),
                   "commit": commit(), "load_average": [round(x, 2) for x in os.getloadavg()]}
    write_result(NAME, {"parts": parts})


def pretrain(out: pathlib.Path, data_dir: str | None, grid) -> None:
    del grid
    config = config_lib.load_recipe(PRETRAIN_RECIPE)
    data = data_lib.load_data(config, data_dir)
    started = time.time()
    summary = train.fit(config, out / "pretrain", data=data)
    history = evaluate.read_history(out / "pretrain")
    report = evaluate.self_supervised_report(out / "pretrain", data.train, data.eval)
    record("pretrain", {
        "recipe": PRETRAIN_RECIPE, "seed": config.seed, "epochs": config.epochs, "method": config.method.to_dict(),
        "model_kwargs": config.model_kwargs.to_dict(),
        "train_seconds": summary["train_seconds"], "wall_seconds_this_session": time.time() - started,
        "knn_accuracy_per_epoch": [h["eval_knn_accuracy"] for h in history],
        "train_seconds_per_epoch": [h["epoch_train_seconds"] for h in history],
        "test_knn_accuracy": report["knn_accuracy"],
        "test_linear_probe_accuracy_all_labels": report["linear_probe_accuracy"],
        "test_examples": len(data.eval)})


HELD_OUT = 5000  # training images the embedding part queries (the other 45,000 are the kNN bank)
CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))  # 16 px crops at the corners of a 32 px image, in halves


def embedding(out: pathlib.Path, data_dir: str | None, grid) -> None:
    """Does embedding an image as the mean of the whole image and five 16 px crops (four
    corners and the centre: the scale the backbone was pretrained at) help the kNN? Measured
    on 5,000 held-out training images against the other 45,000, never on `test`."""
    del grid
    import jax
    import jax.numpy as jnp

    from jaxcifar import augment, ssl, steps
    from jaxcifar.runs import load_run

    run = load_run(out / "pretrain", "latest")
    whole = data_lib.read_split(run.config.data, "train", data_dir)
    order = np.random.default_rng(0).permutation(len(whole))
    queries, bank = order[:HELD_OUT], order[HELD_OUT:]
    crop = run.config.method.crop_size
    views = {"whole": lambda x: x, **{f"corner_{i}{j}": (lambda x, i=i, j=j: x[:, i * crop:(i + 1) * crop,
                                                                             j * crop:(j + 1) * crop])
                                      for i, j in CORNERS},
             "centre": lambda x: x[:, crop // 2:crop // 2 + crop, crop // 2:crop // 2 + crop]}

    def embed(view) -> np.ndarray:
        apply = jax.jit(lambda variables, x: run.model.apply(
            variables, augment.normalize(view(x), run.config.augment.normalization),
            method=steps.pooled_features))  # crops at their own size: not make_features, which resizes
        features = np.concatenate([np.asarray(apply(run.variables, jnp.asarray(whole.images[i:i + 500])))
                                   for i in range(0, len(whole), 500)])
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

    started = time.time()
    features = {name: embed(view) for name, view in views.items()}
    crops = sum(f for name, f in features.items() if name != "whole") / (len(features) - 1)
    variants = {"whole image": features["whole"], "whole image + mean of 5 crops": features["whole"] + crops}
    record("embedding", {
        "held_out_images": HELD_OUT, "bank_images": len(bank), "crop_size": crop,
        "knn_accuracy": {name: ssl.knn_accuracy(f[bank], whole.labels[bank], f[queries], whole.labels[queries],
                                                run.num_classes, run.config.ssl) for name, f in variants.items()},
        "wall_seconds": time.time() - started})


LABELS_PER_CLASS = (25, 10)
SEEDS = (0, 1, 2)
ROW_STEPS = 750  # optimizer steps of every training row: about 15 minutes here at 400 images a step


def budget(out: pathlib.Path, data_dir: str | None, grid) -> None:
    del grid
    data = data_lib.load_data(config_lib.load_recipe("fast"), data_dir)
    seconds = fast_epoch_seconds(data, steps=6)
    scale = seconds / FAST_EPOCH_REFERENCE_SECONDS
    record("budget", {"fast_epoch_seconds": seconds, "fast_epoch_reference_seconds": FAST_EPOCH_REFERENCE_SECONDS,
                      "pretrain_budget_minutes": 60 * scale, "row_budget_minutes": 30 * scale})


def budget_config(recipe: str, labels_per_class: int, seed: int) -> config_lib.ml_collections.ConfigDict:
    config = config_lib.load_recipe(recipe)
    config.data.examples_per_class, config.data.label_seed = labels_per_class, seed
    return config


def propagated(out: pathlib.Path, labels_per_class: int, seed: int) -> pathlib.Path:
    return out / f"propagated_{labels_per_class}_{seed}"


def propagate_rows(out: pathlib.Path, data_dir: str | None, grid) -> None:
    for n, seed in grid:
        started = time.time()
        report = propagate.propagate_run(out / "pretrain", propagated(out, n, seed),
                                         budget_config("ssl_student", n, seed), data_dir)
        record(f"propagate_{n}_{seed}", {**report, "wall_seconds": time.time() - started})


def select_rows(out: pathlib.Path, data_dir: str | None, grid) -> None:
    """1 label per class: TypiClust's 10 images against a random draw of one per class."""
    whole = data_lib.read_split(config_lib.load_recipe("ssl_student").data, "train", data_dir)
    for seed in sorted({seed for _, seed in grid}):
        chosen = out / f"typiclust_10_{seed}"
        started = time.time()
        rows = select_labels.select_run(out / "pretrain", 10, chosen, data_dir, seed=seed, images=whole.images)
        filled = fill_labels(chosen / select_labels.CSV, whole.labels)
        for way, config in (("typiclust", labels_csv_config(filled)), ("random", budget_config("ssl_student", 1, seed))):
            report = propagate.propagate_run(out / "pretrain", out / f"propagated_1_{way}_{seed}", config, data_dir)
            record(f"select_{way}_{seed}", {**report, "classes_covered": len(set(whole.labels[rows]))
                                            if way == "typiclust" else 10, "wall_seconds": time.time() - started})


def fill_labels(path: pathlib.Path, labels: np.ndarray) -> pathlib.Path:
    """The CSV with its label column filled from the true labels, as the person labelling would."""
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    for entry in table:
        entry["label"] = str(int(labels[int(entry["index"])]))
    filled = path.with_name("filled.csv")
    with open(filled, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return filled


def labels_csv_config(path: pathlib.Path, recipe: str = "ssl_student") -> config_lib.ml_collections.ConfigDict:
    config = config_lib.load_recipe(recipe)
    config.data.labels_csv = str(path)
    return config


def select_finetune_rows(out: pathlib.Path, data_dir: str | None, grid) -> None:
    """1 label per class with the best row of the larger budgets (probe + fine-tune): the
    `select` part's TypiClust labels against its random draw, at the same seeds."""
    for seed in sorted({seed for _, seed in grid}):
        filled = out / f"typiclust_10_{seed}" / "filled.csv"
        if not filled.exists():
            select_rows(out, data_dir, [(1, seed)])
        for way, config in (("typiclust", labels_csv_config(filled, "ssl_finetune")),
                            ("random", budget_config("ssl_finetune", 1, seed))):
            config.data.label_seed, config.batch_size = seed, 10  # the seed, recorded with the row; all ten a step
            finetune_schedule(config, "finetune", epochs=TRANSFER_EPOCHS)
            train_row(f"select_finetune_{way}_{seed}", config, out, data_dir, out / "pretrain")


def row_schedule(config, labelled: int) -> None:
    """ROW_STEPS steps, whatever the budget: epochs over the labelled images to match."""
    steps_per_epoch = batch_order.steps_per_epoch(labelled, config.batch_size)
    config.epochs = max(1, round(ROW_STEPS / steps_per_epoch))


def train_row(name: str, config, out: pathlib.Path, data_dir: str | None, init_from: pathlib.Path | None) -> None:
    data = data_lib.load_data(config, data_dir)
    started = time.time()
    summary = train.fit(config, out / name, data=data, init_from=None if init_from is None else str(init_from))
    record(name, {"test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"],
                  "wall_seconds_this_session": time.time() - started, "epochs": config.epochs,
                  "labels": len(data.train), "seed": config.data.label_seed})


def train_student(name: str, targets_dir: pathlib.Path, n: int, seed: int, out: pathlib.Path,
                  data_dir: str | None, consistency_weight: float = 0.0) -> None:
    config = budget_config("ssl_student", n, seed)
    config.method.targets = str(targets_dir / targets.TARGETS)
    config.method.consistency_weight = consistency_weight
    config.batch_size = 2 * n  # 5 steps an epoch at 25 per class; 350 unlabelled images a step
    config.method.unlabeled_ratio = 350 // config.batch_size
    row_schedule(config, 10 * n)
    train_row(name, config, out, data_dir, out / "pretrain")


def student_rows(out: pathlib.Path, data_dir: str | None, grid) -> None:
    for n, seed in grid:
        train_student(f"student_{n}_{seed}", propagated(out, n, seed), n, seed, out, data_dir)


def teacher_targets(out: pathlib.Path, data_dir: str | None, n: int, seed: int, again: bool) -> pathlib.Path:
    """SimCLRv2's order: the probe + fine-tune row is the teacher (trained if missing); the
    budget's labels propagate over its features (if `again` or not yet done), recorded as
    propagate_teacher_N_SEED. The folder of the targets."""
    teacher, propagated_dir = out / f"finetune_{n}_{seed}", out / f"propagated_teacher_{n}_{seed}"
    if not (teacher / "summary.json").exists():
        transfer_rows("finetune", out, data_dir, [(n, seed)])
    if again or not (propagated_dir / targets.TARGETS).exists():
        started = time.time()
        report = propagate.propagate_run(teacher, propagated_dir, budget_config("ssl_student", n, seed), data_dir)
        record(f"propagate_teacher_{n}_{seed}", {**report, "wall_seconds": time.time() - started})
    return propagated_dir


def teacher_student_rows(out: pathlib.Path, data_dir: str | None, grid) -> None:
    """The student learns from the labels propagated over the fine-tuned teacher's features."""
    for n, seed in grid:
        train_student(f"teacher_student_{n}_{seed}", teacher_targets(out, data_dir, n, seed, again=True), n, seed,
                      out, data_dir)


# The consistency loss's weight: ssl_student's documented setting (FixMatch's lambda_u), not tuned.
CONSISTENCY_WEIGHT = 1.0


def consistency_rows(out: pathlib.Path, data_dir: str | None, grid) -> None:
    """The teacher's student with the consistency loss beside the propagated labels: its own
    prediction on a weak view, aligned to the labels' class prior and weighted by its
    confidence, as the target of the strong view (methods/self_training.py)."""
    for n, seed in grid:
        train_student(f"consistency_{n}_{seed}", teacher_targets(out, data_dir, n, seed, again=False), n, seed,
                      out, data_dir, consistency_weight=CONSISTENCY_WEIGHT)


# Epochs of a transfer row at 1 label per class, where a batch holds all 10 images: the
# epoch count of the 25- and 10-per-class rows (whose epochs hold 5 steps), not their
# ROW_STEPS, which would spend 750 evaluations on ten images.
TRANSFER_EPOCHS = 150


def finetune_schedule(config, way: str, epochs: int) -> None:
    """`epochs` of one stage from scratch, or a quarter probe and the rest fine-tune."""
    config.epochs = epochs
    frozen, finetune = dict(config.stages[0]), dict(config.stages[1])
    config.stages = (({"name": "train", "epochs": epochs},) if way == "scratch" else
                     ({**frozen, "epochs": epochs // 4}, {**finetune, "epochs": epochs - epochs // 4}))


def transfer_rows(way: str, out: pathlib.Path, data_dir: str | None, grid) -> None:
    for n, seed in grid:
        config = budget_config("ssl_finetune", n, seed)
        config.batch_size = 2 * n
        row_schedule(config, 10 * n)
        finetune_schedule(config, way, config.epochs)
        train_row(f"{way}_{n}_{seed}", config, out, data_dir, None if way == "scratch" else out / "pretrain")


PARTS = {"budget": budget, "pretrain": pretrain, "embedding": embedding, "propagate": propagate_rows, "select": select_rows,
         "student": student_rows, "teacher_student": teacher_student_rows, "consistency": consistency_rows,
         "finetune": lambda *args: transfer_rows("finetune", *args),
         "scratch": lambda *args: transfer_rows("scratch", *args), "select_finetune": select_finetune_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out_dir", default="runs/few_labels")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--labels_per_class", type=int, nargs="+", default=list(LABELS_PER_CLASS),
                        choices=list(LABELS_PER_CLASS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="label seeds")
    args = parser.parse_args()
    parallel.configure_compilation_cache()
    grid = [(n, seed) for seed in args.seeds for n in args.labels_per_class]  # seed-major: a whole seed first
    for part in args.parts:
        PARTS[part](pathlib.Path(args.out_dir), args.data_dir, grid)


if __name__ == "__main__":
    main()
