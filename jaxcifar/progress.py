"""What a run shows: each epoch's progress bar, the line after each epoch, and the result
line when it is done; and the bar of a long pass over images (quantize's evaluations)."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import jax
import ml_collections
from tqdm.auto import tqdm

from jaxcifar import data as data_lib
from jaxcifar import steps


class EpochBar:
    """An epoch's progress bar, told of every step (`after_step`) and acting every `every`
    steps, as CommonLoopUtils' periodic actions do: it pulls that window's metric sums to the
    host (the loop's only sync with the devices), passes the averages to `check` (the NaN
    check) and shows them with the window's images/s. Process 0 draws it."""

    def __init__(self, total: int, initial: int, description: str, every: int,
                 train_metrics: Callable[[dict], dict], check: Callable[[dict], None]):
        self.bar = tqdm(total=total, initial=initial, desc=description, disable=jax.process_index() != 0,
                        leave=False, dynamic_ncols=True)
        self.every, self.train_metrics, self.check = every, train_metrics, check
        self.window: dict | None = None
        self.window_start = time.time()  # the loop restarts it once the first step has compiled

    def after_step(self, i: int, metrics: dict) -> None:
        self.window = steps.accumulate(self.window, metrics)
        if (i + 1) % self.every:
            return
        averages = steps.summarize(self.window, self.train_metrics)
        self.check(averages)
        now = time.time()
        self.bar.set_postfix({name: f"{value:.3f}" for name, value in averages.items()},
                             img_s=f"{float(self.window['count']) / (now - self.window_start):.0f}")
        self.bar.update(self.every)
        self.window, self.window_start = None, now

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def images_bar(description: str, total: int, show: bool = True) -> tqdm:
    """A bar over `total` images that shows images/s and tqdm's estimate of the time left
    (from the rate so far: the first batch's compilation skews it only until more batches
    have run). It stays on screen when done, so the line says how long that pass took.
    Process 0 draws it, and only when `show`."""
    return tqdm(total=total, desc=description, unit=" img", disable=not show or jax.process_index() != 0,
                dynamic_ncols=True)


def epoch_line(entry: dict, total_epochs: int, eval_metrics: tuple[str, ...] = ("loss", "accuracy"),
               train_metrics: tuple[str, ...] = ("loss", "accuracy"),
               data_config: ml_collections.ConfigDict | None = None) -> str:
    """The line printed after each epoch, as Keras prints one. `eval_metrics` and
    `train_metrics`: the method's, in order (accuracies as percentages); the eval metrics are
    shown for each split evaluated, named as the run names them (`test` is shown for
    monitoring; only `val` selects)."""
    shown = {"loss": "loss", "accuracy": "acc"}
    names = {"eval": data_config.eval_split if data_config else "eval",
             "val": data_lib.validation_split_name(data_config) if data_config else "val"}

    def values(prefix: str, metrics: tuple[str, ...]) -> str:
        return " ".join(f"{shown.get(name, name)} " + (f"{entry[prefix + name]:.2%}" if "accuracy" in name
                                                       else f"{entry[prefix + name]:.4f}") for name in metrics)

    evals = "  |  ".join(f"{names[prefix]} {values(prefix + '_', eval_metrics)}" for prefix in ("val", "eval")
                         if f"{prefix}_{eval_metrics[0]}" in entry)
    speed = entry["train_images_per_second"]
    timing = (f"{entry['epoch_train_seconds']:.1f} s, {speed:,.0f} img/s" if speed is not None
              else "speed not measured: every step of this epoch included compilation")
    return (f"epoch {entry['epoch']}/{total_epochs} [{entry['stage']}]  "
            f"train {values('train_', train_metrics)}  |  {evals}  |  {timing}")


def images_per_second(images: float, seconds: float) -> float | None:
    """Training speed, or None when nothing was timed (a one-step epoch is all compilation)."""
    return images / seconds if images and seconds > 0 else None


def finished_line(summary: dict, workdir: str | pathlib.Path) -> str:
    """What the command line prints when a run is done: its result, length, speed and where it is."""
    speed = summary["train_images_per_second"]
    timing = (f"train images/s={speed:.0f}" if speed is not None
              else "train speed not measured: every step included compilation")
    return (f"{result_line(summary)}; epochs={summary['epochs_completed']}; {timing}; "
            f"results in {pathlib.Path(workdir).absolute()}/summary.json")


def result_line(summary: dict) -> str:
    """What a finished run reports: the test (else validation) metric of its reported weights,
    and which weights those are."""
    prefix, split, count = (("test", summary["eval_split"], summary["eval_examples"]) if summary["eval_split"]
                            else ("val", summary["validation_split"], summary["validation_examples"]))
    selection = summary["selection"]
    chosen = (f"best on {selection['split']} (step {selection['step']})" if selection["weights"] == "best"
              else f"final (step {selection['step']})")
    return f"{prefix}_{summary['metric']}={summary[prefix + '_' + summary['metric']]:.4f} on {count} {split} images, weights {chosen}"
