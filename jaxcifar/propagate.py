"""Label propagation on learned features (Iscen et al., CVPR 2019): the few labels of a
budget spread over a nearest-neighbour graph of every training image, giving each
unlabelled image a soft label and a certainty. The features come from a self-supervised
run's backbone, or from a classifier fine-tuned on the same budget (SimCLRv2's teacher),
whose features the labels have already sharpened.

    python -m jaxcifar.propagate --workdir runs/multicrop --out runs/propagated25 \\
        --data_dir ../shared/tensorflow_datasets --config.data.examples_per_class=25 --config.data.label_seed=0

1. Every training image is embedded by the run's backbone (the whole image, as the kNN
   monitor embeds it) and L2-normalised.
2. **Graph**: each image's `k` most cosine-similar others, with affinity similarity^gamma
   (negative similarities cut to 0), symmetrised and normalised as D^-1/2 W D^-1/2.
3. **Diffusion**: (I - alpha W) Z = Y, solved by conjugate gradient for each class, where Y
   holds the budget's labels (each class's column scaled by 1 / its label count, so a class
   with more labels does not spread further).
4. **Balance and certainty**: each class's column of Z is divided by its total mass (so no
   class swallows the others), each row normalised into a soft label, and its certainty is
   1 - entropy / log(classes). A labelled image keeps its own label with certainty 1.

`OUT/targets.npz` holds the soft labels and certainties of the run's unlabelled stream, in
its order (the `self_training` method reads them), with the data settings they were made
for; `OUT/report.json` the accuracy of the propagated labels on the unlabelled images
(their true labels are read only for this report, after propagation) and on `test` (each
test image classified by the kNN vote of its neighbours' propagated labels). Never reads
a label beyond the budget to propagate.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import TYPE_CHECKING

import numpy as np

from jaxcifar import targets

if TYPE_CHECKING:  # the module imports the data layer where it reads data, not at import
    from jaxcifar import data as data_lib

REPORT = "report.json"


def knn_graph(features: np.ndarray, k: int, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), each (n, k): every row's k most cosine-similar other rows
    of `features` (already L2-normalised), found in chunks on the device."""
    import jax
    import jax.numpy as jnp

    bank = jnp.asarray(features, jnp.float32)

    @jax.jit
    def nearest(start, queries):
        similarity = queries @ bank.T
        own = start + jnp.arange(queries.shape[0])
        similarity = similarity.at[jnp.arange(queries.shape[0]), own].set(-jnp.inf)  # not its own neighbour
        return jax.lax.top_k(similarity, k)

    pieces = [nearest(start, bank[start:start + chunk]) for start in range(0, len(features), chunk)]
    return (np.concatenate([np.asarray(i) for _, i in pieces]),
            np.concatenate([np.asarray(s) for s, _ in pieces]))


def diffuse(indices: np.ndarray, similarities: np.ndarray, labelled_rows: np.ndarray, labels: np.ndarray,
            num_classes: int, alpha: float = 0.99, gamma: float = 3.0, iterations: int = 20) -> np.ndarray:
    """Z (n, classes): the solution of (I - alpha W) Z = Y on the graph, W the symmetrised,
    normalised affinities max(similarity, 0)^gamma."""
    import scipy.sparse
    import scipy.sparse.linalg

    n, k = indices.shape
    affinity = scipy.sparse.csr_matrix((np.maximum(similarities, 0).ravel() ** gamma,
                                        (np.repeat(np.arange(n), k), indices.ravel())), shape=(n, n))
    affinity = affinity + affinity.T
    scale = 1.0 / np.sqrt(np.maximum(np.asarray(affinity.sum(axis=1)).ravel(), 1e-12))
    w = scipy.sparse.diags(scale) @ affinity @ scipy.sparse.diags(scale)
    system = scipy.sparse.eye(n) - alpha * w
    z = np.zeros((n, num_classes))
    for c in range(num_classes):
        y = np.zeros(n)
        members = labelled_rows[labels == c]
        y[members] = 1.0 / max(len(members), 1)
        z[:, c], _ = scipy.sparse.linalg.cg(system, y, maxiter=iterations)
    return z


