"""Which rows make each batch: the batch order is a pure function of (seed, epoch, step).

A resumed run skips exactly the batches it already consumed, and the global batch sequence
is the same for any number of devices or processes: each process materialises only its own
rows of every global batch, so per-host input work and host->device traffic scale as
1/processes. tf.data (imported lazily) slices, gathers and prefetches the train batches in a
background thread, or NumPy gathers the same rows where TensorFlow is not installed;
evaluation batches are plain NumPy, padded, with a `mask`.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np

from jaxcifar import parallel, steps
from jaxcifar.data import ArraySplit, Data
from jaxcifar.tf_extra import TensorFlowMissing, import_tf


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's example order: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Train batches per epoch; the remainder is dropped (a new permutation next epoch)."""
    return num_examples // global_batch_size


def train_batches(split: ArraySplit, global_batch_size: int, seed: int, epoch: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each global train batch of `epoch`, from `start_step` on."""
    rows = epoch_rows(len(split), global_batch_size, seed, epoch, start_step, process_index, process_count)
    try:
        tf = import_tf("streaming train batches through tf.data")
    except TensorFlowMissing:
        # TensorFlow is optional: the same batches, gathered when asked for instead of in a
        # background thread (a gather is far quicker than the step that waits for it).
        return ({"image": split.images[r], "label": split.labels[r], "index": r} for r in rows)
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


class TrainStream:
    """A run's global train batches on the mesh, epoch by epoch: labelled batches (gathered on
    the device from the resident split, or streamed through tf.data: the same examples in the
    same order) and, for a method that reads them, `unlabeled_ratio` unlabelled images per
    labelled one. Refuses, before anything is written, a batch larger than the split and a
    method whose stream this data cannot give."""

    def __init__(self, config: ml_collections.ConfigDict, data: Data, mesh: jax.sharding.Mesh, unlabeled_ratio: int):
        check_batch_fits(config.batch_size, len(data.train))
        check_unlabeled_stream(config, data, unlabeled_ratio)
        self.config, self.data, self.mesh, self.unlabeled_ratio = config, data, mesh, unlabeled_ratio
        self.steps_per_epoch = steps_per_epoch(len(data.train), config.batch_size)
        self._resident: dict | None = None  # the device-resident train split (data.device_resident)

    def batches(self, epoch: int, start_step: int) -> Iterator[dict]:
        """Global train batches of `epoch` from `start_step`, with the unlabelled images of
        each step as batch['unlabeled'] when the method reads them."""
        labelled = self._labelled(epoch, start_step)
        if not self.unlabeled_ratio:
            return labelled
        return ({**batch, **unlabeled} for batch, unlabeled in zip(labelled, self._unlabeled(epoch, start_step)))

    def epoch_rows(self, epoch: int, start_step: int) -> np.ndarray:
        """This process's rows of the epoch's global batches from `start_step` on."""
        return epoch_rows(len(self.data.train), self.config.batch_size, self.config.seed, epoch, start_step,
                          jax.process_index(), jax.process_count())

    def resident(self) -> dict:
        """The uint8 train split on the devices, uploaded once per process."""
        if self._resident is None:
            train_split = {"image": self.data.train.images, "label": self.data.train.labels}
            self._resident = jax.device_put(train_split, parallel.replicated(self.mesh))
        return self._resident

    def _labelled(self, epoch: int, start_step: int) -> Iterator[dict]:
        if self.config.data.device_resident:
            resident = self.resident()
            for rows in self.epoch_rows(epoch, start_step):
                yield _gather(resident, parallel.to_global({"index": rows}, self.mesh)["index"])
        else:
            for local in train_batches(self.data.train, self.config.batch_size, self.config.seed, epoch, start_step,
                                       jax.process_index(), jax.process_count()):
                yield parallel.to_global(local, self.mesh)

    def _unlabeled(self, epoch: int, start_step: int) -> Iterator[dict]:
        """The unlabelled images of the epoch's steps from `start_step` (`unlabeled_rows`),
        sharded over the mesh like the labelled batch, with their rows in the stream
        (`unlabeled_index`: where a method finds what it derived for an image before the run,
        such as a propagated label)."""
        rows = unlabeled_rows(len(self.data.unlabeled), self.unlabeled_ratio * self.config.batch_size,
                              self.config.seed, epoch * self.steps_per_epoch + start_step,
                              self.steps_per_epoch - start_step, jax.process_index(), jax.process_count())
        for local in rows:
            yield parallel.to_global({"unlabeled": self.data.unlabeled.images[local],
                                      "unlabeled_index": local.astype(np.int32)}, self.mesh)


_gather = jax.jit(steps.gather_batch)


def check_batch_fits(batch_size: int, examples: int) -> None:
    """Refuse a batch larger than the training split, saying which size would fit."""
    if batch_size > examples:
        fits = max(jax.device_count(), 2 ** (examples.bit_length() - 1) // jax.device_count() * jax.device_count())
        raise ValueError(f"batch_size={batch_size} is larger than the {examples} training examples: pass "
                         f"--config.batch_size=N with N at most {examples}, e.g. --config.batch_size={fits}.")


def check_unlabeled_stream(config: ml_collections.ConfigDict, data: Data, unlabeled_ratio: int) -> None:
    """Refuse a run whose method reads unlabelled images that it cannot get."""
    if not unlabeled_ratio:
        return
    if data.unlabeled is None:
        raise ValueError(f"objective={config.objective!r} learns from unlabelled images, and this run has none: set "
                         "--config.data.examples_per_class=N (the rest of the train split is then used without its "
                         "labels), or with data.image_folder=DIR put images in DIR/unlabeled/.")
    if config.data.scan_epoch:
        raise ValueError(f"objective={config.objective!r} reads unlabelled images, which a scanned epoch does not "
                         "carry yet: set --config.data.scan_epoch=False.")
