"""int8 post-training quantization (jaxcifar/quantize.py), its report (jaxcifar/quantize_report.py),
and the experiment that sizes its calibration (experiments/calibration_size.py)."""

import contextlib
import io
import json
import logging
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import evaluate, export, litert, models, peft, quantize, quantize_report, runs, train
from jaxcifar import data as data_lib
from jaxcifar.testing import synthetic_split, tiny_config
from jaxcifar.cli import quantize as quantize_cli

RESNET = dict(model="resnet18", model_kwargs={"width": 8, "stage_sizes": (1, 1, 1, 1)})
REPO = pathlib.Path(__file__).resolve().parents[1]
OUTPUT = "output.txt"  # what the fixture's quantize showed, beside its run


@contextlib.contextmanager
def shown(output: io.StringIO):
    """What quantize shows on stderr, its log lines and its bars, into `output`, with its log
    at INFO as the command line sets it."""
    handler, level = logging.StreamHandler(output), quantize.log.level
    quantize.log.addHandler(handler)
    quantize.log.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stderr(output):
            yield
    finally:
        quantize.log.removeHandler(handler)
        quantize.log.setLevel(level)


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
    train.fit(tiny_config(**RESNET, epochs=3), root / "run", data=data_lib.Data(train_split, test, 10))
    output = io.StringIO()
    with shown(output):
        report = quantize.quantize_workdir(root / "run", root / "out", train_split=train_split,
                                           eval_splits={"test": test, "test_jpeg": synthetic_split(100, 2)},
                                           calibration_images=256, timing_repeats=1)
    (root / OUTPUT).write_text(output.getvalue())
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


