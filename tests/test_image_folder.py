"""Training on a folder of your own images (`--config.data.image_folder=DIR`): reading and
its errors, the validation hold-out, unlabelled images in DIR/unlabeled/, the CLI end to
end (train, evaluate, predict), and transfer from a CIFAR-like run onto a folder with
another class count."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcifar import checkpoint, data as data_lib, image_files, train
from jaxcifar.runs import load_run
from jaxcifar.workdir import Workdir
from jaxcifar.testing import synthetic_split, tiny_config
from jaxcifar.cli import evaluate as evaluate_cli
from jaxcifar.cli import predict as predict_cli

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to

# Three colour-coded classes, so a tiny model can tell them apart.
COLOURS = {"cat": (200, 60, 60), "dog": (60, 200, 60), "fish": (60, 60, 200)}
SIZES = ((20, 30), (48, 48), (64, 40), (33, 17))  # (height, width): none is 32x32


def write_images(directory: pathlib.Path, colour: tuple[int, int, int], count: int, seed: int) -> None:
    """`count` noisy images of one colour, of several sizes, alternately PNG and JPEG."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        pixels = np.clip(np.asarray(colour) + rng.integers(-50, 50, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(directory / f"{i:03d}.{'jpg' if i % 2 else 'png'}")


def write_folder(root: pathlib.Path, per_class: dict[str, int], colours=COLOURS) -> pathlib.Path:
    """ROOT/<split>/<class>/*.{png,jpg} for each split -> images per class."""
    for s, (split, count) in enumerate(per_class.items()):
        for c, (name, colour) in enumerate(colours.items()):
            write_images(root / split / name, colour, count, seed=10 * s + c)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images"), {"train": 24, "test": 6})


def folder_config(root, **fields):
    return tiny_config(**{"batch_size": 16, "eval_batch_size": 10, "data": {"image_folder": str(root)}, **fields})


def test_folder_is_read_with_the_image_file_rule_and_named_by_its_folders(folder):
    data = data_lib.load_data(folder_config(folder))
    assert data.class_names == ("cat", "dog", "fish")  # sorted folder names, label = position
    assert data.train.images.shape == (72, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert data.eval.images.shape == (18, 32, 32, 3)
    assert np.bincount(data.train.labels).tolist() == [24, 24, 24]
    # The same file gives the same pixels as predict's reader (one rule), and its folder's label.
    fish_jpeg = sorted((folder / "train" / "fish").iterdir())[1]  # 001.jpg
    second_fish = np.flatnonzero(data.train.labels == 2)[1]
    np.testing.assert_array_equal(data.train.images[second_fish], image_files.read_image(fish_jpeg, 32))
    # Colour survives the resize: red channel dominates in cats.
    cats = data.train.images[data.train.labels == 0].reshape(-1, 3).mean(0)
    assert cats[0] > cats[1] + 80 and cats[0] > cats[2] + 80


def test_image_size_sets_the_size_images_are_read_at(folder):
    data = data_lib.load_data(folder_config(folder, data={"image_folder": str(folder), "image_size": 24}))
    assert data.train.images.shape[1:] == (24, 24, 3)


def test_validation_fraction_holds_out_each_class_deterministically(folder, tmp_path):
    train_only = tmp_path / "train_only"
    shutil.copytree(folder / "train", train_only / "train")  # no test/ folder at all
    held_out = {"image_folder": str(train_only), "validation_fraction": 0.25, "eval_split": ""}
    config = folder_config(train_only, data=held_out)
    data = data_lib.load_data(config)
    assert data.eval is None  # eval_split='': no test split to read
    assert np.bincount(data.validation.labels).tolist() == [6, 6, 6]  # stratified: a quarter of each class
    assert np.bincount(data.train.labels).tolist() == [18, 18, 18]
    whole = data_lib.read_split(config.data, "train")
    together = np.concatenate([data.train.images, data.validation.images]).reshape(72, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, whole.images.reshape(72, -1)))  # a partition
    again = data_lib.load_data(config)
    np.testing.assert_array_equal(again.validation.images, data.validation.images)
    # The run's seed does not move it: every seed of a comparison validates on the same images.
    np.testing.assert_array_equal(data_lib.load_data(folder_config(train_only, seed=5, data=held_out)).validation.images,
                                  data.validation.images)


