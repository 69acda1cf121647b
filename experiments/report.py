"""Render the result tables of the docs from the committed JSON in experiments/results/.

Every table sits between `<!-- report:NAME -->` and `<!-- /report:NAME -->` in
experiments/README.md or README.md; NAME is one of the functions in BLOCKS. So a number in
those tables is always what its JSON says:

    python experiments/report.py           # rewrite the blocks
    python experiments/report.py --check   # exit 1 if a block differs from what the JSON gives
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
BENCHMARK_RESULTS = ROOT / "benchmarks" / "results"
DOCS = (ROOT / "experiments" / "README.md", ROOT / "README.md", ROOT / "benchmarks" / "NOTES.md")
BLOCK = re.compile(r"(<!-- report:(?P<name>\w+) -->\n)(?P<body>.*?)(<!-- /report:(?P=name) -->)", re.S)


# ----- formatting -----
def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def pct(x: float | None, digits: int = 1) -> str:
    return "not reached" if x is None else f"{100 * x:.{digits}f}%"


def mean_std(s: dict) -> str:
    """A {'mean', 'std', 'runs'} record; a single run has no spread to show."""
    return pct(s["mean"]) if len(s["runs"]) == 1 else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}%"


def secs(x: float | None) -> str:
    return "not reached" if x is None else f"{x:,.0f} s"


def kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


def num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def arrow(a: str, b: str) -> str:
    return f"{a} → {b}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)


def command(result: dict) -> str:
    """The JSON's `command`, runnable from the clone root; a free-text --note is shown apart."""
    cmd, _, note = result["command"].partition(" --note ")
    script = cmd.split()[1]
    if (ROOT / "experiments" / script).is_file():  # recorded from inside experiments/
        cmd = f"cd experiments && {cmd}"
    return f"`{cmd}`" + (f"\n\nNote recorded with it: {note}" if note else "")


def source(*names: str) -> str:
    """Where a block's numbers come from: command, JSON path, date, machine and load."""
    lines = []
    for name in names:
        r = load(name)
        m = r["machine"]
        load_avg = (f", load average {m['load_average_at_write'][0]} when written"
                    if "load_average_at_write" in m else "")
        lines.append(f"- `experiments/results/{name}.json` ({r['date']}, {m['cores']}-core {m['cpu']}"
                     f"{load_avg}), written by {command(r)}")
    return "\n".join(lines)


def curve_rows(columns: list[tuple[list[float], list[float]]]) -> list[list[str]]:
    """Per-epoch rows of 'accuracy at cumulative training seconds', one column per run; a run
    that stopped early leaves its later cells empty."""
    epochs = max(len(acc) for acc, _ in columns)
    return [[str(e + 1), *(f"{pct(acc[e])} at {secs(t[e])}" if e < len(acc) else "" for acc, t in columns)]
            for e in range(epochs)]


def mean_curve(runs: list[dict]) -> tuple[list[float], list[float]]:
    accs, times = (list(zip(*(r[key] for r in runs))) for key in ("test_accuracy", "cumulative_train_seconds"))
    return [statistics.mean(a) for a in accs], [statistics.mean(t) for t in times]


# ----- one function per block -----
def make_train() -> str:
    """README.md's headline: what `make train` gives."""
    r = load("simple_cnn")
    j, k = r["jaxcifar"], r["keras_seed_recipe"]
    return (f"`make train` reaches about **{pct(j['test_accuracy'])}** test accuracy after {j['epochs_completed']} "
            f"epochs, in about {secs(j['process_wall_seconds'])} on a {r['machine']['cores']}-core CPU; the tutorial's "
            "Keras recipe of the same CNN reaches "
            f"{pct(k['test_accuracy'])} in {secs(k['wall_seconds_including_eval'])} "
            f"([experiments/README.md](experiments/README.md#simple_cnn-make-train-against-the-keras-tutorial)).")


def recipes() -> str:
    """README.md's recipe table, with each recipe's measured result."""
    cnn, fast, muon, ssl = (load(n) for n in ("simple_cnn", "fast_cpu", "fast_muon_cpu", "ssl_label_efficiency"))
    link = "experiments/README.md#"
    rows = [
        ["`simple_cnn`", "the tutorial's small CNN (`make train`)",
         f"[{pct(cnn['jaxcifar']['test_accuracy'])} in {cnn['jaxcifar']['epochs_completed']} epochs]"
         f"({link}simple_cnn-make-train-against-the-keras-tutorial)"],
        ["`fast`", f"airbench94's network and recipe, {fast['runs'][0]['epochs_done']} epochs",
         f"[{pct(fast['means']['final_accuracy_tta']['mean'])} with TTA, mean of "
         f"{len(fast['runs'])} seeds]({link}fast-and-fast_muon-against-airbench)"],
        ["`fast_muon`", f"airbench94_muon's recipe (Muon optimizer), {muon['runs'][0]['epochs_done']} epochs",
         f"[{pct(muon['means']['final_accuracy_tta']['mean'], 2)} with TTA, mean of "
         f"{len(muon['runs'])} seeds]({link}fast-and-fast_muon-against-airbench)"],
        ["`resnet18`", "CIFAR ResNet-18, SGD-Nesterov, cosine", "not run to completion on CPU"],
        ["`resnet50_transfer`", "ImageNet ResNet-50: frozen stage, then fine-tune", "needs pretrained weights"],
        ["`ssl_simclr`", "SimCLR self-supervised pretraining (no labels)",
         f"[kNN {pct(ssl['pretraining']['knn_accuracy_per_epoch'][-1])} after "
         f"{ssl['pretraining']['epochs']} epochs]({link}self-supervised-pretraining-then-few-labels)"],
        ["`ssl_vicreg`", "VICReg self-supervised pretraining (no labels)", "not run at full scale"],
        ["`ssl_finetune`", "linear probe, then fine-tune, of a pretrained backbone",
         f"[{mean_std(ssl['labels_per_class']['25']['finetune'])} from 25 labels per class, on a backbone epoch "
         "chosen on `test`]"
         f"({link}self-supervised-pretraining-then-few-labels)"],
        *_few_label_recipe_rows(link + "few-labels-many-crop-pretraining-propagation-a-self-trained-student"),
    ]
    return table(["recipe", "what it trains", "measured on a 2-core CPU"], rows)


