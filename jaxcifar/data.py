"""Input: TFDS (or a folder of images) -> host memory -> a run's `Data` (its splits, label budget and classes).

Design decisions (and why):
* A run's source is a TFDS image-classification dataset (`data.dataset`, CIFAR-10 by
  default) or a folder of image files (`data.image_folder`, see jaxcifar/image_files.py).
  Its class count and names come from the source (TFDS's `info.features`, or the folder
  names), never from a constant, and every label is checked against them (`check_labels`):
  a label beyond the model's classes would otherwise train against an all-zero target.
* One image size per run, `data.image_size` (32 for the CIFAR recipes). A TFDS dataset
  whose images share one other size is held at that size and resized on the device
  (`augment.resize`, inside the jitted steps and every inference function); images that
  vary in size (a folder, a TFDS dataset without a fixed shape, predict's files) are
  resized on the host when read, with Pillow's filter of the same kind (image_files.py),
  because a batch needs one size.
* Each split is read once into host memory (CIFAR-10 is 150 MB); which rows make each
  batch is jaxcifar/batch_order.py's, a pure function of (seed, epoch, step).
* Augmentation and normalisation run on the device inside the jitted step
  (jaxcifar/augment.py).
* TensorFlow is optional and imported lazily (jaxcifar/tf_extra.py): without it a run reads
  an image folder or arrays.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import urllib.parse

import ml_collections
import numpy as np

from jaxcifar import image_files, tf_extra

# The held-out validation part of a train split (`data.validation_fraction`) is chosen with
# this fixed seed, not the run's: every seed of a comparison is validated on the same images.
HOLD_OUT_SEED = 0


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """A split held in host memory: uint8 NHWC images and int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class UnlabeledSplit:
    """Images without labels, for methods that learn from them: the type has no place for a
    label, so none can reach a method through it."""

    images: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def resolve_data_dir(data_dir: str | None) -> str | None:
    """--data_dir, else $TFDS_DATA_DIR, else None (TFDS's default, which downloads when online)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def import_tfds(dataset: str):
    """tensorflow_datasets, to read the TFDS `dataset` (tf_extra.py)."""
    return tf_extra.import_tfds(f"reading the TFDS dataset {dataset!r}",
                                instead="read your images with --config.data.image_folder=DIR (or give train.fit "
                                        "arrays, such as data.load_jpeg_pack's)")


def load_split(split: str, data_dir: str | None = None, dataset: str = "cifar10", image_size: int = 32) -> ArraySplit:
    """Read a whole TFDS split into memory as RGB uint8 images and int32 labels (the dataset's
    supervised keys); a missing dataset gets an actionable error. Images of one fixed size
    keep it (the device resizes them); images that vary in size are resized here to
    `image_size` by the image-file rule, and greyscale becomes RGB."""
    tfds = import_tfds(dataset)
    data_dir = resolve_data_dir(data_dir)
    try:
        if data_dir is None:  # TFDS downloads what its default data dir lacks
            refuse_unreachable_download(tfds.builder(dataset))
        ds, info = tfds.load(dataset, split=split, data_dir=data_dir, download=data_dir is None, with_info=True)
    except Exception as e:  # TFDS raises several types here (not found, download failure, bad split).
        raise FileNotFoundError(
            f"Could not load TFDS dataset {dataset!r} split {split!r} from data_dir={data_dir!r}: {e}\n"
            "Pass --data_dir DIR (or set TFDS_DATA_DIR) to a directory holding a prepared "
            f"'{dataset}' dataset, e.g. --data_dir ../shared/tensorflow_datasets. On a machine with "
            f"internet access, `tfds build {dataset} --data_dir DIR` (or omitting --data_dir) prepares it."
        ) from e
    image_key, label_key = supervised_keys(info)
    if None in info.features[image_key].shape[:2]:
        examples = list(tfds.as_numpy(ds))
        images = np.stack([image_files.array_to_model_image(ex[image_key], image_size) for ex in examples])
        labels = np.array([ex[label_key] for ex in examples])
    else:
        # Chunked rather than batch_size=-1, which aborts the process under tfds.testing.mock_data.
        chunks = list(tfds.as_numpy(ds.batch(10_000)))
        images = np.concatenate([c[image_key] for c in chunks])
        labels = np.concatenate([c[label_key] for c in chunks])
    if images.shape[-1] == 1:  # greyscale (MNIST-like): the models take RGB
        images = np.repeat(images, 3, axis=-1)
    return ArraySplit(images, labels.astype(np.int32))


# How long a download host gets to accept a connection before a dataset that is not prepared is
# refused: TFDS's own download would retry for minutes and leave a partial download behind.
REACHABLE_TIMEOUT_S = 3.0


def refuse_unreachable_download(builder) -> None:
    """Raise ConnectionError, within seconds, when `builder`'s dataset is not prepared and a host
    it downloads from cannot be reached. A dataset whose download URLs TFDS does not list is
    left to TFDS."""
    if builder.is_prepared():
        return
    origins = {origin(url) for url in builder.url_infos or ()}
    unreachable = sorted(o for o in origins if not reachable(o))
    if unreachable:
        raise ConnectionError(f"it is not prepared in {builder.data_dir}, and {', '.join(unreachable)} "
                              "cannot be reached to download it (offline?)")


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: every URL of one origin is reachable or none is."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def reachable(url: str, timeout_s: float = REACHABLE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout_s`. It is tried in a
    daemon thread because the name lookup takes no timeout and can hang on its own."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    opened = threading.Event()

    def connect() -> None:
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
            opened.set()
        except OSError:
            pass

    threading.Thread(target=connect, daemon=True).start()
    return opened.wait(timeout_s)


def supervised_keys(info) -> tuple[str, str]:
    """(image key, label key) of a TFDS dataset, refusing one that is not image classification."""
    import tensorflow_datasets as tfds

    keys = info.supervised_keys
    features = info.features
    if (not keys or len(keys) != 2 or not isinstance(features[keys[0]], tfds.features.Image)
            or not isinstance(features[keys[1]], tfds.features.ClassLabel)
            or features[keys[0]].shape[-1] not in (1, 3)):
        raise ValueError(f"TFDS dataset {info.name!r} is not an image-classification dataset jaxcifar can read: "
                         f"its supervised keys {keys} must name an RGB or greyscale Image and a ClassLabel. "
                         "Set --config.data.dataset to one that has them (cifar10, cifar100, svhn_cropped, "
                         "...), or use --config.data.image_folder=DIR.")
    return keys


def tfds_class_names(dataset: str, data_dir: str | None = None) -> tuple[str, ...]:
    """A TFDS dataset's class names in label order. Read them after loading a split: some
    datasets (cifar10, cifar100) only know their names once prepared, before that '0', '1', ..."""
    tfds = import_tfds(dataset)
    info = tfds.builder(dataset, data_dir=resolve_data_dir(data_dir)).info
    return tuple(info.features[supervised_keys(info)[1]].names)


# ----- the run's source, as its data config describes it -----
def read_split(d: ml_collections.ConfigDict, split: str, data_dir: str | None = None) -> ArraySplit:
    """One split of the run's source (`data.image_folder`, else TFDS `data.dataset`),
    restricted and relabelled to the class subset `data.classes`."""
    if d.image_folder:
        names = image_files.folder_class_names(d.image_folder, d.train_split)
        whole = ArraySplit(*image_files.read_folder_split(d.image_folder, split, names, d.image_size))
    else:
        whole = load_split(split, data_dir, d.dataset, d.image_size)
    return select_examples(whole, tuple(d.classes))


def class_names(d: ml_collections.ConfigDict, data_dir: str | None = None) -> tuple[str, ...]:
    """The run's class names in label order: the source's, or those of the subset `data.classes`."""
    names = (image_files.folder_class_names(d.image_folder, d.train_split) if d.image_folder
             else tfds_class_names(d.dataset, data_dir))
    beyond = [c for c in d.classes if not 0 <= c < len(names)]
    if beyond:
        raise ValueError(f"data.classes={tuple(d.classes)} names class ids {beyond} that the source does not "
                         f"have: it has {len(names)} classes, ids 0..{len(names) - 1} ({', '.join(names[:12])}"
                         f"{', ...' if len(names) > 12 else ''}).")
    return tuple(names[c] for c in d.classes) or names


def load_eval_split(d: ml_collections.ConfigDict, data_dir: str | None = None) -> ArraySplit | None:
    """The test split (`data.eval_split`): evaluated after every epoch for monitoring and at
    the end for the report, never for model selection. None when eval_split is ''."""
    return read_split(d, d.eval_split, data_dir) if d.eval_split else None


def split_train(d: ml_collections.ConfigDict, whole_train: ArraySplit) -> tuple[ArraySplit, ArraySplit | None]:
    """(train, validation): with `data.validation_fraction`, that part of each class held out
    of the train split (as `read_split` returns it) for model selection, else no validation."""
    if not d.validation_fraction:
        return whole_train, None
    return hold_out(whole_train, d.validation_fraction)


VALIDATION = "validation"  # how summaries and reports name the part held out of the train split


def validation_split_name(d: ml_collections.ConfigDict) -> str:
    return f"{d.train_split}-{VALIDATION}"


def hold_out(split: ArraySplit, fraction: float) -> tuple[ArraySplit, ArraySplit]:
    """(kept, held out): `fraction` of every class's examples, rounded, held out as a
    validation set (stratified, so a small class is not left out of it). At least one of each
    class with two or more examples is held out and at least one is kept. The choice is a
    fixed-seed shuffle (HOLD_OUT_SEED), the same for every run; both parts keep split order."""
    order = np.random.default_rng(HOLD_OUT_SEED).permutation(len(split))
    held = np.zeros(len(split), bool)
    for label in np.unique(split.labels):
        members = order[split.labels[order] == label]  # this class, in shuffled order
        count = min(max(round(fraction * len(members)), 1), len(members) - 1) if fraction else 0
        held[members[:count]] = True
    return (ArraySplit(split.images[~held], split.labels[~held]),
            ArraySplit(split.images[held], split.labels[held]))


def check_labels(split: ArraySplit, num_classes: int, name: str) -> None:
    """Refuse labels outside 0..num_classes-1: one-hot targets would silently be all zero."""
    if len(split) and (split.labels.min() < 0 or split.labels.max() >= num_classes):
        raise ValueError(
            f"The {name} split has labels from {split.labels.min()} to {split.labels.max()}, but the run has "
            f"{num_classes} classes (labels 0..{num_classes - 1}); a label outside that range would be trained "
            "against an all-zero target. Give the run the dataset's real class count (Data(..., "
            "num_classes=N)), or keep a subset of classes with --config.data.classes.")


def load_jpeg_pack(path: str) -> dict[str, ArraySplit]:
    """{split: ArraySplit} from a JPEG pack (`../shared/cifar10_jpeg_pack.npz`: per split,
    `{split}_jpeg` concatenated JPEG bytes, `{split}_offsets` (n+1), `{split}_labels`),
    decoded with Pillow. For machines without TensorFlow (with `data.device_resident`);
    the images are lossy copies, so accuracies on them only compare systems run on them."""
    import io

    from PIL import Image

    try:
        pack = np.load(path)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"Cannot read the JPEG pack {path!r}: {e}") from None
    splits = {}
    for split in sorted({k.rsplit("_", 1)[0] for k in pack.files}):
        missing = [k for k in ("jpeg", "offsets", "labels") if f"{split}_{k}" not in pack.files]
        if missing:
            raise ValueError(f"JPEG pack {path!r}: split {split!r} lacks {missing}; expected "
                             "{split}_jpeg, {split}_offsets and {split}_labels.")
        data, offsets = pack[f"{split}_jpeg"], pack[f"{split}_offsets"]
        images = np.stack([np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())).convert("RGB"))
                           for a, b in zip(offsets[:-1], offsets[1:])])
        splits[split] = ArraySplit(images, pack[f"{split}_labels"].astype(np.int32))
    return splits


def select_examples(split: ArraySplit, classes: tuple[int, ...] = (), examples_per_class: int = 0) -> ArraySplit:
    """Keep `classes` (relabelled 0..k-1 in the given order) and/or the first
    `examples_per_class` examples of each class in split order (deterministic)."""
    keep, new_labels = _selection(split.labels, classes, examples_per_class)
    return ArraySplit(split.images[keep], new_labels[keep])


def split_label_budget(split: ArraySplit, examples_per_class: int, label_seed: int | None = None,
                       labels_csv: str = "", class_names: tuple[str, ...] = ()) -> tuple[ArraySplit, UnlabeledSplit]:
    """(labelled, unlabelled): the label budget keeps its labels and the rest of the split
    loses them here, at the door, and becomes unlabelled images (none when the budget is
    0 = all). The budget is the rows and labels of a filled-in `labels_csv`
    (`select_labels` writes one), or `examples_per_class` of each class: the first ones in
    split order, or a random draw seeded by `label_seed`."""
    if labels_csv:
        rows, labels = read_labels_csv(labels_csv, len(split), class_names)
        keep = np.zeros(len(split), bool)
        keep[rows] = True
        return ArraySplit(split.images[rows], labels), UnlabeledSplit(split.images[~keep])
    keep = label_budget(split.labels, examples_per_class, label_seed)
    return ArraySplit(split.images[keep], split.labels[keep]), UnlabeledSplit(split.images[~keep])


def label_budget(labels: np.ndarray, examples_per_class: int, label_seed: int | None = None) -> np.ndarray:
    """Which rows keep their labels: `examples_per_class` of each class (all when 0), the
    first in split order, or drawn at random with `label_seed`. Either rule simulates the
    person who labels N images of each class, so it needs every image's class; what trains
    on the result sees only the labels it keeps (a budget given as rows, `labels_csv`,
    needs none)."""
    if not examples_per_class:
        return np.ones(len(labels), bool)
    if label_seed is None:
        return _selection(labels, (), examples_per_class)[0]
    rng = np.random.default_rng(label_seed)
    keep = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        if len(where) < examples_per_class:
            raise ValueError(f"Class {label} has only {len(where)} examples; asked for {examples_per_class}.")
        keep[rng.choice(where, examples_per_class, replace=False)] = True
    return keep


LABELS_CSV_COLUMNS = ("index", "label")


def read_labels_csv(path: str, num_examples: int, class_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) of the filled-in rows of a labels CSV (columns `index`, the image's row
    in the train split, and `label`, a class name or id; more columns are ignored). A row
    whose label is empty is not labelled yet: it stays unlabelled."""
    import csv

    try:
        with open(path, newline="") as f:
            table = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"Cannot read data.labels_csv={path!r}: {e.strerror}.") from None
    if table and not set(LABELS_CSV_COLUMNS) <= set(table[0]):
        raise ValueError(f"data.labels_csv={path!r} needs the columns {', '.join(LABELS_CSV_COLUMNS)}; it has "
                         f"{', '.join(table[0])}.")
    ids = {name: i for i, name in enumerate(class_names)}
    rows, labels = [], []
    for line, entry in enumerate(table, start=2):
        label = entry["label"].strip()
        if not label:
            continue
        if label not in ids and not (label.isdigit() and int(label) < len(class_names)):
            raise ValueError(f"{path}, line {line}: label {label!r} is not a class; use a name "
                             f"({', '.join(class_names)}) or an id 0..{len(class_names) - 1}.")
        if not entry["index"].strip().isdigit() or int(entry["index"]) >= num_examples:
            raise ValueError(f"{path}, line {line}: index {entry['index']!r} is not a row of the train split "
                             f"(0..{num_examples - 1}).")
        rows.append(int(entry["index"]))
        labels.append(ids[label] if label in ids else int(label))
    if not rows:
        raise ValueError(f"data.labels_csv={path!r} has no filled-in label: fill the `label` column first.")
    if len(set(rows)) != len(rows):
        raise ValueError(f"data.labels_csv={path!r} lists a row twice.")
    order = np.argsort(rows)  # split order, as every other budget keeps it
    return np.asarray(rows)[order], np.asarray(labels, np.int32)[order]


