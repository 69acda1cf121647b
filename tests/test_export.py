import json
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxcifar import augment, export, steps, train
from jaxcifar import data as data_lib
from jaxcifar.runs import load_run
from jaxcifar.testing import synthetic_split, tiny_config
from jaxcifar.cli import export as export_cli

REPO = pathlib.Path(__file__).resolve().parents[1]  # the checkout these tests belong to

# Runs in a fresh interpreter, so nothing of the exporting process (jit caches, the
# in-memory model, its closures) can make a broken artefact look fine.
LOAD_AND_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    from jaxcifar.tf_extra import import_tf
    from jaxcifar.export import load_exported

    out_dir, inputs, outputs = sys.argv[1:]
    images = np.load(inputs)
    stablehlo = load_exported(out_dir)
    saved_model = import_tf("reading the SavedModel back").saved_model.load(f"{out_dir}/saved_model")
    serving = saved_model.signatures["serving_default"]
    results = {}
    for n in (1, 5):
        results[f"stablehlo_{n}"] = np.asarray(stablehlo(images[:n]))
        served = serving(images=images[:n])
        results[f"savedmodel_{n}"] = served["logits"].numpy()
        results[f"probabilities_{n}"] = served["probabilities"].numpy()
    np.savez(outputs, **results)
""")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """(run, folder) of the shared tiny run exported as StableHLO, which needs only JAX."""
    out = tmp_path_factory.mktemp("exported")
    assert export.export_run(tiny_run, out, "stablehlo") == (["stablehlo"], None)
    return tiny_run, out


@pytest.fixture(scope="module")
def exported_both(tiny_run, tmp_path_factory):
    """(run, folder) of the shared tiny run exported as StableHLO and a SavedModel (its tests
    need TensorFlow: conftest.py marks them)."""
    out = tmp_path_factory.mktemp("exported_both")
    assert export.export_run(tiny_run, out, "both") == (["stablehlo", "savedmodel"], None)
    return tiny_run, out


def training_logits(run, images):
    """What the training loop's eval step computes, written out without jaxcifar.runs."""
    normalized = augment.normalize(images, run.config.augment.normalization)
    return np.asarray(steps.predict_logits(run.model, run.variables, normalized, tta=run.config.tta))


@pytest.mark.slow  # a fresh process
def test_artefacts_match_training_logits_in_a_fresh_process(exported_both, tmp_path):
    run, out = exported_both
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(out), str(tmp_path / "images.npy"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = np.load(tmp_path / "out.npz")
    for n in (1, 5):
        expected = training_logits(run, images[:n])
        for fmt in ("stablehlo", "savedmodel"):
            assert results[f"{fmt}_{n}"].shape == (n, 10)
            np.testing.assert_allclose(results[f"{fmt}_{n}"], expected, atol=1e-5, err_msg=f"{fmt}, batch {n}")
        np.testing.assert_allclose(results[f"probabilities_{n}"].sum(-1), 1.0, atol=1e-5)


def test_serving_json_describes_the_model(exported_both):
    run, out = exported_both
    meta = json.loads((out / export.SERVING_FILE).read_text())
    assert meta["class_names"] == list(run.class_names)
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == ["b", 32, 32, 3]
    assert meta["formats"] == ["stablehlo", "savedmodel"] and meta["checkpoint_step"] == run.step


def test_both_degrades_to_stablehlo_without_tensorflow(tiny_run, tmp_path, monkeypatch, capsys):
    run = tiny_run
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any import of it now fails, as without the `tf` extra
    code = export_cli.main(["--workdir", str(run.workdir), "--checkpoint", "latest", "--out", str(tmp_path / "both"),
                        "--platforms", "cpu"])
    assert code == 1 and "SavedModel NOT written" in capsys.readouterr().err
    assert (tmp_path / "both" / export.STABLEHLO_FILE).stat().st_size > 0
    assert not (tmp_path / "both" / export.SAVED_MODEL_DIR).exists()
    assert json.loads((tmp_path / "both" / export.SERVING_FILE).read_text())["formats"] == ["stablehlo"]
    assert export_cli.main(["--workdir", str(run.workdir), "--out", str(tmp_path / "sm"), "--format", "savedmodel"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the SavedModel export needs TensorFlow") and err.count("\n") == 1, err
    assert 'pip install -e ".[tf]"' in err and "--format stablehlo" in err


def test_load_exported_reports_a_missing_artefact(tmp_path):
    with pytest.raises(FileNotFoundError, match="jaxcifar.export"):
        export.load_exported(tmp_path)


def test_load_exported_takes_integer_pixels_and_refuses_floats(exported):
    run, out = exported
    model = export.load_exported(out)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3))  # int64, as numpy makes them
    np.testing.assert_array_equal(model(pixels), model(pixels.astype(np.uint8)))
    # [0, 1] floats used to be cast to all-zero uint8 images and classified without a word.
    with pytest.raises(ValueError, match=r"got float32.*\(images \* 255\)\.round\(\)\.astype\(np\.uint8\)"):
        model((pixels / 255).astype(np.float32))
    with pytest.raises(ValueError, match="got int64 values from 1 to 256"):
        model(pixels + 1)


@pytest.mark.parametrize("shape", [(32, 32, 3), (2, 3, 32, 32), (2, 28, 28, 3), (0, 32, 32, 3)])
def test_load_exported_refuses_other_shapes(exported, shape):
    _, out = exported
    with pytest.raises(ValueError, match=rf"shape \(b, 32, 32, 3\).*got shape {re.escape(str(shape))}.*images\[None\]"):
        export.load_exported(out)(np.zeros(shape, np.uint8))


def test_a_run_with_another_image_size_exports_and_predicts_at_that_size(tmp_path):
    """image_size=24 on 32x32 data: training resizes on the device; the artefact takes 24x24
    and predict resizes files to 24x24 with the image-file rule."""
    from PIL import Image

    from jaxcifar import image_files, predict

    data = data_lib.Data(synthetic_split(64, 0), synthetic_split(20, 1), 10, class_names=tuple("abcdefghij"))
    train.fit(tiny_config(epochs=1, data={"image_size": 24}), tmp_path / "run", data=data)
    run = load_run(tmp_path / "run", "latest")
    assert run.image_size == 24 and run.class_names == tuple("abcdefghij")
    export.export_run(run, tmp_path / "out", "stablehlo", platforms=("cpu",))
    meta = json.loads((tmp_path / "out" / export.SERVING_FILE).read_text())
    assert meta["input"]["shape"] == ["b", 24, 24, 3] and meta["class_names"] == list("abcdefghij")
    small = np.asarray(augment.resize(data.eval.images[:3], 24)).round().astype(np.uint8)
    np.testing.assert_allclose(np.asarray(export.load_exported(tmp_path / "out")(small)),
                               np.asarray(run.logits(small)), atol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(b, 24, 24, 3\).*resize other sizes to 24x24"):
        export.load_exported(tmp_path / "out")(data.eval.images[:3])
    Image.fromarray(data.eval.images[0]).save(tmp_path / "image.png")
    [result] = predict.predict_files(run, [str(tmp_path / "image.png")], k=10)
    expected = np.asarray(jax.nn.softmax(run.logits(image_files.read_image(tmp_path / "image.png", 24)[None])[0]))
    got = {p["class"]: p["probability"] for p in result["predictions"]}
    np.testing.assert_allclose([got[name] for name in run.class_names], expected, atol=1e-6)