def _few_label_recipe_rows(link: str) -> list[list[str]]:
    """The recipe table's rows of the few-label pipeline, as far as few_labels.json has them."""
    parts = load("few_labels")["parts"] if (RESULTS / "few_labels.json").exists() else {}
    pretrain = parts.get("pretrain")
    return [["`ssl_multicrop`", "many-crop self-supervised pretraining (no labels; EMP-SSL's loss)",
             f"[kNN {pct(pretrain['test_knn_accuracy'])} after {pretrain['epochs']} epochs, "
             f"{pretrain['train_seconds'] / 60:.0f} min]({link})" if pretrain else "pending"],
            ["`ssl_student`", "a student on few labels and every propagated one, from a pretrained backbone",
             f"[{_seed_cell(parts, 'teacher_student_25')} from 25 labels per class, propagated over a fine-tuned "
             f"teacher's features]({link})"]]


def simple_cnn() -> str:
    r = load("simple_cnn")
    j, k = r["jaxcifar"], r["keras_seed_recipe"]
    rows = [[f"jaxcifar `simple_cnn`, {j['epochs_completed']} epochs", pct(j["test_accuracy"]),
             f"{secs(j['wall_seconds'])} in the run, {secs(j['process_wall_seconds'])} for the whole process",
             num(j["train_images_per_second"])],
            [f"the tutorial's Keras recipe, {len(k['test_accuracy_per_epoch'])} epochs", pct(k["test_accuracy"])
             + f" (best epoch {pct(max(k['test_accuracy_per_epoch']))})",
             f"{secs(k['wall_seconds_including_eval'])} (`fit` with per-epoch evaluation)",
             num(k["train_images_per_second_incl_eval"]) + " (with evaluation)"]]
    ratio = r["wall_ratio_to_keras"]
    return "\n\n".join([
        table(["", "`test` accuracy", "wall time", "train images/s"], rows),
        f"jaxcifar is {100 * r['accuracy_margin_over_keras']:.1f} points more accurate in {ratio['run']:.2f}× "
        f"Keras's wall time ({ratio['whole_process']:.2f}× counting its whole process).",
        source("simple_cnn")])


def fast_cpu() -> str:
    fast, anchors = load("fast_cpu"), [load("airbench_cpu"), load("airbench_cpu_seed1")]
    seeds = " ".join(str(r["seed"]) for r in fast["runs"])
    columns = [(a["test_accuracy"], a["cumulative_train_seconds"]) for a in anchors] + [mean_curve(fast["runs"])]
    header = ["epoch", *(f"airbench94 seed {a['seed']}" for a in anchors), f"jaxcifar `fast`, mean of seeds {seeds}"]
    means = fast["means"]
    summary = [[f"airbench94 seed {a['seed']}", secs(a["seconds_to_85"]), secs(a["seconds_to_94"]),
                pct(a["final_accuracy"]), pct(a["final_accuracy_tta"]), num(a["train_images_per_second"])]
               for a in anchors]
    summary.append([f"jaxcifar `fast`, mean of seeds {seeds}", secs(means["seconds_to_85"]["mean"]),
                    f"{secs(means['seconds_to_94']['mean'])} ({means['seeds_reaching_94']} of {len(fast['runs'])} "
                    "seeds reach it)", pct(means["final_accuracy"]["mean"], 2),
                    pct(means["final_accuracy_tta"]["mean"], 2),
                    num(statistics.mean(r["train_images_per_second"] for r in fast["runs"]))])
    return "\n\n".join([
        table(header, curve_rows(columns)),
        table(["", "time to 85%", "time to 94%", "final", "final, flip+translate TTA", "train images/s"], summary),
        source("fast_cpu", "airbench_cpu", "airbench_cpu_seed1")])