def test_hold_out_keeps_one_of_each_class_on_both_sides():
    split = data_lib.ArraySplit(np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2, 1), np.array([0, 0, 0, 0, 0, 1, 1]))
    kept, held = data_lib.hold_out(split, 0.01)
    assert np.bincount(held.labels).tolist() == [1, 1] and np.bincount(kept.labels).tolist() == [4, 1]
    kept, held = data_lib.hold_out(split, 0.99)
    assert np.bincount(kept.labels).tolist() == [1, 1]
    kept, held = data_lib.hold_out(split, 0.0)
    assert len(held) == 0 and np.array_equal(kept.images, split.images)


def test_unlabeled_images_join_the_stream_without_labels(tmp_path):
    root = write_folder(tmp_path / "images", {"train": 6, "test": 2})
    write_images(root / "unlabeled" / "any" / "depth", (128, 128, 128), 5, seed=99)
    data = data_lib.load_data(folder_config(root, data={"image_folder": str(root), "examples_per_class": 2}))
    assert len(data.train) == 3 * 2 and len(data.unlabeled) == 3 * 4 + 5
    np.testing.assert_array_equal(data.unlabeled.images[-5:].reshape(5, -1).mean(1).round(-1), 130)
    without_budget = data_lib.load_data(folder_config(root))
    assert len(without_budget.train) == 18 and len(without_budget.unlabeled) == 5
    (root / "unlabeled" / "any" / "depth" / "000.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="1 of 5 images in .*unlabeled could not be read"):
        data_lib.load_data(folder_config(root))


def break_folder(root: pathlib.Path, problem: str) -> None:
    """One of the folder mistakes a user makes, applied to a good folder at ROOT."""
    if problem == "empty class folder":
        for f in (root / "test" / "dog").iterdir():
            f.unlink()
        (root / "test" / "dog" / "notes.txt").write_text("not an image")
    elif problem == "unreadable image":
        (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    elif problem == "test class missing from train":
        write_images(root / "test" / "bird", (90, 90, 90), 2, seed=3)
    elif problem == "only one class":
        for name in ("dog", "fish"):
            shutil.rmtree(root / "train" / name)
    elif problem == "missing train folder":
        shutil.rmtree(root / "train")
    elif problem == "images outside class folders":
        write_images(root / "train", (90, 90, 90), 1, seed=3)


@pytest.mark.parametrize("problem, message", [
    ("empty class folder", r"Class folder .*test/dog holds no \.jpg/\.jpeg/\.png images \(ignored: \['notes.txt'\]\)"),
    ("unreadable image", r"1 of 13 images in .*train could not be read.*\n  .*train/cat/broken\.jpg: not an image"),
    ("test class missing from train", r"test has class folders \['bird'\] that the train split does not have"),
    ("only one class", r"train has 1 class folder\(s\) \['cat'\]; a classifier needs at least two"),
    ("missing train folder", r"train does not exist \(folders in .*: \['test'\]\)"),
    ("images outside class folders", r"train holds images outside class folders \(\['000.png'\]\)"),
])
def test_bad_folders_get_errors_that_name_the_problem(tmp_path, problem, message):
    root = write_folder(tmp_path / "images", {"train": 4, "test": 2})
    break_folder(root, problem)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        data_lib.load_data(folder_config(root))


def run_training_cli(workdir, image_folder, *overrides):
    return subprocess.run(
        [sys.executable, "-m", "jaxcifar.train", "--config", "simple_cnn", "--workdir", str(workdir),
         f"--config.data.image_folder={image_folder}", "--config.epochs=2", "--config.batch_size=16",
         "--config.eval_batch_size=10", "--config.log_every_steps=1", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.fixture(scope="module")
def cli_run(folder, tmp_path_factory):
    """The folder trained from the shell, exactly as the README says (no --data_dir)."""
    workdir = tmp_path_factory.mktemp("folder_run") / "run"
    proc = run_training_cli(workdir, folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


@pytest.mark.slow  # a fresh process
def test_cli_trains_on_the_folder_and_records_its_classes(cli_run):
    workdir, proc = cli_run
    assert "test_accuracy=" in proc.stdout and "on 18 test images" in proc.stdout
    assert json.loads((workdir / "classes.json").read_text()) == {"class_names": ["cat", "dog", "fish"]}
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["eval_examples"] == 18


@pytest.mark.slow  # a fresh process
def test_evaluate_names_the_folder_classes_and_matches_the_summary(cli_run, capsys):
    workdir, _ = cli_run
    assert evaluate_cli.main(["--workdir", str(workdir), "--checkpoint", "latest"]) == 0  # no --data_dir needed
    report = json.loads((workdir / "eval" / "test" / "report.json").read_text())
    assert report["class_names"] == ["cat", "dog", "fish"]
    assert [c["class"] for c in report["per_class"]] == ["cat", "dog", "fish"]
    assert [c["support"] for c in report["per_class"]] == [6, 6, 6]
    summary = json.loads((workdir / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)
    assert "weakest classes (recall): " in capsys.readouterr().out


@pytest.mark.slow  # a fresh process
def test_predict_names_the_folder_classes_and_agrees_with_the_run(cli_run, folder, capsys):
    workdir, _ = cli_run
    files = [str(p) for p in sorted((folder / "test" / "fish").iterdir())[:2]]
    assert predict_cli.main(["--workdir", str(workdir), "--checkpoint", "latest", "--json", "--top_k", "3", *files]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    run = load_run(workdir, "latest")
    data = data_lib.load_data(run.config)
    expected = jax.nn.softmax(run.logits(data.eval.images[data.eval.labels == 2][:2]), axis=-1)
    for result, probabilities in zip(results, np.asarray(expected)):
        assert {p["class"] for p in result["predictions"]} == {"cat", "dog", "fish"}
        got = {p["class"]: p["probability"] for p in result["predictions"]}
        np.testing.assert_allclose([got[name] for name in run.class_names], probabilities, atol=1e-6)


def test_a_workdir_trained_on_other_classes_is_refused_then_moved_aside(folder, tmp_path):
    config = folder_config(folder)
    Workdir(tmp_path / "run", config, class_names=("cat", "dog", "fish"))
    (tmp_path / "run" / "checkpoints" / "8").mkdir(parents=True)  # it trained: it has something to protect
    with pytest.raises(FileExistsError, match=r"class names: \['cat', 'dog', 'fish'\] -> \['cat', 'dog', 'eel'\]"):
        Workdir(tmp_path / "run", config, class_names=("cat", "dog", "eel"))
    Workdir(tmp_path / "run", config, overwrite=True, class_names=("cat", "dog", "eel"))
    assert json.loads((tmp_path / "run" / "classes.json").read_text())["class_names"] == ["cat", "dog", "eel"]
    assert len(list(tmp_path.glob("run.replaced-*"))) == 1


@pytest.mark.slow  # a fresh process
def test_a_run_without_classes_json_says_how_to_get_one(cli_run, tmp_path):
    copy = tmp_path / "old_run"
    shutil.copytree(cli_run[0], copy)
    (copy / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="Run its training command once more"):
        load_run(copy, "latest")


def test_transfer_from_a_cifar_like_run_onto_the_folder_gets_a_new_head(folder, tmp_path):
    source = tmp_path / "cifar_like"
    train.fit(tiny_config(epochs=1), source, data=data_lib.Data(synthetic_split(128, 0), synthetic_split(40, 1), 10))
    pretrained, _ = checkpoint.load_variables(source, "best")
    frozen_backbone = folder_config(folder, param_groups={"backbone": "backbone/.*", "head": "head/.*"},
                                    lr_multipliers={"backbone": None, "head": 1.0}, epochs=1)
    summary = train.fit(frozen_backbone, tmp_path / "transfer", init_from=str(source))
    run = load_run(tmp_path / "transfer", "latest")
    assert run.class_names == ("cat", "dog", "fish") and summary["eval_examples"] == 18
    assert run.variables["params"]["head"]["kernel"].shape == (512, 3)  # re-initialised for 3 classes
    for got, want in zip(jax.tree_util.tree_leaves(run.variables["params"]["backbone"]),
                         jax.tree_util.tree_leaves(pretrained["params"]["backbone"])):
        np.testing.assert_array_equal(got, want)  # taken over from the source, then frozen


def test_a_held_out_split_is_named_after_the_train_split_and_selects(folder, tmp_path):
    held_out = folder_config(folder, data={"image_folder": str(folder), "validation_fraction": 0.25})
    assert data_lib.validation_split_name(held_out.data) == "train-validation"
    held_out.epochs = 1
    summary = train.fit(held_out, tmp_path / "run", data=data_lib.load_data(held_out))
    # summary.json names what was evaluated, and what selected the reported weights
    assert (summary["eval_split"], summary["validation_split"]) == ("test", "train-validation")
    assert summary["selection"]["split"] == "train-validation" and summary["validation_examples"] == 18
