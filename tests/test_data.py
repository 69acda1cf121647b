import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcifar import augment, batch_order, data as data_lib, image_files, train
from jaxcifar.cli import USAGE_ERROR
from jaxcifar.runs import load_run
from jaxcifar.testing import synthetic_split, tiny_config


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = batch_order.epoch_permutation(1000, seed=3, epoch=2)
    assert np.array_equal(a, batch_order.epoch_permutation(1000, seed=3, epoch=2))
    assert not np.array_equal(a, batch_order.epoch_permutation(1000, seed=3, epoch=3))
    assert not np.array_equal(a, batch_order.epoch_permutation(1000, seed=4, epoch=2))
    assert sorted(a) == list(range(1000))


def test_train_batches_drop_remainder_and_resume_skips_consumed_batches():
    split = synthetic_split(100)
    full = list(batch_order.train_batches(split, 32, seed=0, epoch=1))
    assert len(full) == 3 and all(b["image"].shape == (32, 32, 32, 3) for b in full)
    assert len({int(i) for b in full for i in b["label"]}) > 1
    resumed = list(batch_order.train_batches(split, 32, seed=0, epoch=1, start_step=2))
    assert len(resumed) == 1 and np.array_equal(resumed[0]["image"], full[2]["image"])


def test_processes_get_disjoint_rows_of_the_same_global_batch():
    split = synthetic_split(64)
    whole = next(batch_order.train_batches(split, 32, seed=5, epoch=0))
    parts = [next(batch_order.train_batches(split, 32, seed=5, epoch=0, process_index=p, process_count=2))
             for p in range(2)]
    assert np.array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])


@pytest.mark.tf("the tf.data batches to compare with")
def test_without_tensorflow_numpy_gathers_the_same_train_batches(monkeypatch):
    split = synthetic_split(100)
    streamed = list(batch_order.train_batches(split, 32, seed=0, epoch=1, start_step=1))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any import of it now fails, as without the `tf` extra
    gathered = list(batch_order.train_batches(split, 32, seed=0, epoch=1, start_step=1))
    assert len(gathered) == len(streamed) == 2
    for ours, theirs in zip(gathered, streamed):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_count_every_example_exactly_once(process_count):
    split = synthetic_split(77)
    seen = []
    for p in range(process_count):
        batches = list(batch_order.eval_batches(split, 20, process_index=p, process_count=process_count))
        assert len(batches) == 4  # ceil(77 / 20), the same on every process
        for b in batches:
            seen += [img.tobytes() for img, m in zip(b["image"], b["mask"]) if m]
    assert len(seen) == 77
    assert sorted(seen) == sorted(img.tobytes() for img in split.images)


def test_class_subset_is_relabelled_and_budget_is_deterministic():
    split = synthetic_split(500)
    sub = data_lib.select_examples(split, classes=(7, 2), examples_per_class=5)
    assert len(sub) == 10 and sorted(set(sub.labels.tolist())) == [0, 1]
    original = split.labels[np.isin(split.labels, (7, 2))]
    first_sevens = split.images[split.labels == 7][:5]
    assert np.array_equal(sub.images[sub.labels == 0], first_sevens)
    with pytest.raises(ValueError, match="only"):
        data_lib.select_examples(split, classes=(7,), examples_per_class=10_000)
    assert len(original) > 10


# Under tfds.testing.mock_data any data_dir reads the mocked examples. One is named because,
# without one, load_split first asks whether the download host answers (the mocked builder is
# not prepared), and the answer depends on the network.
MOCKED_DATA_DIR = "mocked"


@pytest.mark.tf("TFDS input")
def test_load_split_reads_tfds_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        split = data_lib.load_split("train", MOCKED_DATA_DIR)
    assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.labels.max() < 10


@pytest.mark.tf("TFDS input")
def test_missing_dataset_error_names_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data_dir.*TFDS_DATA_DIR"):
        data_lib.load_split("train", data_dir=str(tmp_path))


def test_reachable_means_a_connection_opens():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"http://127.0.0.1:{server.getsockname()[1]}/file.tar.gz"
        assert data_lib.reachable(url, timeout_s=1)
    assert not data_lib.reachable(url, timeout_s=1)  # closed: refused at once


# A new user's first run offline: no data_dir, nothing prepared in TFDS's default folder.
OFFLINE_FIRST_RUN = """
import sys, time
from jaxcifar import data, tf_extra
from jaxcifar.cli import train
data.reachable = lambda url, timeout_s=data.REACHABLE_TIMEOUT_S: False
tf_extra.import_tf("the offline test")  # the clock times the run, not TensorFlow's import
start = time.monotonic()
status = train.main(["--config", "fast", "--workdir", sys.argv[1]])
print(f"status={status} seconds={time.monotonic() - start:.1f}")
"""


