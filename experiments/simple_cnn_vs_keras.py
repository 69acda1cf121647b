"""`make train`'s recipe, side by side with the seed's own Keras recipe (issue 13, item 4).

1. jaxcifar: `python -m jaxcifar.train --config simple_cnn` (the CLI, exactly as `make train`
   runs it, at the recipe's own epochs unless --epochs overrides them), reading summary.json.
2. The seed tutorial's Keras recipe of the same CNN (Adam, batch 32, inputs scaled to
   [0, 1], no augmentation), --keras_epochs (10) with per-epoch evaluation on `test`, wall
   time including that evaluation - the way the reference figure (74.0%, 233 s) was taken.
Both in one sitting on the same machine; results in experiments/results/simple_cnn.json, with
the wall-time ratio (target <= 0.5) and the accuracy margin (target >= 0).

    python experiments/simple_cnn_vs_keras.py --data_dir ../shared/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

from common import write_result


def run_jaxcifar(data_dir: str, workdir: pathlib.Path, epochs: int | None) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "jaxcifar.train", "--config", "simple_cnn", "--workdir", str(workdir),
           "--data_dir", data_dir] + ([f"--config.epochs={epochs}"] if epochs else [])
    start = time.time()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    summary = json.loads((workdir / "summary.json").read_text())
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {"command": " ".join(cmd[1:]), "process_wall_seconds": time.time() - start,
            **{k: summary[k] for k in ("test_accuracy", "epochs_completed", "wall_seconds", "train_seconds",
                                       "train_images_per_second", "devices")},
            "test_accuracy_per_epoch": [h["eval_accuracy"] for h in history]}


def run_keras_seed(data_dir: str, epochs: int) -> dict:
    """The seed's Keras CNN recipe, verbatim in spirit: Conv32/64/128 + MaxPool, Flatten, Dense 10."""
    import keras
    from jaxcifar import data as data_lib

    train, test = data_lib.load_split("train", data_dir), data_lib.load_split("test", data_dir)
    x_train, x_test = train.images.astype("float32") / 255.0, test.images.astype("float32") / 255.0
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(128, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(10),
    ])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.time()
    history = model.fit(x_train, train.labels, batch_size=32, epochs=epochs, validation_data=(x_test, test.labels),
                        verbose=0)
    wall = time.time() - start
    accs = [float(a) for a in history.history["val_accuracy"]]
    return {"keras": keras.__version__, "test_accuracy": accs[-1], "test_accuracy_per_epoch": accs,
            "wall_seconds_including_eval": wall, "params": int(model.count_params()),
            "train_images_per_second_incl_eval": len(train) * epochs / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--epochs", type=int, default=None, help="jaxcifar's epochs; default: the recipe's own")
    parser.add_argument("--keras_epochs", type=int, default=10, help="the seed's Keras recipe trains 10")
    parser.add_argument("--workdir", default="runs/simple_cnn_experiment")
    args = parser.parse_args()
    jax_result = run_jaxcifar(args.data_dir, pathlib.Path(args.workdir).absolute(), args.epochs)
    print("jaxcifar:", jax_result, flush=True)
    keras_result = run_keras_seed(args.data_dir, args.keras_epochs)
    print("keras:", keras_result, flush=True)
    keras_wall = keras_result["wall_seconds_including_eval"]
    write_result("simple_cnn", {
        "jaxcifar": jax_result, "keras_seed_recipe": keras_result,
        # "run": the Trainer's own wall clock (data, compile, train, eval); "whole_process" adds
        # Python and JAX start-up, which the Keras figure (timed around fit) does not include.
        "wall_ratio_to_keras": {"run": jax_result["wall_seconds"] / keras_wall,
                                "whole_process": jax_result["process_wall_seconds"] / keras_wall},
        "accuracy_margin_over_keras": jax_result["test_accuracy"] - keras_result["test_accuracy"],
    })


if __name__ == "__main__":
    main()
