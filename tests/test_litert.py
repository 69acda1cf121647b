"""The LiteRT artefacts of the airbench network, and artefacts that cannot run: proven in a
child process (export.probe) before quantize publishes them or a loader takes them."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxcifar import evaluate, export, litert, quantize, quantize_report, runs, train
from jaxcifar import data as data_lib
from jaxcifar.testing import synthetic_split, tiny_config
from jaxcifar.cli import quantize as quantize_cli

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to

AIRBENCH = dict(model="airbench", model_kwargs={"widths": (8, 16, 16)})


@pytest.fixture(scope="module")
def airbench_quantized(tmp_path_factory):
    """(root, report, test split, train split) of a tiny airbench run quantized into root/out."""
    root = tmp_path_factory.mktemp("airbench")
    train_split, test = synthetic_split(256, 0), synthetic_split(100, 1)
    train.fit(tiny_config(**AIRBENCH, epochs=1), root / "run", data=data_lib.Data(train_split, test, 10))
    report = quantize.quantize_workdir(root / "run", root / "out", train_split=train_split, eval_splits={"test": test},
                                       calibration_images=64, timing_repeats=1)
    return root, report, test, train_split


def test_the_airbench_litert_models_run_and_compute_the_exact_gelu(airbench_quantized):
    root, report, test, _ = airbench_quantized
    assert report["failed"] == {}
    int8_model = (root / "out" / "litert_int8" / litert.MODEL_FILE).read_bytes()
    ops = litert.operators(int8_model)
    gelus = [inputs for name, inputs in ops if name == "GELU"]
    assert len(gelus) == 7 and all(inputs == ("INT8",) for inputs in gelus), ops  # whitening + 2 per group
    assert [name for name, inputs in ops if "FLOAT32" in inputs] == ["QUANTIZE"]
    run = runs.load_run(root / "run")
    images = test.images
    reference = np.asarray(run.logits(images))
    scale = np.abs(reference).max()
    # float32: the exact GELU op. Measured 6e-7 of the largest |logit|; 7.7e-4 with the tanh form.
    float_logits = export.load_exported(root / "out" / "litert_float32")(images)
    assert np.abs(float_logits - reference).max() <= 1e-5 * scale
    # int8: the quantization error. Measured on these 100 images: 0.13 of the largest |logit|,
    # 89% agreement (a network trained for 8 steps, calibrated on 64 images). Bounds: 0.25, 80%.
    int8_logits = export.load_exported(root / "out" / "litert_int8")(images)
    assert np.abs(int8_logits - reference).max() <= 0.25 * scale
    assert report["test"]["litert_int8_agreement"] >= 0.8
    assert report["test"]["litert_int8_agreement"] == np.mean(int8_logits.argmax(1) == reference.argmax(1))


def aborting(model: bytes) -> bytes:
    """`model` with every ADD's output scale so small that its rescale factor exceeds 1: a
    CHECK in TFLite's ADD then aborts the process on the first call, as airbench's GELU did."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    adds = 0
    for graph in flat.subgraphs:
        for op in graph.operators:
            if flatbuffer_utils.get_builtin_code_from_operator_code(
                    flat.operatorCodes[op.opcodeIndex]) == schema.BuiltinOperator.ADD:
                graph.tensors[op.outputs[0]].quantization.scale = [1e-30]
                adds += 1
    assert adds, "no ADD to break"
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


@pytest.fixture(scope="module")
def broken(airbench_quantized, tmp_path_factory):
    """{'truncated': bytes, 'aborting': bytes}: two LiteRT models that cannot run."""
    root = airbench_quantized[0]
    model = (root / "out" / "litert_int8" / litert.MODEL_FILE).read_bytes()
    return {"truncated": model[:len(model) // 2], "aborting": aborting(model)}


def artefact(directory: pathlib.Path, model: bytes, like: pathlib.Path) -> pathlib.Path:
    """A LiteRT artefact folder holding `model` and the serving.json of the artefact `like`."""
    directory.mkdir()
    (directory / litert.MODEL_FILE).write_bytes(model)
    (directory / export.SERVING_FILE).write_bytes((like / export.SERVING_FILE).read_bytes())
    return directory


@pytest.mark.parametrize("kind, reason", [("truncated", "ValueError: .*not a valid Flatbuffer"),
                                          ("aborting", "killed the process with SIGABRT")])
def test_a_broken_artefact_is_refused_by_its_loaders_without_killing_them(airbench_quantized, broken, kind, reason,
                                                                          tmp_path):
    good = airbench_quantized[0] / "out" / "litert_int8"
    assert export.probe(good) is None
    directory = artefact(tmp_path / kind, broken[kind], like=good)
    assert export.probe(directory) is not None
    with pytest.raises(ValueError, match=f"cannot be run: running it .*{reason}"):
        export.load_exported(directory)
    served = subprocess.run([sys.executable, "-m", "jaxcifar.serve", "--export", str(directory), "--port", "0"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert served.returncode == 2, served.stderr[-2000:]
    errors = [line for line in served.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot be run" in errors[0] and "Traceback" not in served.stderr, served.stderr


def test_quantize_publishes_what_runs_and_reports_what_does_not(airbench_quantized, broken, tmp_path, monkeypatch,
                                                                capsys):
    root, _, test, train_split = airbench_quantized
    # The float32 model comes out truncated, the int8 one aborts on its first call.
    monkeypatch.setattr(litert, "convert", lambda serving_fn, image_shape, batch_sizes, calibration=None:
                        broken["truncated" if calibration is None else "aborting"])
    monkeypatch.setattr(data_lib, "load_data", lambda config, data_dir: data_lib.Data(train_split, test, 10))
    monkeypatch.setattr(evaluate, "load_eval_split", lambda run, name, data_dir: test)
    out = tmp_path / "out"
    status = quantize_cli.main(["--workdir", str(root / "run"), "--out", str(out), "--calibration_images", "64",
                            "--extra_splits", "", "--timing_repeats", "1", "--full"])
    assert status == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "LiteRT float32 was not published" in errors[0] and "SIGABRT" in errors[1], errors
    report = json.loads((out / quantize.REPORT).read_text())
    assert set(report["failed"]) == {"litert_float32", "litert_int8"} and "SIGABRT" in report["failed"]["litert_int8"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["float32", "int8", quantize.REPORT, quantize.CONVERTER_LOG])
    assert set(report["bytes"]) == {"float32", "int8"}
    # --full: the Qwix int8 model, slow on a CPU, evaluated and timed at batch 256 too.
    assert "int8_accuracy" in report["test"] and "batch_256" in report["latency"]["int8"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left beside it
    assert "LiteRT" not in quantize_report.tradeoff_table(report)


def test_staged_output_replaces_the_folder_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), quantize.staged(out) as staging:
        (staging / "half").write_text("half")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["old"]
    with quantize.staged(out) as staging:
        (staging / "new").write_text("new")
        assert not (out / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["new"]