def unlabeled_images(d: ml_collections.ConfigDict, rest: UnlabeledSplit) -> UnlabeledSplit | None:
    """The run's unlabelled stream: `rest` (the train images left out by the label budget)
    and, for an image folder, the files of DIR/unlabeled/. None when there are none."""
    from_folder = image_files.read_unlabeled_folder(d.image_folder, d.image_size) if d.image_folder else None
    images = rest.images if from_folder is None else np.concatenate([rest.images, from_folder])
    return UnlabeledSplit(images) if len(images) else None


def _selection(labels: np.ndarray, classes: tuple[int, ...], examples_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(which examples `select_examples` keeps, their new labels) of a split's `labels`."""
    classes = tuple(classes) or tuple(range(int(labels.max()) + 1))
    keep = np.zeros(len(labels), bool)
    new_labels = np.full(len(labels), -1, np.int32)
    for new, old in enumerate(classes):
        where = np.flatnonzero(labels == old)
        if examples_per_class:
            if len(where) < examples_per_class:
                raise ValueError(f"Class {old} has only {len(where)} examples; asked for {examples_per_class}.")
            where = where[:examples_per_class]
        keep[where] = True
        new_labels[where] = new
    return keep, new_labels


@dataclasses.dataclass(frozen=True)
class Data:
    """The splits of a run, in host memory, and its classes. Every label must be below
    `num_classes` (checked here, the one door all data comes through).

    Model selection (the best checkpoint, early stopping) reads `validation` only, a part held
    out of the training images; `eval` is the test split, evaluated after every epoch for
    monitoring and at the end for the report, and never selects anything. `unlabeled`: images
    without labels, for the methods that read them (None: none)."""

    train: ArraySplit
    eval: ArraySplit | None  # the test split (data.eval_split); None when eval_split=''
    num_classes: int
    extra_evals: dict[str, ArraySplit] = dataclasses.field(default_factory=dict)  # final eval only
    class_names: tuple[str, ...] = ()  # in label order; () names the classes by label id: '0', '1', ...
    validation: ArraySplit | None = None  # held out of train (data.validation_fraction); selects
    unlabeled: UnlabeledSplit | None = None

    def __post_init__(self) -> None:
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(self.num_classes)))
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names {list(self.class_names)} for "
                             f"num_classes={self.num_classes}; give one name per class, in label order.")
        if self.eval is None and self.validation is None:
            raise ValueError("A run needs a test split (eval) or a validation split to be evaluated on.")
        splits = {"train": self.train, "eval": self.eval, "validation": self.validation, **self.extra_evals}
        for name, split in splits.items():
            if split is not None:
                check_labels(split, self.num_classes, name)


def load_data(config: ml_collections.ConfigDict, data_dir: str | None = None) -> Data:
    """The config's splits (TFDS `data.dataset` or `data.image_folder`), restricted to its
    class subset, with its validation part held out of train and the label budget applied."""
    d = config.data
    whole = read_split(d, d.train_split, data_dir)
    names = class_names(d, data_dir)  # after reading: TFDS knows some names only once prepared
    labelled, rest = split_label_budget(whole, d.examples_per_class, d.label_seed, d.labels_csv, names)
    # The validation part comes out of the labels the run was given, never from beyond its budget.
    train, validation = split_train(d, labelled)
    extra_evals = {split: read_split(d, split, data_dir) for split in d.extra_eval_splits}
    return Data(train, load_eval_split(d, data_dir), len(names), extra_evals, names, validation,
                unlabeled_images(d, rest))
