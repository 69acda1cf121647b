"""int8 post-training quantization (jaxcifar/quantize.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import evaluate, export, models, peft, quantize, runs, train
from tests.conftest import synthetic_split, tiny_config

RESNET = dict(model="resnet18", model_kwargs={"width": 8})


def random_batch_norm(variables: dict, key: jax.Array) -> dict:
    """`variables` with every BatchNorm's statistics, scale (both signs) and bias random,
    so that folding has something to fold."""
    stats, params = peft.flat(variables["batch_stats"]), peft.flat(variables["params"])
    keys = iter(jax.random.split(key, 4 * len(stats)))
    for path in [p for p in stats if p.endswith("/mean")]:
        bn, shape = path.removesuffix("/mean"), stats[path].shape
        stats[path] = jax.random.normal(next(keys), shape)
        stats[f"{bn}/var"] = jax.random.uniform(next(keys), shape, minval=0.2, maxval=3.0)
        params[f"{bn}/bias"] = jax.random.normal(next(keys), shape)
        if f"{bn}/scale" in params:
            params[f"{bn}/scale"] = jax.random.normal(next(keys), shape)
    unflat = lambda tree: peft.traverse_util.unflatten_dict(tree, sep="/")  # noqa: E731
    return {"params": unflat(params), "batch_stats": unflat(stats)}


@pytest.mark.parametrize("name,kwargs", [("resnet18", {"width": 8}), ("airbench", {"widths": (8, 16, 16)})])
def test_folding_batch_norm_into_the_convs_keeps_the_logits(name, kwargs):
    # ResNet: gamma of both signs right after the conv; airbench: BatchNorm after a max-pool.
    model = models.create_model(name, 10, **kwargs)
    images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    variables = random_batch_norm(model.init(jax.random.key(1), images, train=False), jax.random.key(2))
    epsilons = quantize.batch_norm_epsilons(model, variables, images)
    assert set(epsilons.values()) == ({1e-5} if name == "resnet18" else {1e-12})
    folded = quantize.fold_batch_norm(jax.tree_util.tree_map(np.asarray, variables), epsilons)
    reference = model.apply(variables, images, train=False)
    scale = float(jnp.abs(reference).max())
    np.testing.assert_allclose(model.apply(folded, images, train=False), reference, atol=1e-5 * scale)
    # Every BatchNorm is now a pure shift: the kernels carry the scales.
    stats = peft.flat(folded["batch_stats"])
    assert all(np.all(v == 0) for p, v in stats.items() if p.endswith("/mean"))
    assert not np.array_equal(peft.flat(folded["params"])["backbone/conv1/kernel" if name == "resnet18"
                                                          else "backbone/group1/conv1/kernel"],
                              peft.flat(variables["params"])["backbone/conv1/kernel" if name == "resnet18"
                                                             else "backbone/group1/conv1/kernel"])


def test_batch_norms_are_paired_with_the_conv_before_them():
    params = {"backbone/layer1_0/conv2/kernel": 0, "backbone/layer2_0/downsample_conv/kernel": 0,
              "backbone/conv1/kernel": 0, "backbone/conv1/bias": 0, "backbone/group1/conv1/kernel": 0}
    assert quantize.conv_of_batch_norm("backbone/layer1_0/bn2", params) == "backbone/layer1_0/conv2"
    assert quantize.conv_of_batch_norm("backbone/layer2_0/downsample_bn", params) == "backbone/layer2_0/downsample_conv"
    assert quantize.conv_of_batch_norm("backbone/group1/bn1", params) == "backbone/group1/conv1"
    assert quantize.conv_of_batch_norm("backbone/bn1", params) is None  # that conv has a bias: not folded
    assert quantize.conv_of_batch_norm("projector/bn0", params) is None


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    train_split, test = synthetic_split(512, 0), synthetic_split(200, 1)
    train.fit(tiny_config(**RESNET, epochs=3), root / "run", data=train.Data(train_split, test, 10))
    report = quantize.quantize_workdir(root / "run", root / "out", train_split=train_split,
                                       eval_splits={"test": test, "test_jpeg": synthetic_split(100, 2)},
                                       calibration_images=256, timing_repeats=1)
    return root, report, test, train_split


def test_the_int8_artefact_stores_int8_weights_and_convolves_in_int8(quantized):
    root, report, test, train_split = quantized
    module = (root / "out" / "int8" / export.STABLEHLO_FILE).read_bytes()
    text = jax.export.deserialize(bytearray(module)).mlir_module()
    convolutions = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert convolutions and all("xi8>" in line and "xi32>" in line for line in convolutions)
    assert report["bytes"]["int8"] < 0.35 * report["bytes"]["float32"]
    # The artefact computes what the int8 run computes, and near what the float run does.
    run = runs.load_run(root / "run")
    int8_run = quantize.quantize_run(run, train_split.images[:256])  # calibrated as quantize_workdir did
    images = test.images[:64]
    int8_logits = np.asarray(export.load_exported(root / "out" / "int8")(images))
    # Two compilations may round an activation sitting on a quantization step differently.
    difference = np.abs(int8_logits - np.asarray(int8_run.logits(images))).max(axis=1)
    assert np.mean(difference < 1e-4) >= 0.9 and difference.max() < 0.05, difference
    agree = np.mean(int8_logits.argmax(1) == np.asarray(run.logits(images)).argmax(1))
    assert agree >= 0.9, agree


def test_the_report_puts_int8_next_to_float32_on_every_split(quantized):
    root, report, _, _ = quantized
    assert json.loads((root / "out" / quantize.REPORT).read_text()) == report
    for split in ("test", "test_jpeg"):
        assert set(report[split]) == {"float32_accuracy", "int8_accuracy", "examples"}
        assert abs(report[split]["int8_accuracy"] - report[split]["float32_accuracy"]) <= 0.05
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert report["test"]["float32_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert set(report["latency"]) == {"float32", "int8"}
    assert set(report["latency"]["int8"]) == {"batch_1", "batch_256"}


def test_cli_refuses_what_it_cannot_quantize(quantized, tmp_path, capsys):
    root, _, _, _ = quantized
    assert quantize.main(["--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "q")]) == 2
    assert "not a jaxcifar workdir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quantize.main(["--workdir", str(root / "run"), "--out", str(tmp_path / "q"), "--calibration_images", "0"])


def test_tta_is_the_callers_choice_for_every_evaluation_and_export(quantized, tmp_path):
    root, report, test, train_split = quantized
    assert report["tta"] is False  # the run's own setting
    mirrored = quantize.quantize_workdir(root / "run", tmp_path / "out", train_split=train_split,
                                         eval_splits={"test": test}, calibration_images=256, timing_repeats=1,
                                         tta=True)
    run = runs.load_run(root / "run")
    assert mirrored["tta"] is True
    assert mirrored["test"]["float32_accuracy"] == pytest.approx(
        evaluate.evaluate_run(run, test, tta=True).report["accuracy"], abs=1e-9)
    images = test.images[:16]
    np.testing.assert_allclose(export.load_exported(tmp_path / "out" / "float32")(images),
                               run.logits(images, tta=True), atol=1e-4)


def test_cli_passes_tta_through(monkeypatch, tmp_path):
    seen = {}

    def record(*args, tta=None, **kwargs):
        seen["tta"] = tta
        raise ValueError("recorded")

    monkeypatch.setattr(quantize, "quantize_workdir", record)
    for flag, expected in (("--tta", True), ("--no-tta", False)):
        assert quantize.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "q"), flag]) == 2
        assert seen["tta"] is expected