def fast_muon() -> str:
    muon, anchor = load("fast_muon_cpu"), load("airbench94_muon_cpu")
    seed0 = muon["runs"][0]
    rows = curve_rows([(anchor["test_accuracy"], anchor["cumulative_train_seconds"]),
                       (seed0["test_accuracy"], seed0["cumulative_train_seconds"])])
    rows.append(["final, flip+translate TTA",
                 f"**{pct(anchor['final_accuracy_tta'])} at {secs(anchor['seconds_to_94'])}**",
                 f"**{pct(seed0['final_accuracy_tta'])} at {secs(seed0['seconds_to_94'])}**"])
    seeds = [[str(r["seed"]), pct(r["final_accuracy"]), pct(r["final_accuracy_tta"]), secs(r["seconds_to_94"]),
              secs(statistics.mean(r["epoch_train_seconds"]))] for r in muon["runs"]]
    return "\n\n".join([
        table(["epoch", f"airbench94_muon seed {anchor['seed']}", f"jaxcifar `fast_muon` seed {seed0['seed']}"], rows),
        f"Same sitting: `fast_muon` reaches 94% at {seed0['seconds_to_94'] / anchor['seconds_to_94']:.3f}× the "
        "record's training time.",
        table(["seed", "final", "final, TTA", "time to 94% with TTA", "mean epoch"], seeds),
        f"Mean over seeds: {pct(muon['means']['final_accuracy_tta']['mean'], 2)} with TTA; "
        f"{muon['means']['seeds_reaching_94']} of {len(muon['runs'])} seeds reach 94%, "
        f"at {secs(muon['means']['seconds_to_94']['mean'])} on average.",
        source("fast_muon_cpu", "airbench94_muon_cpu")])


def fast_muon_sitting2() -> str:
    muon, anchor = load("fast_muon_cpu_sitting2"), load("airbench94_muon_cpu_sitting2")
    run = muon["runs"][0]
    rows = curve_rows([(anchor["test_accuracy"], anchor["cumulative_train_seconds"]),
                       (run["test_accuracy"], run["cumulative_train_seconds"])])
    rows.append(["final, flip+translate TTA", f"{pct(anchor['final_accuracy_tta'])} at "
                 f"{secs(anchor['final_seconds_with_tta'])}", "stopped" if not run["complete"] else ""])
    return "\n\n".join([
        table(["epoch", f"airbench94_muon seed {anchor['seed']}", f"jaxcifar `fast_muon` seed {run['seed']}"], rows),
        source("airbench94_muon_cpu_sitting2", "fast_muon_cpu_sitting2")])


def split_cifar_transfer() -> str:
    r = load("split_cifar_transfer")
    rows = [[label, mean_std(r[f"{key}_acc"]), mean_std(r[f"{key}_acc_test_jpeg"])]
            for label, key in (("scratch (same network, random init)", "scratch"),
                               ("frozen backbone + new head", "frozen"),
                               ("frozen, then fine-tune everything", "finetune"))]
    pre, tr = r["pretrain"], r["transfer"]
    return "\n\n".join([
        f"Pretrained on classes {pre['classes']} ({pre['epochs']} epochs, "
        f"{pct(pre['test_accuracy_classes_0_4'])} on their test images); then classes {tr['classes']} from "
        f"{tr['examples_per_class']} labelled images per class, {tr['epochs']} epochs, seeds {tr['seeds']}. "
        f"Network: {r['network']}. Evaluated on {r['eval']}.",
        table(["", "`test`", "`test_jpeg`"], rows),
        source("split_cifar_transfer")])


def ssl_label_efficiency() -> str:
    r = load("ssl_label_efficiency")
    pre = r["pretraining"]
    knn = pre["knn_accuracy_per_epoch"]
    selected = knn.index(max(knn)) + 1
    few = [[f"{n} ({plural(len(m['scratch']['runs']), 'seed')}, {r['budget_epochs'][n]} epochs)",
            *(mean_std(m[method]) for method in ("scratch", "probe", "finetune"))]
           for n, m in r["labels_per_class"].items()]
    return "\n\n".join([
        f"`{r['method']}` pretrained {pre['epochs']} epochs on all the training images, labels unread "
        f"({secs(pre['train_seconds'])} of training). kNN accuracy on `test` after each epoch:",
        table(["epoch", *map(str, range(1, len(knn) + 1))], [["kNN", *(pct(a) for a in knn)]]),
        f"**Result: kNN {pct(knn[-1])} after the final epoch.** The recorded run kept epoch {selected} of "
        f"{pre['epochs']} as its best checkpoint, chosen by this kNN on `test` ({pct(pre['test_knn_accuracy'])}); "
        f"the linear probe with all labels ({pct(pre['test_linear_probe_accuracy_all_labels'])}) and every "
        "fine-tune below started from that test-selected epoch. The package no longer selects on `test`; "
        "a clean figure needs the command re-run.",
        table(["labels per class", "scratch (same network)", "linear probe on the SSL backbone",
               "probe, then fine-tune"], few),
        source("ssl_label_efficiency")])


FEW_LABEL_WAYS = (("scratch", "scratch (same network)"), ("finetune", "SSL probe, then fine-tune"),
                  ("propagate", "label propagation alone"), ("student", "self-trained student"),
                  ("teacher_student", "student of the fine-tuned teacher"),
                  ("consistency", "the teacher's student + consistency"))
# The parts a way's minutes add up: a student's include the propagation it learns from, and
# the teacher's student also the fine-tune (the teacher) whose features it propagates over.
FEW_LABEL_MINUTES = {"student": ("propagate", "student"),
                     "teacher_student": ("finetune", "propagate_teacher", "teacher_student"),
                     "consistency": ("finetune", "propagate_teacher", "consistency")}


