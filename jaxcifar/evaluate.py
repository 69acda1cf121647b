"""Evaluate a trained run in depth: `python -m jaxcifar.evaluate --workdir W`.

    python -m jaxcifar.evaluate --workdir runs/cnn --data_dir ../shared/tensorflow_datasets [--checkpoint latest] [--tta]

Writes to W/eval/SPLIT/ (or to --out DIR):
  report.json             accuracy, loss, per-class precision/recall/accuracy, the confusion
                          matrix (rows = true class, columns = predicted) and the most-confused pairs
  confusion_matrix.png    the confusion matrix as a heatmap with counts
  training_curves.png     loss and accuracy per epoch from metrics.jsonl, train vs eval, with a
                          dashed line where the run switched stage
  misclassified.png       the most confidently misclassified images with true/predicted labels

A self-supervised run (ssl_simclr, ssl_vicreg) has no classifier: its report.json holds the
kNN accuracy (k, cosine, temperature of its config, the train split as the labelled bank) and
the linear-probe accuracy (a softmax regression on frozen features of the whole train split,
ssl.linear_probe) of its backbone on the split.

One folder per split, so that evaluating another split (e.g. --split test_jpeg) keeps the
first one's report. SPLIT is the split name with every character other than a letter, digit,
'+', '-' or '_' replaced by '_', one for one so that different slices keep different folders
('test[:200]' -> test__200_, 'test[200:]' -> test_200__) and no name can leave eval/.

Every image of the split counts exactly once (the last batch is padded and masked, as in
training), and the logits come from `Run.logits`, the same computation as the training loop's
evaluation, and every metric from the evaluators training uses (jaxcifar/evaluators/). So
with the same checkpoint, split and TTA setting, the accuracy here is the one in
summary.json; what this adds is *where* the errors are.

The math (confusion matrix, per-class metrics, most-confused pairs) is in pure NumPy
functions; loading, plotting and writing files are kept at the edges.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

import jax

from jaxcifar import data as data_lib
from jaxcifar import batch_order, evaluators, methods, steps
from jaxcifar.evaluators.classification import log_softmax
from jaxcifar.evaluators.classification import metrics as classification_metrics
from jaxcifar.runs import Run, load_run

REPORT = "report.json"
PLOTS = ("confusion_matrix.png", "training_curves.png", "misclassified.png")
IN_MEMORY = "in-memory"  # the split name of an ArraySplit passed from Python without one


# ----- math (pure) -----
def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    return cm


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class support, precision, recall and one-vs-rest accuracy from a confusion matrix.

    recall is the accuracy *on that class's images*; `accuracy` is the binary "is it this
    class?" accuracy over all images, (TP + TN) / N. A class never predicted has precision
    0 and a class with no images has recall 0 (sklearn's zero_division=0), so that the
    report stays plain JSON numbers.
    """
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    total = cm.sum()
    true_negatives = total - support - predicted + tp
    return {
        "support": support,
        "precision": np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0),
        "recall": np.divide(tp, support, out=np.zeros_like(tp), where=support > 0),
        "accuracy": (tp + true_negatives) / total if total else np.zeros_like(tp),
    }


