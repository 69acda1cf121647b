"""The PEFT sweep's logic (experiments/efficient_finetune.py) and its table
(experiments/report.py), without training: the rate each mode gets, the validation split
held out of the label budget, mode -> config, and the table rendered from the records."""

import pathlib

import numpy as np
import pytest

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def ef(monkeypatch):
    """experiments/ importable, as its scripts import one another."""
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    import efficient_finetune

    return efficient_finetune


def test_the_best_rate_wins_a_tie_goes_to_the_smaller_and_a_diverged_rate_never_wins(ef):
    assert ef.choose_lr({0.01: 0.80, 0.03: 0.84, 0.1: 0.82}) == 0.03
    assert ef.choose_lr({0.1: 0.84, 0.03: 0.84, 0.01: 0.80}) == 0.03
    assert ef.choose_lr({0.01: 0.5, 0.1: None}) == 0.01
    with pytest.raises(ValueError, match="diverged"):
        ef.choose_lr({0.01: None})


def test_a_grid_whose_edge_wins_is_extended_past_it_one_rate_at_a_time(ef):
    def tried(scores):  # run -> its record, for the rates `scores` knows; the rates tried, in order
        order = []

        def run(lr):
            order.append(lr)
            return {"val_accuracy": scores[lr]}

        return ef.tried_rates([0.01, 0.03, 0.09], run), order

    rising = {0.01: 0.5, 0.03: 0.6, 0.09: 0.7, 0.27: 0.8, 0.81: 0.9}
    records, order = tried(rising)
    assert order == [0.01, 0.03, 0.09, 0.27, 0.81]  # two extensions at most, though 0.81 still wins
    assert list(records) == order and records[0.81] == {"val_accuracy": 0.9}
    assert tried({0.01: 0.5, 0.03: 0.7, 0.09: 0.6})[1] == [0.01, 0.03, 0.09]  # the best inside: done
    falling = {0.001111: 0.75, 0.003333: 0.8, 0.01: 0.7, 0.03: 0.6, 0.09: 0.5}
    assert tried(falling)[1] == [0.01, 0.03, 0.09, 0.003333, 0.001111]  # /3, 4 significant figures
    # A diverged rate past the best ends it; so does a rate past the edge that scores lower.
    assert tried({0.01: 0.5, 0.03: 0.6, 0.09: None})[1] == [0.01, 0.03, 0.09]
    assert tried({0.01: 0.5, 0.03: 0.6, 0.09: 0.7, 0.27: 0.65})[1] == [0.01, 0.03, 0.09, 0.27]


def test_each_row_sets_its_peft_block_and_only_the_second_stage_rate(ef):
    rows = ef.modes((4, 8))
    assert list(rows) == ["linear", "bitfit", "lora_r4", "lora_r8", "lora_r4_norms", "lora_r8_norms", "full"]
    for row, mode in rows.items():
        base = ef.split_cifar_config(40, 0)
        lr = ef.lr_grid(base, mode)[0]
        config = ef.with_mode(ef.split_cifar_config(40, 0), mode, lr)
        config_lib.validate(config, 1)
        assert (config.peft.mode, config.peft.train_norms) == (mode.mode, mode.train_norms), row
        if mode.mode == "lora":
            assert config.peft.rank == config.peft.alpha == mode.rank
        assert dict(config.stages[0]) == dict(base.stages[0])  # the head-only stage is every mode's
        assert dict(config.stages[1])["lr"] == lr
    # The grid is around the untuned rates: the recipe's fine-tuning rate for full, stage 1's for PEFT.
    config = ef.split_cifar_config(40, 0)
    assert ef.lr_grid(config, rows["full"]) == pytest.approx([0.01 / 3, 0.01, 0.03], rel=1e-3)
    assert ef.lr_grid(config, rows["lora_r4_norms"]) == pytest.approx([0.05 / 3, 0.05, 0.15], rel=1e-3)


def test_the_sweep_validates_on_images_held_out_of_the_label_budget_and_never_reads_test(ef):
    config = ef.for_lr_sweep(ef.split_cifar_config(40, 0))
    d = config.data
    assert (d.eval_split, tuple(d.extra_eval_splits)) == ("", ())
    config_lib.validate(config, 1)
    # As data.load_data does it, on a train split of 5 classes (as read_split returns classes 5-9,
    # relabelled 0-4) whose every image is unique.
    n = 3000
    labels = np.arange(n, dtype=np.int32) % 5
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    whole = data_lib.ArraySplit(images, labels)
    labelled, _ = data_lib.split_label_budget(whole, d.examples_per_class, d.label_seed, d.labels_csv)
    train, validation = data_lib.split_train(d, labelled)

    def ids(split):
        return set((split.images[:, 0, 0, 0].astype(int) + 256 * split.images[:, 0, 0, 1].astype(int)).tolist())

    assert len(labelled) == 100 * 5
    assert ids(validation) <= ids(labelled) and not ids(validation) & ids(train)
    assert ids(validation) | ids(train) == ids(labelled)
    assert np.bincount(validation.labels).tolist() == [20] * 5  # 20 of each class's 100, stratified


def record(val=None, test=None, diverged=False):
    if diverged:
        return {"diverged": "NaN"}
    return {"test_accuracy": test, "extra_eval_accuracy": {"test_jpeg": test} if test else {}, "val_accuracy": val,
            "val_accuracy_best_epoch": val, "validation_examples": 100, "trainable_parameters": 10,
            "parameters": 1000, "saved_bytes": 4096, "seconds_per_epoch": 2.0}