def soft_labels(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(soft labels, certainties) from the diffusion's Z: classes balanced by their total
    mass, rows normalised, certainty 1 - entropy / log(classes)."""
    z = np.maximum(z, 0)
    z = z / np.maximum(z.sum(axis=0, keepdims=True), 1e-12)
    total = z.sum(axis=1, keepdims=True)
    p = np.where(total > 0, z / np.maximum(total, 1e-12), 1.0 / z.shape[1])
    entropy = -np.sum(p * np.log(np.maximum(p, 1e-12)), axis=1)
    return p.astype(np.float32), (1.0 - entropy / np.log(z.shape[1])).astype(np.float32)


def propagate(features: np.ndarray, labelled: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 20,
              alpha: float = 0.99, gamma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(soft labels (n, classes), certainties (n,)) of every row of `features` from the labels
    of the rows where `labelled` is True (`labels`, one per labelled row, in row order)."""
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    rows = np.flatnonzero(labelled)
    indices, similarities = knn_graph(features, k)
    p, certainty = soft_labels(diffuse(indices, similarities, rows, labels, num_classes, alpha, gamma))
    p[rows] = np.eye(num_classes, dtype=np.float32)[labels]
    certainty[rows] = 1.0
    return p, certainty


def propagate_run(workdir: str | pathlib.Path, out: str | pathlib.Path, data_config, data_dir: str | None = None,
                  k: int = 20, alpha: float = 0.99, gamma: float = 3.0, checkpoint: str | int = "best",
                  whole: data_lib.ArraySplit | None = None, test: data_lib.ArraySplit | None = None) -> dict:
    """Library form of the CLI; `data_config` is a run config whose `data` block chooses the
    label budget (as the run that will read the targets chooses it). `whole` (the train
    split) and `test` replace reading the data, e.g. for synthetic runs in tests. Returns
    the report."""
    from jaxcifar import data as data_lib
    from jaxcifar import ssl
    from jaxcifar.evaluate import backbone_features
    from jaxcifar.runs import load_run

    d = data_config.data
    if d.validation_fraction:
        raise ValueError("propagate spreads the whole label budget; a validation part held out of it would be "
                         "propagated too. Leave data.validation_fraction at 0 for a propagation run.")
    run = load_run(workdir, checkpoint)
    if run.is_classifier and targets.budget_settings(run.config) != targets.budget_settings(data_config):
        # A classifier's features were shaped by the labels it trained on: any beyond this
        # budget would steer the propagated labels.
        raise ValueError(f"{workdir} is a classifier trained on another label budget than this propagation's; "
                         "propagate from a self-supervised run, or from a classifier trained on the same budget.")
    if whole is None:
        whole, test = data_lib.read_split(d, d.train_split, data_dir), data_lib.load_eval_split(d, data_dir)
    names = run.class_names
    if d.labels_csv:
        rows, budget_labels = data_lib.read_labels_csv(d.labels_csv, len(whole), names)
        labelled = np.zeros(len(whole), bool)
        labelled[rows] = True
    else:
        labelled = data_lib.label_budget(whole.labels, d.examples_per_class, d.label_seed)
        budget_labels = whole.labels[labelled]
    # The backbone sees images only: the labels it is handed are zeros.
    features = backbone_features(run, data_lib.ArraySplit(whole.images, np.zeros(len(whole), np.int32)))
    p, certainty = propagate(features, labelled, budget_labels, len(names), k, alpha, gamma)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets.write(out / targets.TARGETS, p[~labelled], certainty[~labelled], data_config)
    # Scores for the report only, computed after propagation: the true labels of the images it labelled.
    predicted = p.argmax(axis=1)
    report = {"workdir": str(workdir), "labels": int(labelled.sum()), "k": k,  # as given: no machine path
              "alpha": alpha, "gamma": gamma, "budget": targets.budget_settings(data_config),
              "unlabeled_accuracy": float(np.mean(predicted[~labelled] == whole.labels[~labelled])),
              "mean_certainty": float(certainty[~labelled].mean())}
    if test is not None:
        queries = backbone_features(run, test)
        bank = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        voted = ssl.knn_predict(bank, predicted, queries, len(names), k, run.config.ssl.knn_temperature)
        report["test_accuracy"] = float(np.mean(voted == test.labels))
        report["test_examples"] = len(test)
    (out / REPORT).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":  # the command line lives in jaxcifar/cli/propagate.py
    from jaxcifar.cli.propagate import main

    sys.exit(main())