def most_confused_pairs(cm: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal cells as (true, predicted, count), largest first (ties in
    row-major order); cells with no errors are left out."""
    errors = cm.copy()
    np.fill_diagonal(errors, 0)
    order = np.argsort(-errors, axis=None, kind="stable")[:k]
    pairs = [(int(t), int(p), int(errors[t, p])) for t, p in zip(*np.unravel_index(order, cm.shape))]
    return [pair for pair in pairs if pair[2] > 0]


def stage_boundaries(history: list[dict]) -> list[tuple[float, str]]:
    """(x, new stage name) halfway between the last epoch of a stage and the first of the next."""
    return [(prev["epoch"] + 0.5, cur["stage"]) for prev, cur in itertools.pairwise(history)
            if cur["stage"] != prev["stage"]]


def build_report(labels: np.ndarray, logits: np.ndarray, class_names: tuple[str, ...], top_pairs: int = 5) -> dict:
    """The JSON report of one evaluation (no provenance; `evaluate_workdir` adds that)."""
    predictions = logits.argmax(axis=-1)
    cm = confusion_matrix(labels, predictions, len(class_names))
    metrics = per_class_metrics(cm)
    return {
        "num_examples": len(labels),
        **classification_metrics(logits, labels),
        "class_names": list(class_names),
        "per_class": [{"class": name, **{key: metrics[key][i].item() for key in metrics}}
                      for i, name in enumerate(class_names)],
        "confusion_matrix": cm.tolist(),
        "most_confused": [{"true": class_names[t], "predicted": class_names[p], "count": n}
                          for t, p, n in most_confused_pairs(cm, top_pairs)],
    }


# ----- inference -----
@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Logits of every example of a split, in split order, and the report built from them."""

    split: data_lib.ArraySplit
    logits: np.ndarray
    report: dict[str, Any]


def evaluate_run(run: Run, split: data_lib.ArraySplit, tta: bool | None = None,
                 batch_size: int | None = None, seen: Callable[[int], object] = lambda images: None) -> Evaluation:
    """Logits and report of `run` on an in-memory split (e.g. a synthetic one in tests).
    Fixed-size padded batches (batch_order.eval_batches), so the model compiles once.
    `seen` is told how many images each batch held once its logits are on the host (a
    progress bar's `update`)."""
    if not len(split):
        raise ValueError("The split to evaluate is empty.")
    tta = run.resolve_tta(tta)
    logits = run_logits(run, split, tta, batch_size, seen)
    report = build_report(split.labels, logits, run.class_names)
    report.update(tta=tta, checkpoint_step=run.step)
    return Evaluation(split, logits, report)


def run_logits(run: Run, split: data_lib.ArraySplit, tta: bool, batch_size: int | None = None,
               seen: Callable[[int], object] = lambda images: None) -> np.ndarray:
    """Logits of every image of `split`, in order (fixed-size padded batches); `seen` is
    told how many images each batch held once its logits are on the host."""
    chunks = []
    for batch in batch_order.eval_batches(split, batch_size or run.config.eval_batch_size):
        chunks.append(np.asarray(run.logits(batch["image"], tta=tta))[batch["mask"]])
        seen(len(chunks[-1]))
    return np.concatenate(chunks)


def backbone_features(run: Run, split: data_lib.ArraySplit, batch_size: int | None = None) -> np.ndarray:
    """Backbone features of every image of `split`, in order (fixed-size padded batches)."""
    features = jax.jit(steps.make_features(run.model, run.image_size, run.config.augment.normalization))
    return np.concatenate([np.asarray(features(run.variables, batch["image"]))[batch["mask"]]
                           for batch in batch_order.eval_batches(split, batch_size or run.config.eval_batch_size)])


@dataclasses.dataclass
class RunOutputs:
    """`evaluators.Outputs` of an opened run's weights, each split's computed once."""

    run: Run
    bank: data_lib.ArraySplit  # the kNN's bank and the probe's data: the run's train split
    tta: bool = False
    # (kind, id(split)) -> (split, its outputs)
    _computed: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    @property
    def config(self):
        return self.run.config

    @property
    def num_classes(self) -> int:
        return self.run.num_classes

    def _once(self, kind: str, split: data_lib.ArraySplit, compute) -> np.ndarray:
        # The split is kept beside its outputs so that its id cannot be reused by another one.
        key = (kind, id(split))
        if key not in self._computed:
            self._computed[key] = (split, compute())
        return self._computed[key][1]

    def features(self, split: data_lib.ArraySplit) -> np.ndarray:
        return self._once("features", split, lambda: backbone_features(self.run, split))

    def logits(self, split: data_lib.ArraySplit) -> np.ndarray:
        return self._once("logits", split, lambda: run_logits(self.run, split, self.tta))


def backbone_evaluators(run: Run) -> tuple[str, ...]:
    """What a self-supervised run is reported by: the evaluators that measured it each epoch,
    and the linear probe, which training leaves out because fitting it every epoch would
    cost more than the epoch."""
    return tuple(dict.fromkeys((*methods.info(run.config.objective).evaluators, "linear_probe")))


def self_supervised_report(workdir: str | pathlib.Path, train_split: data_lib.ArraySplit,
                           split: data_lib.ArraySplit, checkpoint: str | int = "best") -> dict:
    """The `backbone_evaluators` (kNN and linear-probe accuracy) on `split` of a
    self-supervised run's backbone, with `train_split` (its images and labels) as the kNN
    bank and the probe's training set."""
    run = load_run(workdir, checkpoint)
    if run.is_classifier:
        raise ValueError(f"{workdir} is a {run.config.objective} run, not a self-supervised one.")
    return {"objective": run.config.objective,
            **evaluators.evaluate(backbone_evaluators(run), RunOutputs(run, train_split), split),
            "num_examples": len(split), "train_examples": len(train_split), "knn_k": run.config.ssl.knn_k,
            "knn_temperature": run.config.ssl.knn_temperature, "checkpoint_step": run.step}


def default_split_name(run: Run) -> str:
    """The split a run is reported on: its test split, or its validation split if it has none."""
    return run.config.data.eval_split or data_lib.validation_split_name(run.config.data)


def load_eval_split(run: Run, split_name: str | None = None, data_dir: str | None = None) -> data_lib.ArraySplit:
    """A split of the run's source (TFDS or its image folder), by default `default_split_name`,
    restricted and relabelled to the run's class subset, as training did. The validation
    split (`TRAIN-validation`) is the part training held out of its train split."""
    d = run.config.data
    split_name = split_name or default_split_name(run)
    if split_name == data_lib.validation_split_name(d):
        validation = data_lib.split_train(d, data_lib.read_split(d, d.train_split, data_dir))[1]
        if validation is None:
            raise ValueError(f"The run in {run.workdir} held out no validation split (data.validation_fraction=0).")
        return validation
    return data_lib.read_split(d, split_name, data_dir)


# ----- plots (matplotlib's Figure API: the Agg canvas, no pyplot state or GUI backend) -----
def plot_confusion_matrix(cm: np.ndarray, class_names: tuple[str, ...], path: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    size = 1.0 + 0.6 * len(class_names)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2
    for (t, p), count in np.ndenumerate(cm):
        ax.text(p, t, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > threshold else "black")
    ax.set_title(f"Confusion matrix ({cm.sum()} images, accuracy {np.trace(cm) / max(cm.sum(), 1):.2%})")
    fig.savefig(path, dpi=100)


def plot_training_curves(history: list[dict], path: pathlib.Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label=f"train {metric}")
        ax.plot(epochs, [h[f"eval_{metric}"] for h in history], "s-", label=f"eval {metric}")
        boundaries = stage_boundaries(history)
        if boundaries:  # name the first stage too, at the left edge
            ax.text(0.0, 1.0, f" {history[0]['stage']}", transform=ax.transAxes, va="top", fontsize=8, color="grey")
        for x, stage in boundaries:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
            ax.text(x, 1.0, f" {stage}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if not history:
        fig.suptitle("no metrics.jsonl in this workdir: no per-epoch history to plot")
    fig.savefig(path, dpi=100)


def plot_misclassified(evaluation: Evaluation, class_names: tuple[str, ...], path: pathlib.Path,
                       max_images: int = 24) -> None:
    """The most confidently wrong predictions first: they show what the model has learned
    wrongly, where borderline errors mostly show ambiguous images."""
    from matplotlib.figure import Figure

    probabilities = np.exp(log_softmax(evaluation.logits.astype(np.float64)))
    predictions = probabilities.argmax(axis=-1)
    wrong = np.flatnonzero(predictions != evaluation.split.labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]], kind="stable")][:max_images]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig = Figure(figsize=(2 * cols, 2.3 * rows), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols)).reshape(-1)
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, wrong):
        ax.imshow(evaluation.split.images[i], interpolation="nearest")
        ax.set_title(f"true: {class_names[evaluation.split.labels[i]]}\n"
                     f"pred: {class_names[predictions[i]]} ({probabilities[i, predictions[i]]:.2f})", fontsize=8)
    if not len(wrong):
        axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(f"{len(wrong)} most confident of {int((predictions != evaluation.split.labels).sum())} "
                 "misclassified images")
    fig.savefig(path, dpi=100)


