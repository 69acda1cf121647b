"""CIFAR-10 input: TFDS -> host memory -> tf.data batches -> global `jax.Array`s on a mesh.

Design decisions (and why):
* Each split is read once through `tfds.load` into host memory (CIFAR-10 is 150 MB).
  The batch order is then a pure function of (seed, epoch): a resumed run skips exactly
  the batches it already consumed, and the global batch sequence is the same for any
  number of devices or processes. Each process materialises only its own rows of every
  global batch, so per-host input work and host->device traffic scale as 1/processes.
  (For a dataset that did not fit in memory, `tfds.split_for_jax_process` per-process
  shards would replace the full read, at the cost of topology-dependent batch order.)
* tf.data does the streaming work: slicing, batching, padding, prefetching in a
  background thread. Augmentation and normalisation run on the device inside the
  jitted step (jaxcifar/augment.py).
* TensorFlow is imported lazily and never sees a GPU/TPU, so it cannot take accelerator
  memory from JAX, and the device-resident path runs where TensorFlow is absent.
* Evaluation pads the last batch and carries a `mask`, so every example counts exactly once.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """A split held in host memory: uint8 NHWC images and int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def resolve_data_dir(data_dir: str | None) -> str | None:
    """--data_dir, else $TFDS_DATA_DIR, else None (TFDS's default, which downloads when online)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def import_tf():
    """TensorFlow with accelerators hidden: it must never take a GPU/TPU from JAX."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
    return tf


def load_split(split: str, data_dir: str | None = None, dataset: str = "cifar10") -> ArraySplit:
    """Read a whole TFDS split into memory; a missing dataset gets an actionable error."""
    import_tf()
    import tensorflow_datasets as tfds

    data_dir = resolve_data_dir(data_dir)
    try:
        ds = tfds.load(dataset, split=split, data_dir=data_dir, download=data_dir is None)
    except Exception as e:  # TFDS raises several types here (not found, download failure, bad split).
        raise FileNotFoundError(
            f"Could not load TFDS dataset {dataset!r} split {split!r} from data_dir={data_dir!r}: {e}\n"
            "Pass --data_dir DIR (or set TFDS_DATA_DIR) to a directory holding a prepared "
            f"'{dataset}' dataset, e.g. --data_dir ../shared/tensorflow_datasets. On a machine with "
            f"internet access, `tfds build {dataset} --data_dir DIR` (or omitting --data_dir) prepares it."
        ) from e
    # Chunked rather than batch_size=-1, which aborts the process under tfds.testing.mock_data.
    chunks = list(tfds.as_numpy(ds.batch(10_000)))
    images = np.concatenate([c["image"] for c in chunks])
    labels = np.concatenate([c["label"] for c in chunks]).astype(np.int32)
    return ArraySplit(images, labels)


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
    labels = split.labels
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
    return ArraySplit(split.images[keep], new_labels[keep])


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's example order: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Train batches per epoch; the remainder is dropped (a new permutation next epoch)."""
    return num_examples // global_batch_size


def train_batches(split: ArraySplit, global_batch_size: int, seed: int, epoch: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each global train batch of `epoch`, from `start_step` on."""
    tf = import_tf()
    rows = epoch_rows(len(split), global_batch_size, seed, epoch, start_step, process_index, process_count)
    return _gather_batches(tf, rows, image=split.images, label=split.labels, index=np.arange(len(split)))


def epoch_rows(num_examples: int, global_batch_size: int, seed: int, epoch: int, start_step: int = 0,
               process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """(steps, local batch) example indices: this process's rows of the epoch's global
    batches from `start_step` on. Shared by the tf.data and device-resident paths."""
    local = global_batch_size // process_count
    steps = steps_per_epoch(num_examples, global_batch_size)
    order = epoch_permutation(num_examples, seed, epoch)[: steps * global_batch_size]
    return order.reshape(steps, process_count, local)[start_step:, process_index]


def eval_batches(split: ArraySplit, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once: the split is padded to whole global batches and `mask`
    marks the real rows. Each process gets the same number of batches. Plain NumPy slicing,
    not tf.data: evaluation sets are small, and this keeps the device-resident path (train
    batches gathered on the device) free of TensorFlow, for machines that lack it."""
    local = global_batch_size // process_count
    steps = -(-len(split) // global_batch_size)
    padded = steps * global_batch_size
    images = np.concatenate([split.images, np.zeros((padded - len(split), *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros(padded - len(split), np.int32)])
    mask = np.arange(padded) < len(split)
    for rows in np.arange(padded).reshape(steps, process_count, local)[:, process_index]:
        yield {"image": images[rows], "label": labels[rows], "mask": mask[rows]}


def _gather_batches(tf, rows: np.ndarray, **columns: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """tf.data pipeline yielding {name: column[rows[i]]} for each row-index vector, prefetched
    in a background thread. The columns become eager tensors first, so the dataset graph
    captures them by reference instead of embedding 150 MB constants."""
    tensors = {name: tf.convert_to_tensor(col) for name, col in columns.items()}
    ds = tf.data.Dataset.from_tensor_slices(rows).map(
        lambda idx: {name: tf.gather(t, idx) for name, t in tensors.items()},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(2).as_numpy_iterator()