@pytest.mark.tf("TFDS input")
def test_offline_without_data_dir_fails_in_seconds_and_leaves_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR"} | {"HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", OFFLINE_FIRST_RUN, str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=120)
    status, seconds = dict(w.split("=") for w in done.stdout.split()).values()
    assert status == str(USAGE_ERROR) and float(seconds) < 10, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot be reached" in errors[0] and "Traceback" not in done.stderr
    assert "--data_dir" in done.stderr
    assert not (home / "tensorflow_datasets").exists()


def test_real_cifar10_splits(shared_data_dir):
    train = data_lib.load_split("train", shared_data_dir)
    test = data_lib.load_split("test", shared_data_dir)
    assert len(train) == 50_000 and len(test) == 1_000
    mean = train.images.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(mean, augment.CIFAR10_MEAN, atol=0.05)
    np.testing.assert_allclose(train.images.reshape(-1, 3).std(0), augment.CIFAR10_STD, atol=0.05)
    assert np.bincount(test.labels).tolist() == [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]


# ----- any TFDS image-classification dataset: class count, names and image size from its info -----
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_cifar10_class_names_come_from_its_tfds_info(shared_data_dir):
    assert data_lib.tfds_class_names("cifar10", shared_data_dir) == CIFAR10_NAMES
    config = tiny_config(data={"classes": (9, 3)})
    assert data_lib.class_names(config.data, shared_data_dir) == ("truck", "cat")


@pytest.mark.tf("TFDS input")
@pytest.mark.parametrize("dataset, num_classes, native_shape", [
    ("cifar100", 100, (32, 32, 3)),
    ("svhn_cropped", 10, (32, 32, 3)),
    ("mnist", 10, (28, 28, 3)),  # greyscale made RGB on the host, resized to 32x32 on the device
])
def test_other_tfds_datasets_train_with_their_own_class_count(tmp_path, dataset, num_classes, native_shape):
    import tensorflow_datasets as tfds

    config = tiny_config(epochs=1, data={"dataset": dataset})
    with tfds.testing.mock_data(num_examples=64):
        data = data_lib.load_data(config, MOCKED_DATA_DIR)
        assert data.num_classes == num_classes and len(data.class_names) == num_classes
        assert data.train.images.shape[1:] == native_shape
        summary = train.fit(config, tmp_path, data=data)
    if num_classes > 10:  # labels >= 10 exist and train (a 10-way head made them all-zero targets)
        assert data.train.labels.max() >= 10
    run = load_run(tmp_path, "latest")
    assert run.class_names == data.class_names and run.variables["params"]["head"]["kernel"].shape[-1] == num_classes
    logits = np.asarray(run.logits(data.eval.images))  # native size in, resized on the device as in training
    accuracy = float(np.mean(logits.argmax(-1) == data.eval.labels))
    assert logits.shape == (len(data.eval), num_classes) and accuracy == pytest.approx(summary["test_accuracy"])


@pytest.mark.tf("TFDS input")
def test_a_tfds_dataset_of_varying_image_sizes_is_resized_by_the_image_file_rule():
    import tensorflow_datasets as tfds

    # tf_flowers has only a train split: a validation part of it, and no test split.
    config = tiny_config(data={"dataset": "tf_flowers", "validation_fraction": 0.25, "eval_split": "", "image_size": 24})
    with tfds.testing.mock_data(num_examples=20):
        data = data_lib.load_data(config, MOCKED_DATA_DIR)
    assert data.class_names[:2] == ("dandelion", "daisy")  # tf_flowers names its classes in code
    assert data.train.images.shape[1:] == (24, 24, 3) and len(data.train) + len(data.validation) == 20
    assert data.eval is None


def test_device_resize_and_host_resize_are_the_same_filter():
    """The two places images are resized (fixed-size TFDS images on the device, image files
    on the host) agree within the host's rounding to whole grey levels, up and down."""
    rng = np.random.default_rng(0)
    for height, width in ((28, 28), (64, 64), (100, 37), (17, 50)):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        device = np.asarray(augment.resize(pixels[None], 32)[0])
        np.testing.assert_allclose(device, image_files.array_to_model_image(pixels, 32), atol=1.0)
    same_size = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert augment.resize(same_size, 32) is same_size  # the CIFAR path computes nothing extra


def test_labels_beyond_the_class_count_are_refused():
    split = synthetic_split(20)
    with pytest.raises(ValueError, match=r"train split has labels from 1 to 12, but the run has 10 classes"):
        data_lib.Data(data_lib.ArraySplit(split.images, np.where(split.labels == 0, 12, split.labels)), split, 10)
    with pytest.raises(ValueError, match="3 class names"):
        data_lib.Data(split, split, 10, class_names=("a", "b", "c"))
    assert data_lib.Data(split, split, 10).class_names == tuple(str(i) for i in range(10))


@pytest.mark.tf("TFDS input")
def test_a_class_subset_beyond_the_dataset_is_refused(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=8), pytest.raises(ValueError, match=r"class ids \[10\].*has 10 classes"):
        data_lib.load_data(tiny_config(data={"dataset": "svhn_cropped", "classes": (1, 10)}), MOCKED_DATA_DIR)
