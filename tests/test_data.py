import numpy as np
import pytest

from jaxcifar import augment, data as data_lib
from tests.conftest import synthetic_split


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a = data_lib.epoch_permutation(1000, seed=3, epoch=2)
    assert np.array_equal(a, data_lib.epoch_permutation(1000, seed=3, epoch=2))
    assert not np.array_equal(a, data_lib.epoch_permutation(1000, seed=3, epoch=3))
    assert not np.array_equal(a, data_lib.epoch_permutation(1000, seed=4, epoch=2))
    assert sorted(a) == list(range(1000))


def test_train_batches_drop_remainder_and_resume_skips_consumed_batches():
    split = synthetic_split(100)
    full = list(data_lib.train_batches(split, 32, seed=0, epoch=1))
    assert len(full) == 3 and all(b["image"].shape == (32, 32, 32, 3) for b in full)
    assert len({int(i) for b in full for i in b["label"]}) > 1
    resumed = list(data_lib.train_batches(split, 32, seed=0, epoch=1, start_step=2))
    assert len(resumed) == 1 and np.array_equal(resumed[0]["image"], full[2]["image"])


def test_processes_get_disjoint_rows_of_the_same_global_batch():
    split = synthetic_split(64)
    whole = next(data_lib.train_batches(split, 32, seed=5, epoch=0))
    parts = [next(data_lib.train_batches(split, 32, seed=5, epoch=0, process_index=p, process_count=2))
             for p in range(2)]
    assert np.array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_count_every_example_exactly_once(process_count):
    split = synthetic_split(77)
    seen = []
    for p in range(process_count):
        batches = list(data_lib.eval_batches(split, 20, process_index=p, process_count=process_count))
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


def test_load_split_reads_tfds_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        split = data_lib.load_split("train")
    assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.labels.max() < 10


def test_missing_dataset_error_names_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data_dir.*TFDS_DATA_DIR"):
        data_lib.load_split("train", data_dir=str(tmp_path))


def test_real_cifar10_splits(shared_data_dir):
    train = data_lib.load_split("train", shared_data_dir)
    test = data_lib.load_split("test", shared_data_dir)
    assert len(train) == 50_000 and len(test) == 1_000
    mean = train.images.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(mean, augment.CIFAR10_MEAN, atol=0.05)
    np.testing.assert_allclose(train.images.reshape(-1, 3).std(0), augment.CIFAR10_STD, atol=0.05)
    assert np.bincount(test.labels).tolist() == [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
