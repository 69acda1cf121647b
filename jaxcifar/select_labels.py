"""Choosing which images to label: TypiClust (Hacohen et al., ICML 2022) on a
self-supervised run's features, reading no label.

    python -m jaxcifar.select_labels --workdir runs/multicrop --budget 10 --out labels/ \\
        --data_dir ../shared/tensorflow_datasets

The features of every training image (the run's backbone, whole images) are clustered by
k-means into `budget` clusters; from each, the most *typical* image is proposed: the one
with the highest typicality, 1 / (mean distance to its `neighbours` nearest neighbours in
its cluster). With few labels the most typical images of distinct clusters cover the data
better than a random draw (TypiClust: FlexMatch with 10 CIFAR-10 labels, 53.8% random
against 93.2%). Clusters are visited largest first.

Writes, for the person who labels:
  OUT/labels.csv      index (the image's row in the train split), label (empty: fill it in
                      with a class name or id), cluster, cluster_size
  OUT/contact_sheet.png  the chosen images, each captioned with its index
Train on them with `--config.data.labels_csv=OUT/labels.csv`: every image not in it joins
the unlabelled stream.
"""

from __future__ import annotations

import csv
import pathlib
import sys

import numpy as np


CSV = "labels.csv"
SHEET = "contact_sheet.png"
MIN_CLUSTER = 5  # TypiClust ignores clusters smaller than this: their typicality is noise


def typicality(features: np.ndarray, neighbours: int) -> np.ndarray:
    """1 / mean Euclidean distance of each row to its `neighbours` nearest other rows."""
    from sklearn.neighbors import NearestNeighbors

    k = min(neighbours + 1, len(features))
    distances, _ = NearestNeighbors(n_neighbors=k).fit(features).kneighbors(features)
    return 1.0 / np.maximum(distances[:, 1:].mean(axis=1), 1e-12)


def typiclust(features: np.ndarray, budget: int, seed: int = 0, neighbours: int = 20) -> tuple[np.ndarray, np.ndarray,
                                                                                                np.ndarray]:
    """(chosen rows, their clusters, those clusters' sizes): the most typical row of each of
    `budget` k-means clusters of the L2-normalised `features`, largest cluster first."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if not 0 < budget <= len(features):
        raise ValueError(f"--budget={budget} must be between 1 and the {len(features)} images of the pool.")
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    # MiniBatchKMeans past 50 clusters, as TypiClust does, where full k-means gets slow.
    kmeans = (KMeans(budget, n_init=1, random_state=seed) if budget <= 50
              else MiniBatchKMeans(budget, n_init=1, random_state=seed, batch_size=4096))
    clusters = kmeans.fit_predict(x)
    sizes = np.bincount(clusters, minlength=budget)
    chosen, chosen_clusters = [], []
    for cluster in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(clusters == cluster)
        if len(members) < min(MIN_CLUSTER, len(x) // budget):
            continue
        chosen.append(members[np.argmax(typicality(x[members], neighbours))])
        chosen_clusters.append(cluster)
    return np.asarray(chosen), np.asarray(chosen_clusters), sizes[chosen_clusters]


def write_csv(path: pathlib.Path, rows: np.ndarray, clusters: np.ndarray, sizes: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "cluster", "cluster_size"])
        for row, cluster, size in zip(rows, clusters, sizes):
            writer.writerow([int(row), "", int(cluster), int(size)])


def contact_sheet(images: np.ndarray, captions: list[str], path: pathlib.Path, columns: int = 10,
                  scale: int = 3) -> None:
    """A PNG grid of `images` (uint8 NHWC), each enlarged `scale` times with its caption below."""
    from PIL import Image, ImageDraw

    n, h, w, _ = images.shape
    cell_w, cell_h = w * scale + 8, h * scale + 20
    rows = -(-n // columns)
    sheet = Image.new("RGB", (min(n, columns) * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 2
        sheet.paste(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        draw.text((x, y + h * scale + 2), caption, fill="black")
    sheet.save(path)


def select_run(workdir: str | pathlib.Path, budget: int, out: str | pathlib.Path, data_dir: str | None = None,
               seed: int = 0, neighbours: int = 20, images: np.ndarray | None = None) -> np.ndarray:
    """Library form of the CLI: the chosen rows of the run's train split (or of `images`),
    with OUT/labels.csv and OUT/contact_sheet.png written."""
    from jaxcifar import data as data_lib
    from jaxcifar.evaluate import backbone_features
    from jaxcifar.runs import load_run

    if budget < 1:
        raise ValueError(f"--budget={budget} must be at least 1: it is the number of images to propose.")
    run = load_run(workdir)
    if images is None:
        images = data_lib.read_split(run.config.data, run.config.data.train_split, data_dir).images
    # The pool's labels are never read: the backbone is handed zeros.
    features = backbone_features(run, data_lib.ArraySplit(images, np.zeros(len(images), np.int32)))
    rows, clusters, sizes = typiclust(features, budget, seed, neighbours)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / CSV, rows, clusters, sizes)
    contact_sheet(images[rows], [f"#{row}" for row in rows], out / SHEET)
    return rows


if __name__ == "__main__":  # the command line lives in jaxcifar/cli/select_labels.py
    from jaxcifar.cli.select_labels import main

    sys.exit(main())
