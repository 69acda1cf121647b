import dataclasses
import json
import logging

import numpy as np
import pytest

from jaxcifar import checkpoint, evaluate, train
from jaxcifar.evaluators.classification import mean_cross_entropy
from jaxcifar.runs import load_run
from jaxcifar.testing import tiny_config
from jaxcifar.cli import evaluate as evaluate_cli

# Hand-checkable: 3 classes, 8 examples.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PREDICTIONS = np.array([0, 0, 1, 1, 2, 2, 2, 0])
# rows = true, columns = predicted
EXPECTED_CM = np.array([[2, 1, 0],
                        [0, 1, 1],
                        [1, 0, 2]])


def test_confusion_matrix_by_hand():
    cm = evaluate.confusion_matrix(LABELS, PREDICTIONS, 3)
    np.testing.assert_array_equal(cm, EXPECTED_CM)
    assert evaluate.confusion_matrix(np.array([], int), np.array([], int), 2).sum() == 0


def test_per_class_metrics_by_hand():
    m = evaluate.per_class_metrics(EXPECTED_CM)
    np.testing.assert_array_equal(m["support"], [3, 2, 3])
    np.testing.assert_allclose(m["precision"], [2 / 3, 1 / 2, 2 / 3])  # column sums 3, 2, 3
    np.testing.assert_allclose(m["recall"], [2 / 3, 1 / 2, 2 / 3])
    # one-vs-rest: class 0 has TP 2, FN 1, FP 1, TN 4 -> 6/8; class 1: TP 1, FN 1, FP 1, TN 5 -> 6/8
    np.testing.assert_allclose(m["accuracy"], [6 / 8, 6 / 8, 6 / 8])


def test_per_class_metrics_zero_division_gives_zero():
    m = evaluate.per_class_metrics(np.array([[3, 0], [0, 0]]))  # class 1: never present, never predicted
    assert m["precision"][1] == 0.0 and m["recall"][1] == 0.0 and m["accuracy"][1] == 1.0


def test_most_confused_pairs_sorted_and_without_zeros():
    cm = np.array([[5, 3, 0], [1, 4, 3], [0, 2, 9]])
    assert evaluate.most_confused_pairs(cm, k=3) == [(0, 1, 3), (1, 2, 3), (2, 1, 2)]
    assert evaluate.most_confused_pairs(np.diag([4, 4]), k=5) == []


def test_build_report_matches_hand_values():
    logits = np.eye(3)[PREDICTIONS] * 5.0
    report = evaluate.build_report(LABELS, logits, ("a", "b", "c"))
    assert report["accuracy"] == 5 / 8 and report["num_examples"] == 8
    assert report["confusion_matrix"] == EXPECTED_CM.tolist()
    assert report["most_confused"][0] == {"true": "a", "predicted": "b", "count": 1}
    assert [c["support"] for c in report["per_class"]] == [3, 2, 3]
    expected_loss = -np.mean(np.where(PREDICTIONS == LABELS, 5.0, 0.0) - np.log(np.exp(5.0) + 2))
    assert report["loss"] == pytest.approx(expected_loss)


def test_stage_boundaries_between_epochs_where_the_stage_changes():
    history = [{"epoch": 1, "stage": "frozen"}, {"epoch": 2, "stage": "frozen"}, {"epoch": 3, "stage": "finetune"},
               {"epoch": 4, "stage": "finetune"}, {"epoch": 5, "stage": "polish"}]
    assert evaluate.stage_boundaries(history) == [(2.5, "finetune"), (4.5, "polish")]
    assert evaluate.stage_boundaries(history[:2]) == []