def test_a_record_written_is_read_back_instead_of_running_again(ef, tmp_path):
    calls = []

    def run():
        calls.append(1)
        return record(val=0.5)

    first = ef.recorded_run(tmp_path / "records", "split_full_lr0.01_0", run, {"lr": 0.01})
    again = ef.recorded_run(tmp_path / "records", "split_full_lr0.01_0", run, {"lr": 0.01})
    assert first == again == {"lr": 0.01, **record(val=0.5)} and len(calls) == 1


def test_the_table_and_the_gap_to_full_are_rendered_from_the_records(ef, monkeypatch):
    import report

    rows = {row: mode for row, mode in ef.modes((4,)).items() if row in ("lora_r4", "full")}
    sweeps = {"lora_r4": {0.01: record(0.70), 0.05: record(0.78), 0.15: record(diverged=True)},
              "full": {0.003: record(0.80), 0.01: record(0.80), 0.03: record(0.79)}}
    tests = {"lora_r4": (0.80, 0.82, 0.81), "full": (0.84, 0.85, 0.86)}
    results = {row: {"sweep": sweep, "lr": ef.choose_lr({lr: r.get("val_accuracy") for lr, r in sweep.items()}),
                     "runs": [record(test=t) for t in tests[row]]} for row, sweep in sweeps.items()}
    modes = ef.mode_table(results, rows)
    modes["full"]["trainable_fraction"] = 1.0
    assert modes["lora_r4"]["chosen_at_edge"] is False and modes["lora_r4"]["lr_sweep"]["0.15"] == {"diverged": "NaN"}
    part = {"network": "net", "eval": "test", "seeds": [0, 1, 2], "modes": modes}
    result = {"split_cifar": part, "ssl": None, "skipped": {"ssl": "no backbone"},
              "lr_sweep": {"multiples": list(ef.LR_MULTIPLES), "seed": 0},
              "lora": {"alpha": "= rank"}, "command": "python experiments/efficient_finetune.py", "date": "d",
              "machine": {"cores": 2, "cpu": "cpu"}}
    monkeypatch.setattr(report, "load", lambda name: result)
    text = report.efficient_finetune()
    assert "| lora, rank 4 | 0.05 | 81.0 ± 0.8% |" in text
    assert "| full | 0.003 (grid edge) | 85.0 ± 0.8% |" in text
    assert "| full | **80.0% at 0.003**, 80.0% at 0.01, 79.0% at 0.03 |" in text
    assert "| lora, rank 4 | 70.0% at 0.01, **78.0% at 0.05**, diverged at 0.15 |" in text
    assert "lora, rank 4 (1.00%), 81.0 ± 0.8% on `test` against full fine-tuning's 85.0 ± 0.8%: 4.0 points behind" in text
    assert "Not run: ssl, no backbone." in text


def test_a_tiny_sweep_scores_rates_on_validation_only_then_reruns_from_its_records(ef, monkeypatch, tmp_path):
    from jaxcifar import train
    from jaxcifar.testing import synthetic_split, tiny_config

    # tiny_config's simple_cnn: the sweep's logic at the least compile time (LoRA on its convs;
    # tests/test_peft.py covers a network with BatchNorm)
    net = dict(param_groups={"backbone": "backbone/.*", "head": "head/.*"}, lr_multipliers={"backbone": 1.0, "head": 1.0})
    stages = ({"name": "frozen", "epochs": 1, "lr_multipliers": {"backbone": None, "head": 1.0}},
              {"name": "finetune", "epochs": 1, "lr": 1e-3})
    train.fit(tiny_config(**net, epochs=1), tmp_path / "base", data=data_lib.Data(synthetic_split(64), None, 10,
                                                                                   validation=synthetic_split(20, 1)))
    loaded = []

    def load_data(config, data_dir):  # synthetic splits, shaped by the config as load_data shapes them
        loaded.append((config.data.validation_fraction, config.data.eval_split))
        train_split, validation = data_lib.split_train(config.data, synthetic_split(64, 2))
        return data_lib.Data(train_split, synthetic_split(20, 3) if config.data.eval_split else None, 10,
                             validation=validation)

    monkeypatch.setattr(ef.data_lib, "load_data", load_data)
    monkeypatch.setattr(ef, "MAX_EXTENSIONS", 0)  # the grid's extension is tested on its own, above
    task = ef.Task("tiny", lambda seed: tiny_config(**net, epochs=2, seed=seed, stages=stages), tmp_path / "base", {})
    rows = {"lora_r2_norms": ef.Mode("lora", 2, True)}
    results = ef.sweep(task, rows, [0], tmp_path / "out", None)
    assert loaded == [(ef.VALIDATION_FRACTION, ""), (0.0, "test")]  # phase 1 never loads a test split
    r = results["lora_r2_norms"]
    assert all(run["test_accuracy"] is None and run["validation_examples"] > 0 for run in r["sweep"].values())
    assert r["lr"] in r["sweep"] and r["runs"][0]["test_accuracy"] is not None and r["runs"][0]["saved_bytes"] > 0
    assert len(list((tmp_path / "out" / "records").glob("*.json"))) == 4
    monkeypatch.setattr(ef, "measure", lambda *a: pytest.fail("a recorded run ran again"))
    assert ef.sweep(task, rows, [0], tmp_path / "out", None) == results
