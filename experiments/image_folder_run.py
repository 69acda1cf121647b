"""Training on a folder of your own images, end to end from the shell.

Unless --image_folder names a folder of yours, makes one from CIFAR-10 that looks like
photos a user would collect: --train_per_class images per class from `train` and all 1,000
exact `test` images, each enlarged to a random size between 24 and 96 pixels a side (rarely
square) and saved as JPEG (quality 90) or PNG, in DIR/{train,test}/<class name>/. Then
  1. trains the simple_cnn recipe on it with the command line, no --data_dir:
     python -m jaxcifar.train --config simple_cnn --workdir W --config.data.image_folder=DIR ...
  2. evaluates the run (per-class recall, named by the folder names),
  3. predicts the first test file of each class with `jaxcifar.predict`,
  4. for a generated folder, trains the same recipe on the same images straight from TFDS
     (CIFAR-10 with --config.data.examples_per_class), the baseline the folder run should
     come close to,
and writes experiments/results/image_folder_run.json.

Every file is resized back to 32x32 by the image-file rule (Pillow bilinear) when read, so
the network sees blurred, JPEG-damaged copies of the baseline's images.

    python experiments/image_folder_run.py --data_dir ../shared/tensorflow_datasets
    python experiments/image_folder_run.py --image_folder ~/my_photos --epochs 20
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
from common import write_result
from PIL import Image

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import evaluate, predict, train
from jaxcifar.runs import load_run

REPO = pathlib.Path(__file__).resolve().parents[1]
SIDE_RANGE = (24, 96)  # pixels per side of the generated files


def write_split(split: data_lib.ArraySplit, class_names: tuple[str, ...], directory: pathlib.Path,
                rng: np.random.Generator) -> None:
    """Each image enlarged to a random size and saved as JPEG or PNG under DIRECTORY/<class>/."""
    for name in class_names:
        (directory / name).mkdir(parents=True)
    for i, (pixels, label) in enumerate(zip(split.images, split.labels)):
        width, height = rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, 2)
        image = Image.fromarray(pixels).resize((int(width), int(height)), Image.Resampling.BICUBIC)
        image.save(directory / class_names[label] / f"{i:05d}.{'jpg' if i % 2 else 'png'}", quality=90)


def make_folder(data_dir: str | None, root: pathlib.Path, train_per_class: int) -> dict:
    """The CIFAR-derived image folder; returns what it holds."""
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    train = data_lib.select_examples(data_lib.load_split("train", data_dir), examples_per_class=train_per_class)
    test = data_lib.load_split("test", data_dir)
    class_names = data_lib.tfds_class_names("cifar10", data_dir)
    write_split(train, class_names, root / "train", rng)
    write_split(test, class_names, root / "test", rng)
    return {"source": "cifar10 train (first images of each class) and test, enlarged to random sizes "
                      f"{SIDE_RANGE[0]}-{SIDE_RANGE[1]} px, JPEG q90 / PNG alternately",
            "train_images": len(train), "test_images": len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="TFDS dir holding cifar10 (to generate the folder)")
    parser.add_argument("--image_folder", default=None, help="train on this folder instead of generating one")
    parser.add_argument("--out_dir", default="runs/image_folder", help="generated folder and workdir go here")
    parser.add_argument("--train_per_class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir).absolute()
    start = time.time()
    folder = {"path": args.image_folder}
    if args.image_folder is None:
        folder = {"path": str(out / "images"), **make_folder(args.data_dir, out / "images", args.train_per_class)}
    folder["seconds_to_generate"] = time.time() - start

    workdir = out / "run"
    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "jaxcifar.train", "--config", "simple_cnn", "--workdir", str(workdir),
               f"--config.data.image_folder={folder['path']}", f"--config.epochs={args.epochs}"]
    trained = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if trained.returncode:
        sys.exit(f"training failed ({trained.returncode}):\n{trained.stderr[-3000:]}")
    summary = json.loads((workdir / "summary.json").read_text())

    report, _ = evaluate.evaluate_workdir(workdir, "latest")
    run = load_run(workdir, "latest")
    test_dir = pathlib.Path(folder["path"]) / "test"
    samples = [str(min((test_dir / name).iterdir())) for name in run.class_names]
    predictions = predict.predict_files(run, samples, k=3)
    baseline = None
    if args.image_folder is None:
        config = config_lib.load_recipe("simple_cnn")
        config.epochs, config.data.examples_per_class = args.epochs, args.train_per_class
        shutil.rmtree(out / "baseline", ignore_errors=True)
        baseline = train.fit(config, out / "baseline", data_dir=args.data_dir)["test_accuracy"]

    write_result("image_folder_run", {
        "what": "simple_cnn trained from the shell on a folder of image files of many sizes (no --data_dir), "
                "then evaluated and used for prediction",
        "train_command": " ".join(["python", *command[1:]]),
        "folder": folder,
        "class_names": list(run.class_names),
        "test_accuracy": summary["test_accuracy"],
        "baseline_same_images_from_tfds_test_accuracy": baseline,
        "eval_examples": summary["eval_examples"],
        "epochs": summary["epochs_completed"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds_training_command": summary["wall_seconds"],
        "train_images_per_second": summary["train_images_per_second"],
        "per_epoch": [{k: h[k] for k in ("epoch", "train_accuracy", "eval_accuracy")} for h in
                      map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())],
        "evaluate": {"accuracy": report["accuracy"],
                     "recall": {c["class"]: round(c["recall"], 3) for c in report["per_class"]},
                     "most_confused": report["most_confused"][:3]},
        "predict_first_test_file_of_each_class": [
            {"folder": pathlib.Path(p["file"]).parent.name, "top3": [(t["class"], round(t["probability"], 3))
                                                                     for t in p["predictions"]]}
            for p in predictions],
        "total_wall_seconds": time.time() - start,
    })


if __name__ == "__main__":
    main()