def _seed_cell(parts: dict, prefix: str, key: str = "test_accuracy", seeds: int = 3) -> str:
    """Mean ± std over the seeds recorded as PREFIX_SEED, with how many; 'pending' if none."""
    values = [parts[f"{prefix}_{seed}"][key] for seed in range(seeds) if f"{prefix}_{seed}" in parts]
    if not values:
        return "pending"
    spread = f" ± {100 * statistics.pstdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.mean(values):.1f}{spread}% ({plural(len(values), 'seed')})"


FEW_LABEL_TARGETS = {25: 0.70, 10: 0.60}  # the targets on `test`, mean of 3 seeds


def _minutes_cell(parts: dict, way: str, n: int, seeds: int = 3) -> str:
    """Mean minutes of `way` at `n` labels per class over the seeds it has, each the sum of
    its parts' training (or, for a propagation, wall) minutes; 'pending' if none."""
    def seconds(part: dict) -> float:
        return part.get("train_seconds", part.get("wall_seconds"))

    names = FEW_LABEL_MINUTES.get(way, (way,))
    done = [seed for seed in range(seeds) if all(f"{name}_{n}_{seed}" in parts for name in names)]
    if not done:
        return "pending"
    minutes = statistics.mean(sum(seconds(parts[f"{name}_{n}_{seed}"]) for name in names) for seed in done) / 60
    # A 2-core machine's minutes stretch with whatever else ran: the highest 1-minute load
    # average recorded at the end of the row's own training (its last part) says how far.
    load = max(parts[f"{names[-1]}_{n}_{seed}"]["load_average"][0] for seed in done)
    return f"{minutes:.0f} min" + (f" (load up to {load:.1f})" if load > LOADED else "")


LOADED = 2.5  # a load average above the 2 cores' worth: the minutes beside it are stretched


def _budget_verdicts(parts: dict) -> str:
    """The best method's mean at each label budget against its target."""
    lines = []
    for n, target in FEW_LABEL_TARGETS.items():
        values = {name: found for way, name in FEW_LABEL_WAYS
                  if (found := [parts[f"{way}_{n}_{s}"]["test_accuracy"] for s in range(3) if f"{way}_{n}_{s}" in parts])}
        if not values:
            continue
        best = max(values, key=lambda name: statistics.mean(values[name]))
        mean, seeds = statistics.mean(values[best]), len(values[best])
        verdict = "reached" if mean >= target else "missed"
        lines.append(f"**{n} labels per class: the best so far is the {best}, {pct(mean)} ({seeds} seed"
                     f"{'s' if seeds > 1 else ''}); the {pct(target, 0)} target is {verdict}.**")
    return " ".join(lines)


def few_labels() -> str:
    if not (RESULTS / "few_labels.json").exists():
        return "Every part pending: `python experiments/few_labels.py --data_dir ../shared/tensorflow_datasets`."
    parts = load("few_labels")["parts"]
    out = []
    if "budget" in parts:
        b = parts["budget"]
        out.append(f"A `fast` epoch took {b['fast_epoch_seconds']:.0f} s here (150 s in the issue's budget), so the "
                   f"budgets scale to {b['pretrain_budget_minutes']:.0f} minutes of pretraining and "
                   f"{b['row_budget_minutes']:.0f} per row.")
    if "pretrain" in parts:
        r, simclr = parts["pretrain"], load("ssl_label_efficiency")["pretraining"]
        mine = list(zip(r["knn_accuracy_per_epoch"], _cumulative(r["train_seconds_per_epoch"])))
        theirs = list(zip(simclr["knn_accuracy_per_epoch"], _cumulative(simclr["train_seconds_per_epoch"])))
        rows = [[str(e + 1), *(f"{pct(c[e][0])} at {c[e][1] / 60:.0f} min" if e < len(c) else "" for c in (mine, theirs))]
                for e in range(max(len(mine), len(theirs)))]
        target = "reached" if r["test_knn_accuracy"] >= 0.8 else "missed"
        out += [f"`{r['recipe']}` ({r['method']['crops']} crops of {r['method']['crop_size']} px per image, widths "
                f"{tuple(r['model_kwargs']['widths'])}) pretrained {r['epochs']} epochs, labels unread: kNN on `test` "
                "after each epoch and the cumulative training minutes, beside the recorded SimCLR run:", "",
                table(["epoch", r["recipe"], "ssl_simclr (recorded)"], rows), "",
                f"**kNN {pct(r['test_knn_accuracy'])} after {r['train_seconds'] / 60:.0f} minutes of training: the "
                f"80% target is {target}.** Linear probe with every label: "
                f"{pct(r['test_linear_probe_accuracy_all_labels'])}. The last epoch took "
                f"{r['train_seconds_per_epoch'][-1] / 60:.0f} minutes."]
    else:
        out.append("Pretraining: pending.")
    if "embedding" in parts:
        e = parts["embedding"]
        whole, with_crops = e["knn_accuracy"].values()
        error = (0.25 / e["held_out_images"]) ** 0.5  # a proportion's largest standard error
        verdict = ("helps beyond two sampling errors" if with_crops - whole > 2 * error else
                   "does not help beyond two sampling errors, so evaluation embeds the whole image alone")
        out += ["", f"Embedding each image as the mean of the whole image and five {e['crop_size']} px crops (the "
                "scale the backbone was pretrained at), against the whole image alone, kNN on "
                f"{e['held_out_images']:,} held-out training images: "
                + ", ".join(f"{name} {pct(a)}" for name, a in e["knn_accuracy"].items())
                + f" (a sampling error is at most {100 * error:.1f} points): the mean of crops {verdict}."]
    rows = [[f"{n}", *(_seed_cell(parts, f"{way}_{n}") for way, _ in FEW_LABEL_WAYS)] for n in (25, 10)]
    out += ["", "Accuracy on `test` (mean ± std over label seeds; the same images for every method at a seed):", "",
            table(["labels per class", *(name for _, name in FEW_LABEL_WAYS)], rows), "",
            _budget_verdicts(parts), "", "Minutes of each row here (mean over its seeds; a student's include the propagation it learns from, and "
            "the teacher's student also its teacher's fine-tune):", "",
            table(["labels per class", *(name for _, name in FEW_LABEL_WAYS)],
                  [[f"{n}", *(_minutes_cell(parts, way, n) for way, _ in FEW_LABEL_WAYS)] for n in (25, 10)]), "",
            _selection_lines(parts), "",
            source("few_labels"), *sorted({f"- parts written by `{part['command']}`" for part in parts.values()
                                           if "command" in part})]
    return "\n".join(out)


