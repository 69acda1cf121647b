import json

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcifar import image_files, predict
from jaxcifar.testing import synthetic_split
from jaxcifar.cli import predict as predict_cli


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """name -> path of one file per kind of input the CLI must accept or reject."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pixels = lambda h, w, c=3: rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)
    files = {
        "rgb.png": Image.fromarray(pixels(32, 32)),
        "photo.jpg": Image.fromarray(pixels(48, 40)),
        "grey.png": Image.fromarray(pixels(32, 32, 1), mode="L"),
        "rgba.png": Image.fromarray(pixels(32, 32, 4), mode="RGBA"),
        "large.png": Image.fromarray(pixels(300, 700)),
    }
    for name, image in files.items():
        image.save(d / name)
    (d / "corrupt.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    return {name: str(d / name) for name in (*files, "corrupt.png", "missing.png")}


GOOD = ("rgb.png", "photo.jpg", "grey.png", "rgba.png", "large.png")


def test_preprocess_converts_modes_and_sizes():
    preprocess = lambda image: image_files.to_model_image(image, 32)  # noqa: E731
    transparent_red = Image.new("RGBA", (10, 20), (255, 0, 0, 0))
    assert (preprocess(transparent_red) == 255).all()  # composited on white, not red or black
    half = Image.new("LA", (64, 64), (0, 128))
    np.testing.assert_allclose(preprocess(half), 127, atol=1)  # black at 50% alpha over white
    grey = preprocess(Image.new("L", (5, 5), 77))
    assert grey.shape == (32, 32, 3) and (grey == 77).all()
    palette = Image.new("P", (40, 80), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 20, 30])
    assert preprocess(palette).shape == (32, 32, 3) and (preprocess(palette) == (10, 20, 30)).all()
    assert image_files.to_model_image(Image.new("RGB", (50, 10)), 24).shape == (24, 24, 3)


def test_every_readable_image_gets_probabilities_that_match_run_logits(run, images):
    results = predict.predict_files(run, [images[n] for n in GOOD], k=10)
    for name, result in zip(GOOD, results):
        assert "error" not in result, result
        probs = {p["class"]: p["probability"] for p in result["predictions"]}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        expected = np.asarray(jax.nn.softmax(run.logits(image_files.read_image(images[name], 32)[None])[0]))
        np.testing.assert_allclose([probs[c] for c in run.class_names], expected, atol=1e-6)
        assert [p["probability"] for p in result["predictions"]] == sorted(probs.values(), reverse=True)


def test_bad_files_get_errors_and_others_still_predicted(run, images, capsys):
    names = ["rgb.png", "corrupt.png", "large.png", "missing.png"]
    code = predict_cli.main(["--workdir", str(run.workdir), "--checkpoint", "latest", "--json",
                         *[images[n] for n in names]])
    assert code == 1
    doc = json.loads(capsys.readouterr().out)
    results = {r["file"]: r for r in doc["results"]}
    assert [r["file"] for r in doc["results"]] == [images[n] for n in names]
    assert "not an image" in results[images["corrupt.png"]]["error"]
    assert results[images["missing.png"]]["error"] == "file not found"
    for name in ("rgb.png", "large.png"):
        assert len(results[images[name]]["predictions"]) == 3 and "error" not in results[images[name]]
    assert doc["checkpoint_step"] == run.step


def test_text_output_and_exit_code(run, images, capsys):
    assert predict_cli.main(["--workdir", str(run.workdir), "--checkpoint", "latest", "--top_k", "2",
                         images["photo.jpg"]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{images['photo.jpg']}:" and len(out) == 3
    assert predict_cli.main(["--workdir", str(run.workdir), "--checkpoint", "latest", images["missing.png"]]) == 1
    assert capsys.readouterr().out.strip() == f"{images['missing.png']}: error: file not found"


def test_unopenable_run_exits_2(tmp_path, images, capsys):
    assert predict_cli.main(["--workdir", str(tmp_path), images["rgb.png"]]) == 2
    assert "not a jaxcifar workdir" in capsys.readouterr().err


def test_library_logits_refuse_float_pixels_and_take_integers_in_range(run):
    pixels = synthetic_split(4, 2).images
    expected = np.asarray(run.logits(pixels))
    np.testing.assert_array_equal(np.asarray(run.logits(pixels.astype(np.int32))), expected)
    with pytest.raises(ValueError, match=r"got float32.*\(images \* 255\)"):
        run.logits(pixels.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="values from -1 to"):
        run.logits(pixels.astype(np.int32) - 1 - pixels.min())