def test_evaluate_in_memory_split_matches_summary_and_writes_files(tiny_run_dir):
    workdir, eval_split, summary = tiny_run_dir
    report, paths = evaluate.evaluate_workdir(workdir, "latest", split=eval_split)
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)
    assert report["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert report["checkpoint_step"] == summary["steps"] and report["num_examples"] == 77
    assert np.sum(report["confusion_matrix"]) == 77
    assert report["split"] == "in-memory"
    assert json.loads((workdir / "eval" / "in-memory" / "report.json").read_text()) == json.loads(json.dumps(report))
    for name in evaluate.PLOTS:
        assert paths[name].stat().st_size > 1000, name


def test_evaluate_run_with_tta_averages_mirrored_logits(tiny_run_dir):
    workdir, eval_split, _ = tiny_run_dir
    run = load_run(workdir, "latest")
    plain = evaluate.evaluate_run(run, eval_split, tta=False, batch_size=32)
    flipped = dataclasses.replace(eval_split, images=eval_split.images[:, :, ::-1])
    mirrored = evaluate.evaluate_run(run, flipped, tta=False, batch_size=32)
    tta = evaluate.evaluate_run(run, eval_split, tta=True, batch_size=32)
    np.testing.assert_allclose(tta.logits, (plain.logits + mirrored.logits) / 2, atol=1e-5)
    # The report scores the averaged logits, not the plain ones.
    assert tta.report["loss"] == mean_cross_entropy(tta.logits, eval_split.labels) != plain.report["loss"]


def test_loading_a_run_logs_no_warnings_and_writes_nothing(tiny_run_dir, caplog):
    """Orbax's read_only manager logged three warnings per load; the manager used instead
    must still leave the checkpoints as they were."""
    workdir, _, summary = tiny_run_dir
    checkpoints = workdir / "checkpoints"
    before = {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}
    with caplog.at_level(logging.WARNING):
        assert load_run(workdir, "latest").step == summary["steps"]
        assert checkpoint.load_variables(checkpoints / str(summary["steps"]))[1] == summary["steps"]  # one step dir
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")} == before


def test_split_dir_keeps_slices_apart(tmp_path):
    assert evaluate.split_dir(tmp_path, "test_jpeg") == tmp_path / "eval" / "test_jpeg"
    assert evaluate.split_dir(tmp_path, "test[:200]") == tmp_path / "eval" / "test__200_"
    assert evaluate.split_dir(tmp_path, "test[200:]") != evaluate.split_dir(tmp_path, "test[:200]")
    assert evaluate.split_dir(tmp_path, "..") == tmp_path / "eval" / "__"


def run_cli(workdir, data_dir, capsys, *args):
    code = evaluate_cli.main(["--workdir", str(workdir), "--checkpoint", "latest", "--data_dir", data_dir, *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_cli_on_real_data_matches_summary_and_keeps_a_folder_per_split(tmp_path, shared_data_dir, capsys):
    config = tiny_config(epochs=1, eval_batch_size=250,
                         data={"train_split": "train[:1000]", "examples_per_class": 20})
    workdir = tmp_path / "run"
    summary = train.fit(config, workdir, data_dir=shared_data_dir)
    out = run_cli(workdir, shared_data_dir, capsys)
    report = json.loads((workdir / "eval" / "test" / "report.json").read_text())
    assert report["num_examples"] == summary["eval_examples"] == 1000 and report["split"] == "test"
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-12)
    for name in evaluate.PLOTS:
        assert (workdir / "eval" / "test" / name).stat().st_size > 1000, name
    assert "accuracy" in out and str(workdir / "eval" / "test") in out

    # Another split gets its own folder; --out puts a third elsewhere; the first report is kept.
    run_cli(workdir, shared_data_dir, capsys, "--split", "test_jpeg[:500]")
    run_cli(workdir, shared_data_dir, capsys, "--split", "test[:200]", "--out", str(tmp_path / "elsewhere"))
    reports = [json.loads((path / "report.json").read_text()) for path in
               (workdir / "eval" / "test", workdir / "eval" / "test_jpeg__500_", tmp_path / "elsewhere")]
    assert [(r["split"], r["num_examples"]) for r in reports] == [("test", 1000), ("test_jpeg[:500]", 500),
                                                                  ("test[:200]", 200)]
    assert reports[0] == report
    assert sorted(p.name for p in (workdir / "eval").iterdir()) == ["test", "test_jpeg__500_"]


def test_cli_reports_missing_workdir(tmp_path, capsys):
    assert evaluate_cli.main(["--workdir", str(tmp_path / "nope")]) == 2
    assert "not a jaxcifar workdir" in capsys.readouterr().err