def _selection_verdict(parts: dict, prefix: str) -> str:
    """The gap of chosen over random labels (parts PREFIX_typiclust_SEED and PREFIX_random_SEED)
    against the issue's target of 15 points, once all seeds are in."""
    pairs = [(parts[f"{prefix}_typiclust_{s}"], parts[f"{prefix}_random_{s}"]) for s in range(3)
             if f"{prefix}_typiclust_{s}" in parts and f"{prefix}_random_{s}" in parts]
    if len(pairs) < 3:
        return ""
    gap = statistics.mean(chosen["test_accuracy"] - drawn["test_accuracy"] for chosen, drawn in pairs)
    return f" **A gap of {100 * gap:.1f} points: the 15-point target is {'reached' if gap >= 0.15 else 'missed'}.**"


def _selection_lines(parts: dict) -> str:
    covered = [parts[f"select_typiclust_{s}"]["classes_covered"] for s in range(3) if f"select_typiclust_{s}" in parts]
    coverage = (f" TypiClust's 10 images covered {statistics.mean(covered):.1f} of the 10 classes on average (a "
                "class without a label is never predicted by propagation)." if covered else "")
    return "\n".join([
        "1 label per class (10 labels), TypiClust's choice against a random draw of one per class, on `test`:", "",
        f"- through label propagation: {_seed_cell(parts, 'select_typiclust')} against "
        f"{_seed_cell(parts, 'select_random')}." + _selection_verdict(parts, "select") + coverage,
        f"- through probe + fine-tune: {_seed_cell(parts, 'select_finetune_typiclust')} against "
        f"{_seed_cell(parts, 'select_finetune_random')}." + _selection_verdict(parts, "select_finetune")])


def _cumulative(values: list[float]) -> list[float]:
    return [sum(values[:i + 1]) for i in range(len(values))]


PEFT_BUDGET = 0.05  # the "under 5% of the parameters"


def _peft_label(row: str) -> str:
    """'lora_r4_norms' -> 'lora, rank 4 + biases & BatchNorm'; other rows as they are."""
    match = re.fullmatch(r"lora_r(\d+)(_norms)?", row)
    if not match:
        return row
    return f"lora, rank {match[1]}" + (" + biases & BatchNorm" if match[2] else "")


def _peft_rows(part: dict, jpeg: bool, tuned: bool) -> list[list[str]]:
    rows = []
    for mode, m in part["modes"].items():
        lr = [f"{m['lr']:g}" + (" (grid edge)" if m["chosen_at_edge"] else "")] if tuned else []
        if "test_accuracy" not in m:  # every seed diverged
            rows.append([_peft_label(mode), *lr, "diverged", *([""] * (4 + jpeg))])
            continue
        share = f"{num(m['trainable_parameters'])} ({pct(m['trainable_fraction'], 2)} of {num(m['parameters'])})"
        rows.append([_peft_label(mode), *lr, mean_std(m["test_accuracy"]),
                     *([mean_std(m["test_jpeg_accuracy"])] if jpeg else []), share, kib(m["saved_bytes"]),
                     num(m["seconds_per_epoch"]["mean"], 1)])
    return rows


def _peft_sweep_rows(part: dict) -> list[list[str]]:
    """Per mode, phase 1's validation accuracy at each rate it tried, the chosen one in bold
    (one cell: an extended grid tries more rates than another)."""
    rows = []
    for mode, m in part["modes"].items():
        cells = []
        for lr in m["lr_grid"]:
            run = m["lr_sweep"][f"{lr:g}"]
            cell = f"diverged at {lr:g}" if run.get("val_accuracy") is None else f"{pct(run['val_accuracy'])} at {lr:g}"
            cells.append(f"**{cell}**" if lr == m["lr"] else cell)
        rows.append([_peft_label(mode), ", ".join(cells)])
    return rows


