"""Which rows make each batch: the batch order is a pure function of (seed, epoch, step).

A resumed run skips exactly the batches it already consumed, and the global batch sequence
is the same for any number of devices or processes: each process materialises only its own
rows of every global batch, so per-host input work and host->device traffic scale as
1/processes. tf.data (imported lazily) slices, gathers and prefetches the train batches in a
background thread; evaluation batches are plain NumPy, padded, with a `mask`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jaxcifar.data import ArraySplit, import_tf


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


# The unlabelled stream's shuffles are drawn from [seed, UNLABELED_STREAM, pass], apart from
# the labelled epochs' [seed, epoch].
UNLABELED_STREAM = 0x554E4C42  # "UNLB"


def unlabeled_rows(num_examples: int, global_batch_size: int, seed: int, first_step: int, num_steps: int,
                   process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """(num_steps, local batch) indices of unlabelled images: this process's rows of the
    unlabelled batches of global steps first_step, first_step + 1, ... The stream is an
    endless sequence of shuffles of the images, one per pass, cut into batches, so a step's
    images are a pure function of (seed, step): a resumed run reads exactly what it would
    have, whatever the epoch length and whether the batch is larger than the set."""
    positions = np.arange(first_step * global_batch_size, (first_step + num_steps) * global_batch_size)
    passes = positions // num_examples
    rows = np.empty_like(positions)
    for k in np.unique(passes):
        order = np.random.default_rng([seed, UNLABELED_STREAM, int(k)]).permutation(num_examples)
        rows[passes == k] = order[positions[passes == k] % num_examples]
    return rows.reshape(num_steps, process_count, global_batch_size // process_count)[:, process_index]


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