def test_the_report_puts_every_model_next_to_float32_on_every_split(quantized):
    root, report, test, _ = quantized
    assert json.loads((root / "out" / quantize.REPORT).read_text()) == report
    labels = set(quantize.ARTEFACTS)
    assert report["failed"] == {}
    for split in ("test", "test_jpeg"):
        # The Qwix int8 model, slow on a CPU, is not evaluated there without --full (test_litert.py has --full).
        evaluated = labels - {"int8"}
        assert set(report[split]) == ({f"{label}_accuracy" for label in evaluated} | {"examples"}
                                      | {f"{label}_agreement" for label in evaluated - {"float32"}})
        for label in evaluated - {"float32"}:
            assert abs(report[split][f"{label}_accuracy"] - report[split]["float32_accuracy"]) <= 0.05
            assert report[split][f"{label}_agreement"] >= 0.9
    assert report["test"]["litert_float32_agreement"] == 1.0
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert report["test"]["float32_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert set(report["bytes"]) == labels
    assert set(report["latency"]) == {"float32", "int8", *(quantize_report.timed_label(label, threads) for threads in
                                                          quantize.THREADS for label in quantize.LITERT_ARTEFACTS)}
    assert all(set(timings) == ({"batch_1"} if timed == "int8" else {"batch_1", "batch_256"})
               for timed, timings in report["latency"].items())
    table = quantize_report.tradeoff_table(report).splitlines()
    assert len(table) == 2 + len(report["latency"]) and "LiteRT int8, 2 interpreter threads" in table[-1]
    # What the CLI prints at the end: the speed trade-off, not only accuracy and size (issue 28).
    assert all(column in table[0] for column in ("size", "batch 1", "batch 256", "speed vs float32"))
    # And which model to deploy here, with the instruction sets its int8 speed depends on.
    assert set(report["machine"]["instruction_sets"]) == set(quantize_report.INSTRUCTION_SETS)
    for batch, timed in report["fastest"].items():
        assert all(report["latency"][timed][batch]["images_per_second"] >= other[batch]["images_per_second"]
                   for other in report["latency"].values() if batch in other)
    lines = quantize_report.fastest_lines(report).splitlines()
    assert "VNNI" in lines[0] and [line.split(":")[0].strip() for line in lines[1:]] == ["batch 1", "batch 256"]


def test_the_fastest_model_is_the_one_with_the_most_images_per_second():
    latency = {"float32": {"batch_1": {"images_per_second": 900.0}, "batch_256": {"images_per_second": 5000.0}},
               "litert_int8_threads1": {"batch_1": {"images_per_second": 2000.0},
                                        "batch_256": {"images_per_second": 4000.0}}}
    assert quantize_report.fastest(latency) == {"batch_1": "litert_int8_threads1", "batch_256": "float32"}


def test_instruction_sets_are_read_from_the_cpu_flags():
    assert quantize_report.instruction_sets({"avx2", "avx512f", "avx512_vnni", "fma"}) == {
        "avx2": True, "avx512": True, "vnni": True, "amx": False}
    assert quantize_report.instruction_sets({"avx2", "avx_vnni"})["vnni"]
    assert not any(quantize_report.instruction_sets(set()).values())


def test_progress_shows_every_evaluation_with_its_speed_and_time_left(quantized):
    root, report, _, _ = quantized
    output = (root / OUTPUT).read_text()
    lines = re.split(r"[\r\n]+", output)
    for split in ("test", "test_jpeg"):
        for label in quantize.ARTEFACTS:
            bar = [line for line in lines if f"evaluating {quantize.ARTEFACTS[label]} on {split}: " in line]
            if label == "int8":  # the Qwix int8 model, slow on a CPU: not evaluated there without --full
                assert not bar
                continue
            # tqdm's last state of the bar: every image, the time taken < the time left, images/s.
            examples = report[split]["examples"]
            assert bar and re.search(rf" {examples}/{examples} \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ img/s\]",
                                     bar[-1]), (label, split, bar)
    # Said once: why the Qwix int8 model is not evaluated on a CPU, and what --full adds.
    assert sum(quantize.SLOW_INT8_NOTE in line for line in lines) == 1 and "--full evaluates it" in quantize.SLOW_INT8_NOTE
    # The LiteRT int8 conversion, one call without progress: its calibration size, then its time.
    assert "converting to LiteRT int8, calibrating on 256 images" in output
    assert re.search(r"converted to LiteRT int8 in \d+ s", output)


def test_the_litert_int8_model_computes_in_int8_from_end_to_end(quantized):
    root, _, _, _ = quantized
    ops = litert.operators((root / "out" / "litert_int8" / litert.MODEL_FILE).read_bytes())
    weighted = [(name, inputs) for name, inputs in ops if name in ("CONV_2D", "FULLY_CONNECTED")]
    assert weighted and all(inputs == ("INT8", "INT8", "INT32") for _, inputs in weighted), weighted
    # Float32 only where the uint8 pixels enter (cast, then quantized) and the logits leave.
    assert [name for name, inputs in ops if "FLOAT32" in inputs] == ["QUANTIZE"]
    assert ops[0] == ("CAST", ("UINT8",)) and ops[-1] == ("DEQUANTIZE", ("INT8",))
    float_ops = litert.operators((root / "out" / "litert_float32" / litert.MODEL_FILE).read_bytes())
    assert all(inputs[0] == "FLOAT32" for name, inputs in float_ops if name == "CONV_2D")


def reference_kernel_logits(model: pathlib.Path, images: np.ndarray) -> np.ndarray:
    """Logits from TFLite's own int8 kernels, without the XNNPACK delegate that `litert.load`
    uses, one image at a time. (Not BUILTIN_REF: in ai-edge-litert 2.3.0 its reference
    kernels gave every image the same logits for this model.)"""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(model),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner(litert.signature_key(1))
    return np.concatenate([runner(images=image[None])[litert.OUTPUT] for image in images])


def test_litert_int8_logits_match_the_reference_kernels_and_float32_within_measured_bounds(quantized):
    root, _, test, _ = quantized
    model = root / "out" / "litert_int8" / litert.MODEL_FILE
    images = test.images[:64]
    int8_logits = np.asarray(export.load_exported(model)(images))
    # XNNPACK against TFLite's own int8 kernels: the same integer network, whose
    # requantizations round differently; measured on these 64 images: 53% of the logits
    # differ, by one output step at most. Bound: 2 steps.
    step = output_scale(model)
    assert np.abs(int8_logits - reference_kernel_logits(model, images)).max() <= 2 * step
    # Against the run's float32 logits, the quantization error: measured 0.014 of the
    # logits' range (max |logit| over these images). Bound: 0.05.
    float_logits = np.asarray(runs.load_run(root / "run").logits(images))
    assert np.abs(int8_logits - float_logits).max() <= 0.05 * np.abs(float_logits).max()


def output_scale(model: pathlib.Path) -> float:
    """The quantization step of the int8 logits, before they are dequantized to float32."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(model)).get_tensor_details()
    return max(d["quantization"][0] for d in details if d["dtype"] == np.int8 and len(d["shape"]) == 2
               and d["shape"][-1] == 10)


def test_the_loader_runs_any_batch_size_with_the_same_logits_per_image(quantized):
    root, _, test, _ = quantized
    call = export.load_exported(root / "out" / "litert_int8")
    images = test.images[:max(litert.BATCH_SIZES) + 3]  # one full piece of the largest size, then 3 of 1
    one_by_one = np.concatenate([call(image[None]) for image in images])
    assert one_by_one.shape == (len(images), 10) and one_by_one.dtype == np.float32
    # Every signature has the same scales, so a batch changes an image's logits only by float
    # rounding in the interpreter's kernels (3e-7 on an AVX-512 machine of this project; exactly 0 where it passed before);
    # a scale that differed would move them by whole quantization steps, about 1e-2 of the range.
    atol = 1e-5 * np.abs(one_by_one).max()
    np.testing.assert_allclose(call(images), one_by_one, rtol=0, atol=atol)
    np.testing.assert_allclose(call(images[:5]), one_by_one[:5], rtol=0, atol=atol)
    with pytest.raises(ValueError, match=r"shape \(b, 32, 32, 3\)"):
        call(images[0])


@pytest.mark.parametrize("n, sizes, pieces", [(0, (1, 64), []), (1, (1, 64), [1]), (130, (1, 64), [64, 64, 1, 1]),
                                              (37, (1, 4, 16), [16, 16, 4, 1])])
def test_batch_pieces_cover_n_with_the_largest_sizes_first(n, sizes, pieces):
    assert litert.batch_pieces(n, sizes) == pieces


def test_cli_refuses_what_it_cannot_quantize(quantized, tmp_path, capsys):
    root, _, _, _ = quantized
    assert quantize_cli.main(["--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "q")]) == 2
    assert "not a jaxcifar workdir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quantize_cli.main(["--workdir", str(root / "run"), "--out", str(tmp_path / "q"), "--calibration_images", "0"])


def mirror_gap(artefact: pathlib.Path, images: np.ndarray) -> float:
    """How far an exported model's logits move when its images are mirrored: none for one that
    averages each image with its mirror (TTA)."""
    serve = export.load_exported(artefact)
    return float(np.max(np.abs(np.asarray(serve(images)) - np.asarray(serve(np.ascontiguousarray(images[:, :, ::-1]))))))


def test_tta_is_the_callers_choice_for_every_evaluation_and_export(quantized, tmp_path):
    root, _, test, train_split = quantized
    images = test.images[:16]
    assert mirror_gap(root / "out" / "int8", images) > 1e-2  # the run's own setting: no TTA
    mirrored = quantize.quantize_workdir(root / "run", tmp_path / "out", train_split=train_split,
                                         eval_splits={"test": test}, calibration_images=256, timing_repeats=1,
                                         tta=True)
    run = runs.load_run(root / "run")
    assert mirror_gap(tmp_path / "out" / "int8", images) <= 1e-4
    assert mirrored["test"]["float32_accuracy"] == pytest.approx(
        evaluate.evaluate_run(run, test, tta=True).report["accuracy"], abs=1e-9)
    np.testing.assert_allclose(export.load_exported(tmp_path / "out" / "float32")(images),
                               run.logits(images, tta=True), atol=1e-4)


def test_cli_passes_tta_through(monkeypatch, tmp_path):
    seen = {}

    def record(*args, tta=None, **kwargs):
        seen["tta"] = tta
        raise ValueError("recorded")

    monkeypatch.setattr(quantize_cli, "quantize_workdir", record)
    for flag, expected in (("--tta", True), ("--no-tta", False)):
        assert quantize_cli.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "q"), flag]) == 2
        assert seen["tta"] is expected


@pytest.fixture
def experiments(monkeypatch):
    """experiments/ importable, as its scripts import one another."""
    monkeypatch.syspath_prepend(str(REPO / "experiments"))


def test_the_calibration_knee_is_the_fewest_images_within_the_tolerance_of_the_most(experiments):
    import calibration_size

    accuracies = {50: 0.90, 100: 0.930, 250: 0.932, 1000: 0.936}
    assert calibration_size.knee(accuracies, 0.005) == 250  # 100 is 0.6 points below 1000's
    assert calibration_size.knee(accuracies, 0.01) == 100
    assert calibration_size.knee({**accuracies, 50: 0.95}, 0.0) == 50  # above the largest size's counts too


@pytest.mark.tf("LiteRT conversion")
def test_the_calibration_experiment_calibrates_on_each_size_and_renders_its_table(tiny_run, tmp_path, experiments,
                                                                                  monkeypatch):
    import calibration_size
    import common
    import report

    splits = {"held out": synthetic_split(60, 3), "test": synthetic_split(40, 1)}  # the first one selects
    result = calibration_size.measure(tiny_run, synthetic_split(64, 0), splits, [4, 16], ("litert_int8",),
                                      tmp_path / "out", False, 0.005)
    for n in (4, 16):
        serving = json.loads((tmp_path / "out" / f"litert_int8_{n}" / export.SERVING_FILE).read_text())
        assert serving["litert"]["calibration_images"] == n
        row = result["sizes"][n]
        assert set(row) == {"seconds", *splits} and row["seconds"]["litert_int8"] > 0
        assert all(0 <= row[split]["litert_int8_agreement"] <= 1 for split in splits)
    held_out = {n: row["held out"]["litert_int8_accuracy"] for n, row in result["sizes"].items()}
    assert result["knee"] == {"litert_int8": calibration_size.knee(held_out, 0.005)}
    common.write_result("calibration_size", result, tmp_path)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    rendered = report.calibration_size().splitlines()
    assert [line.split(" | ")[0] for line in rendered if re.match(r"\| \d", line)] == ["| 4", "| 16"]
    assert any(f"LiteRT int8: **{result['knee']['litert_int8']} image" in line and "on held out" in line
               for line in rendered)


def test_timing_rounds_rotate_the_order_and_take_the_median_of_each_model(experiments):
    import litert_int8

    order = []
    calls = {name: (lambda name: lambda images: order.append(name) or np.zeros((len(images), 10)))(name)
             for name in ("float32", "litert_float32_threads1", "litert_int8_threads1")}
    timed = litert_int8.timing_rounds({1: calls, 256: dict(calls)}, np.zeros((256, 8, 8, 3), np.uint8),
                                      rounds=3, repeats=1)
    assert [r["order"] for r in timed["rounds"]] == [list(litert_int8.rotated(calls, by)) for by in range(3)]
    assert [r["order"][0] for r in timed["rounds"]] == list(calls)  # each model leads one round
    # Per round and batch size: one compiling call each, then one timed call each, in the round's order.
    assert order[:6] == list(calls) * 2 and order[12:18] == timed["rounds"][1]["order"] * 2
    for name, medians in timed["median_images_per_second"].items():
        for batch, median in medians.items():
            assert median == np.median([r["latency"][name][batch]["images_per_second"] for r in timed["rounds"]])