def _peft_gap(part: dict) -> str:
    """The best mode under PEFT_BUDGET of the parameters against full fine-tuning, from the numbers."""
    modes = {mode: m for mode, m in part["modes"].items() if "test_accuracy" in m}
    small = {mode: m for mode, m in modes.items() if m["trainable_fraction"] < PEFT_BUDGET}
    if "full" not in modes or not small:
        return f"No mode under {pct(PEFT_BUDGET, 0)} of the parameters to set against full fine-tuning."
    best = max(small, key=lambda mode: small[mode]["test_accuracy"]["mean"])
    b, full = small[best], modes["full"]
    gap = 100 * (full["test_accuracy"]["mean"] - b["test_accuracy"]["mean"])
    return (f"Best mode under {pct(PEFT_BUDGET, 0)} of the parameters: {_peft_label(best)} "
            f"({pct(b['trainable_fraction'], 2)}), {mean_std(b['test_accuracy'])} on `test` against full "
            f"fine-tuning's {mean_std(full['test_accuracy'])}: {abs(gap):.1f} points "
            f"{'behind' if gap > 0 else 'ahead'} (mean of {len(b['test_accuracy']['runs'])} seeds; the target is "
            "within 2 points).")


def _peft_part(part: dict, title: str, jpeg: bool, sweep: dict | None) -> list[str]:
    tuned = sweep is not None
    tail = ["trained in stage 2", "saved", "s/epoch, stage 2"]
    out = [f"{title}; seeds {part['seeds']}):",
           table(["mode", *(["lr, stage 2"] if tuned else []), "`test`", *(["`test_jpeg`"] if jpeg else []), *tail],
                 _peft_rows(part, jpeg, tuned))]
    if tuned:
        examples = next(iter(next(iter(part["modes"].values()))["lr_sweep"].values())).get("validation_examples")
        out += [f"Learning rate of stage 2, chosen on the validation accuracy of the final weights ({examples} "
                "images held out of the labelled ones, seed " f"{sweep['seed']}; ties to the smaller rate), "
                f"at {', '.join(f'×{m:.3g}' for m in sweep['multiples'])} the mode's untuned rate"
                + (f", then {sweep['extended']}" if "extended" in sweep else "") + ":",
                table(["mode", "validation accuracy at each rate tried"], _peft_sweep_rows(part))]
    return [*out, _peft_gap(part)]


def efficient_finetune() -> str:
    r = load("efficient_finetune")
    sweep = r.get("lr_sweep")  # absent from the untuned comparison, recorded before the sweep
    out = []
    split, ssl = r["split_cifar"], r["ssl"]
    if split:
        out += _peft_part(split, f"Split-CIFAR ({split['network']}, {split['eval']}", True, sweep)
    if ssl and ssl["modes"]:
        out += _peft_part(ssl, f"SimCLR backbone ({ssl['network']}, {ssl['labels_per_class']} labels per class, "
                               f"{ssl['eval']}", False, sweep)
    out += [f"Not run: {task}, {why}." for task, why in r.get("skipped", {}).items()]
    return "\n\n".join([*out, f"LoRA alpha {r['lora']['alpha']}.", source("efficient_finetune")])


def compress_models() -> str:
    r = load("compress_models")
    rows = []
    for name, m in r["models"].items():
        lat = m["latency"]
        jpeg = m.get("test_jpeg")
        rows.append([name + (" (TTA)" if m["tta"] else ""),
                     arrow(pct(m["test"]["float32_accuracy"]), pct(m["test"]["int8_accuracy"])),
                     arrow(pct(jpeg["float32_accuracy"]), pct(jpeg["int8_accuracy"])) if jpeg else "not measured",
                     f"{arrow(kib(m['bytes']['float32']), kib(m['bytes']['int8']))} "
                     f"({m['bytes']['float32'] / m['bytes']['int8']:.1f}×)",
                     arrow(*(f"{1000 * lat[k]['batch_1']['median_seconds']:.1f} ms" for k in ("float32", "int8"))),
                     arrow(*(f"{num(lat[k]['batch_256']['images_per_second'])} img/s" for k in ("float32", "int8")))])
    pruned = []
    for name, levels in r["pruned"].items():
        base = r["models"][name]
        pruned.append([name, "0 (the run)", pct(base["test"]["float32_accuracy"]),
                       pct(base["test_jpeg"]["float32_accuracy"]) if "test_jpeg" in base else "not measured",
                       kib(base["float32_export_gzip_bytes"])])
        pruned += [["", pct(p["sparsity"], 0), pct(p["test_accuracy"]), pct(p["test_jpeg_accuracy"]),
                    kib(p["export_gzip_bytes"])] for p in levels]
    return "\n\n".join([
        table(["model", "`test` float32 → int8", "`test_jpeg` float32 → int8", "export size", "batch 1",
               "batch 256"], rows),
        "Global magnitude pruning (fine-tuned from each model; final weights):",
        table(["model", "sparsity", "`test`", "`test_jpeg`", "float32 export, gzip"], pruned),
        source("compress_models")])