# ----- files -----
def read_history(workdir: pathlib.Path) -> list[dict]:
    """metrics.jsonl's per-epoch entries ([] for a run without one)."""
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def write_outputs(run: Run, evaluation: Evaluation, out_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """report.json and the three plots in `out_dir`; returns {file name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in (REPORT, *PLOTS)}
    plot_confusion_matrix(np.asarray(evaluation.report["confusion_matrix"]), run.class_names,
                          paths["confusion_matrix.png"])
    plot_training_curves(read_history(run.workdir), paths["training_curves.png"])
    plot_misclassified(evaluation, run.class_names, paths["misclassified.png"])
    paths[REPORT].write_text(json.dumps(evaluation.report, indent=2))
    return paths


def split_dir(workdir: pathlib.Path, split_name: str) -> pathlib.Path:
    """WORKDIR/eval/SPLIT, the default output folder of one split (see the module docstring)."""
    return workdir / "eval" / re.sub(r"[^A-Za-z0-9+_-]", "_", split_name)


def evaluate_workdir(workdir: str | pathlib.Path, checkpoint: str | int = "best", tta: bool | None = None,
                     split_name: str | None = None, data_dir: str | None = None,
                     split: data_lib.ArraySplit | None = None,
                     out: str | pathlib.Path | None = None,
                     train_split: data_lib.ArraySplit | None = None) -> tuple[dict, dict[str, pathlib.Path]]:
    """Library form of the CLI: evaluate one checkpoint of `workdir` on a TFDS split (or on
    an in-memory `split`, named `split_name` or 'in-memory'), write the report and plots to
    `out` (default WORKDIR/eval/SPLIT/); returns (report, {file name: path}). A
    self-supervised run's kNN bank and probe data are its own train split, read as training
    read it, or `train_split` when given."""
    run = load_run(workdir, checkpoint)
    if split is None:
        split_name = split_name or default_split_name(run)
        split = load_eval_split(run, split_name, data_dir)
    split_name = split_name or IN_MEMORY
    out_dir = split_dir(run.workdir, split_name) if out is None else pathlib.Path(out)
    if not run.is_classifier:
        # The run's own train split is its kNN bank and its probe's data.
        train_split = train_split or data_lib.load_data(run.config, data_dir).train
        report = self_supervised_report(workdir, train_split, split, checkpoint)
        report.update(workdir=str(run.workdir), checkpoint=checkpoint_label(run, checkpoint), split=split_name)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / REPORT).write_text(json.dumps(report, indent=2))
        return report, {REPORT: out_dir / REPORT}
    evaluation = evaluate_run(run, split, tta)
    evaluation.report.update(workdir=str(run.workdir), checkpoint=checkpoint_label(run, checkpoint), split=split_name)
    return evaluation.report, write_outputs(run, evaluation, out_dir)


def checkpoint_label(run: Run, which: str | int) -> str | int:
    """How a report names the weights it evaluated: 'best' only where the run selected on a
    validation split; a run that held none out has only its final weights."""
    return "final" if which == "best" and not run.config.data.validation_fraction else which


def summary_text(report: dict) -> str:
    if "knn_accuracy" in report:
        return (f"self-supervised ({report['objective']}) backbone on {report['num_examples']} {report['split']} "
                f"images: kNN accuracy {report['knn_accuracy']:.4f} (k={report['knn_k']}), linear probe "
                f"{report['linear_probe_accuracy']:.4f} (fitted on {report['train_examples']} train images); "
                f"checkpoint {report['checkpoint']} = step {report['checkpoint_step']}")
    per_class = sorted(report["per_class"], key=lambda c: c["recall"])
    lines = [
        (f"accuracy {report['accuracy']:.4f} (loss {report['loss']:.4f}) on {report['num_examples']} "
         f"{report['split']} images; checkpoint {report['checkpoint']} = step {report['checkpoint_step']}; "
         f"tta {'on' if report['tta'] else 'off'}"),
        "weakest classes (recall): " + ", ".join(f"{c['class']} {c['recall']:.2f}" for c in per_class[:3]),
        ("most confused (true -> predicted): "
         + (", ".join(f"{p['true']} -> {p['predicted']} {p['count']}" for p in report["most_confused"]) or "none")),
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # the command line lives in jaxcifar/cli/evaluate.py
    from jaxcifar.cli.evaluate import main

    sys.exit(main())