def litert_int8() -> str:
    """int8 on a CPU runtime with int8 kernels: LiteRT against the XLA exports, per model, as
    `python -m jaxcifar.quantize` prints it (one formatter for both)."""
    from jaxcifar.quantize_report import tradeoff_table

    r = load("litert_int8")
    return "\n\n".join([*(f"`{name}`:\n\n{tradeoff_table(m)}" for name, m in r["models"].items()),
                         *(litert_rounds(name, r["models"][name], rounds, r["instruction_sets"])
                           for name, rounds in r.get("rounds", {}).items()),
                         source("litert_int8")])


def litert_rounds(name: str, report: dict, rounds: dict, instruction_sets: dict[str, bool]) -> str:
    """Each model's speed in every round of the rotated timing and the median, with the
    speed-ups as ratios of medians, the load averages and the CPU's instruction sets."""
    from jaxcifar.quantize_report import timed_name

    taken, medians = rounds["rounds"], rounds["median_images_per_second"]
    base = medians["float32"]
    rows = []
    for timed, median in medians.items():
        one = [1000 / t["latency"][timed]["batch_1"]["images_per_second"] for t in taken]
        many = [t["latency"][timed]["batch_256"]["images_per_second"] for t in taken if "batch_256" in t["latency"][timed]]
        rows.append([timed_name(timed, report["artefacts"]), " / ".join(f"{ms:.2f}" for ms in one),
                     f"{1000 / median['batch_1']:.2f} ms",
                     " / ".join(f"{x:,.0f}" for x in many) or "-",
                     f"{median['batch_256']:,.0f} img/s" if "batch_256" in median else "-",
                     " / ".join(f"{median[b] / base[b]:.2f}x" if b in median else "-" for b in ("batch_1", "batch_256"))])
    loads = ", ".join(f"{t['load_average_before'][0]} → {t['load_average_after'][0]}" for t in taken)
    cpu = ", ".join(f"{s.upper()} {'yes' if has else 'no'}" for s, has in instruction_sets.items())
    return "\n\n".join([
        f"`{name}`, timed again in {len(taken)} rounds, the order rotated each round (load average before → after "
        f"each round: {loads}; CPU: {cpu}):",
        table(["model", "batch 1, each round (ms)", "batch 1, median", "batch 256, each round (img/s)",
               "batch 256, median", "speed vs float32, medians (1 / 256)"], rows)])


def benchmark_source(name: str, r: dict, load_at_end: float) -> str:
    """Where a benchmark block's numbers come from (benchmarks/harness.py's `machine` record)."""
    m = r["machine"]
    return (f"- `benchmarks/results/{name}.json` ({m['date'][:10]}, {m['cores']}-core {m['cpu']}, load average "
            f"{m['loadavg_at_start'][0]:.2f} at the start and {load_at_end:.2f} at the end), written by "
            f"`{m['command']}`")


def serve_load_litert() -> str:
    """The float32 StableHLO export and the LiteRT int8 model served side by side under load
    (benchmarks/serve_load.py): medians and each repetition."""
    r = json.loads((BENCHMARK_RESULTS / "serve_load_litert.json").read_text())
    rows = [[row["server"], row["concurrency"], f"{row['throughput_rps']:,.0f}",
             " / ".join(f"{rep['throughput_rps']:,.0f}" for rep in row["reps"]), f"{row['p50_ms']:.1f}",
             f"{row['p99_ms']:.1f}", row["errors"], f"{row['mean_batch_size']:.1f}"] for row in r["rows"]]
    return "\n\n".join([
        table(["server", "clients", "requests/s", "each repetition", "p50 ms", "p99 ms", "errors", "mean batch"], rows),
        benchmark_source("serve_load_litert", r, r["loadavg_at_end"][0])])


def cpu_split_quiet() -> str:
    """The device split in the real loop (benchmarks/cpu_split.py), alone on the machine: per
    recipe and variant, each round's last-epoch images/s with the load before it, the median,
    and the ratio of medians to one device."""
    r = json.loads((BENCHMARK_RESULTS / "cpu_split_quiet.json").read_text())
    blocks = []
    for recipe, variants in r["loop"].items():
        medians = {name: statistics.median([run["last_epoch_images_per_second"] for run in runs if not run["returncode"]])
                   for name, runs in variants.items()}
        rows = [[name, " / ".join(f"{run['last_epoch_images_per_second']:,.0f} ({run['load_before'][0]})"
                                  if not run["returncode"] else f"failed (exit {run['returncode']})" for run in runs),
                 f"{medians[name]:,.0f}", f"{medians[name] / medians['1 device']:.2f}×",
                 " / ".join(pct(run["test_accuracy"]) for run in runs if not run["returncode"])]
                for name, runs in variants.items()]
        blocks.append(f"`{recipe}` ({' '.join(f'`{o}`' for o in r['recipes'][recipe])}):\n\n" + table(
            ["variant", "last epoch img/s, each round (load before)", "median", "vs 1 device", "test accuracy"], rows))
    return "\n\n".join([*blocks, benchmark_source("cpu_split_quiet", r, r["load_at_save"][0])])


def calibration_size() -> str:
    """int8 accuracy (agreement with float32) against the number of calibration images, on the
    split that names the knee and on `test` beside it, with each calibration's seconds."""
    from jaxcifar.quantize import ARTEFACTS
    from jaxcifar.quantize_report import accuracy_cell

    r = load("calibration_size")
    labels, splits = list(r["knee"]), list(r["examples"])
    header = ["calibration images", *(f"{ARTEFACTS[label]}, {split}" for label in labels for split in splits),
              *(f"{ARTEFACTS[label]}, seconds to make" for label in labels)]
    rows = [[num(int(n)), *(accuracy_cell(row[split], label) for label in labels for split in splits),
             *(secs(row["seconds"][label]) for label in labels)] for n, row in r["sizes"].items()]
    largest = max(r["sizes"], key=int)
    float32 = ", ".join(f"{pct(r['sizes'][largest][split]['float32_accuracy'], 2)} on {split}" for split in splits)
    knees = "; ".join(f"{ARTEFACTS[label]}: **{plural(n, 'image')}**" for label, n in r["knee"].items())
    return "\n\n".join([
        table(header, rows),
        f"float32: {float32}. The knee, the fewest calibration images within {100 * r['tolerance']:.1f} points of "
        f"{num(int(largest))} images' accuracy on {r['selection_split']} (the other splits are for the record and "
        f"do not steer it): {knees}.",
        source("calibration_size")])


def channel_pruning() -> str:
    r = load("channel_pruning")
    fractions = r["fractions"]
    control = fractions["0.0"]["latency"]["batch_256"]["images_per_second"]
    rows = [[pct(float(f), 0), num(m["parameters"]), pct(m["test_accuracy"]), pct(m["test_jpeg_accuracy"]),
             f"{num(m['latency']['batch_256']['images_per_second'])} img/s",
             f"{m['latency']['batch_256']['images_per_second'] / control:.1f}×"] for f, m in fractions.items()]
    return "\n\n".join([
        f"Fine-tuned {r['epochs']} epochs at lr {r['lr']} from the same base; 0% is the control. {r['eval']}.",
        table(["block channels removed", "parameters", "`test`", "`test_jpeg`", "batch 256", "speed-up"], rows),
        source("channel_pruning")])


def image_folder_run() -> str:
    r = load("image_folder_run")
    f = r["folder"]
    rows = [["image files, trained from the shell", pct(r["test_accuracy"])],
            ["the same images read from TFDS", pct(r["baseline_same_images_from_tfds_test_accuracy"])]]
    return "\n\n".join([
        f"{num(f['train_images'])} train and {num(f['test_images'])} test files ({f['source']}); "
        f"`simple_cnn`, {r['epochs']} epochs, {secs(r['train_seconds'])} of training.",
        table(["", f"`test` accuracy ({num(r['eval_examples'])} images)"], rows),
        f"Training command it ran: `{r['train_command']}`",
        source("image_folder_run")])


def rounding_drift() -> str:
    r = load("rounding_drift")
    s = r["scan_vs_step_loop"]
    sci = "{:.1e}".format
    rows = [["one step, scanned epoch vs step loop", sci(s["one_step_scan_vs_loop"])],
            ["four steps, scanned epoch vs step loop", sci(s["four_steps_scan_vs_loop"])],
            ["four steps, one-ulp nudge of the weights vs none (largest)",
             sci(max(s["four_steps_one_ulp_nudge_vs_loop"]))],
            ["four steps, the same batches in the wrong order", sci(s["four_steps_wrong_batch_order_vs_loop"])]]
    rows += [[f"one {opt} step, {m['devices']} devices vs 1 (without the all-reduce: {sci(m['missing_all_reduce'])})",
              sci(m["eight_vs_one"])] for opt, m in r["one_step_eight_devices_vs_one"].items()]
    losses = [[opt, sci(m["max_relative_difference"]), sci(max(m["one_ulp_nudge_relative_differences"]))]
              for opt, m in r["eight_devices_vs_one"].items()]
    return "\n\n".join([
        table(["comparison", "largest weight difference"], rows),
        f"For scale: the largest weight is {s['largest_weight']:.3f}. Over the tests' two synthetic epochs, the "
        "per-epoch mean train losses differ by these relative amounts:",
        table(["optimizer", "8 devices vs 1", "one-ulp nudge vs none (largest)"], losses),
        source("rounding_drift")])


BLOCKS = {block.__name__: block for block in (
    make_train, recipes, simple_cnn, fast_cpu, fast_muon, fast_muon_sitting2, split_cifar_transfer,
    ssl_label_efficiency, few_labels, efficient_finetune, compress_models, litert_int8, serve_load_litert, cpu_split_quiet, calibration_size, channel_pruning,
    image_folder_run, rounding_drift)}


# ----- the files -----
def render(text: str) -> str:
    def fill(match: re.Match) -> str:
        if match["name"] not in BLOCKS:
            raise SystemExit(f"unknown report block {match['name']!r}; known: {', '.join(BLOCKS)}")
        return f"{match[1]}{BLOCKS[match['name']]()}\n{match[4]}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCS:
        text = path.read_text()
        rendered = render(text)
        if rendered != text:
            stale.append(path)
            if not args.check:
                path.write_text(rendered)
    if args.check and stale:
        print("out of date (run python experiments/report.py): " + ", ".join(str(p.relative_to(ROOT)) for p in stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
