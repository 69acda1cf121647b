"""The `fast` recipe's parts: device-resident batches, alternating flip, whitening layer,
translate TTA, lookahead, scanned epochs, running without TensorFlow."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcifar import augment, checkpoint, config as config_lib, data as data_lib, steps, train
from jaxcifar.methods.base import StageContext
from jaxcifar.methods.classification import Classification
from jaxcifar.models import create_model
from jaxcifar.models.airbench import batch_norm, whitening_kernel
from jaxcifar.testing import synthetic_split, tiny_config, write_jpeg_pack


def test_device_resident_batches_train_exactly_like_tf_data(tmp_path, tiny_data):
    results = {}
    for resident in (False, True):
        cfg = tiny_config(epochs=1, data={"device_resident": resident})
        results[resident] = train.fit(cfg, tmp_path / str(resident), data=tiny_data)
    a, _ = checkpoint.load_variables(tmp_path / "False", "latest")
    b, _ = checkpoint.load_variables(tmp_path / "True", "latest")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert results[True]["test_loss"] == results[False]["test_loss"]


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (64, 4, 4, 1)), jnp.uint8)
    index, key = jnp.arange(64), jax.random.key(0)
    flipped = lambda epoch: np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(  # noqa: E731
        np.asarray(augment.alternating_flip(key, images, index, jnp.asarray(epoch))), np.asarray(images))])
    e0, e1, e2 = flipped(0), flipped(1), flipped(2)
    assert 16 < e0.sum() < 48
    assert np.array_equal(e0, e2) and np.array_equal(e0, ~e1)


def test_whitening_kernel_decorrelates_patches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8, 8, 3)) @ np.array([[1, 0.7, 0.2], [0, 1, 0.5], [0, 0, 1]])
    kernel = whitening_kernel(x)
    out = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32), kernel, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    feats = np.asarray(out)[..., :12].reshape(-1, 12)
    np.testing.assert_allclose(feats.T @ feats / len(feats), np.eye(12), atol=0.02)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])


def test_translate_tta_averages_shifted_views_and_is_exact_on_constant_images():
    model = create_model("airbench")
    variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
    constant = jnp.ones((2, 32, 32, 3))  # flips and shifts of a constant image are itself
    plain = steps.predict_logits(model, variables, constant)
    np.testing.assert_allclose(steps.predict_logits(model, variables, constant, tta=True, translate=True), plain,
                               rtol=1e-5, atol=1e-6)
    noise = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    assert not np.allclose(steps.predict_logits(model, variables, noise, tta=True, translate=True),
                           steps.predict_logits(model, variables, noise, tta=True))


def test_fast_recipe_groups_freeze_whitening_and_boost_bn_biases():
    cfg = config_lib.load_recipe("fast")
    assert list(cfg.param_groups) == ["whiten_kernel", "whiten_bias", "bn_bias", "rest"]  # order survives
    model = create_model("airbench")  # the labels need only the parameters' paths: no values computed
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 32, 32, 3)))["params"]
    from jaxcifar import optim

    labels = optim.param_labels(params, cfg.param_groups)
    assert labels["backbone"]["whiten"] == {"kernel": "whiten_kernel", "bias": "whiten_bias"}
    assert labels["backbone"]["group2"]["bn1"]["bias"] == "bn_bias"
    assert labels["head"]["kernel"] == "rest"


def airbench_lookahead_reference(deltas, every, decay):
    """airbench94's loop, literally: optimizer step, then every `every` steps
    `ema.lerp_(net, 1 - alpha[step]); net.copy_(ema)`, and at the end `decay=1.0`."""
    total = len(deltas)
    alpha = decay * (np.arange(total + 1) / total) ** 3
    net = np.zeros(3)
    ema = net.copy()
    for step, delta in enumerate(deltas, start=1):
        net = net + delta
        if step % every == 0:
            ema += (1 - alpha[step]) * (net - ema)
            net = ema.copy()
        if step >= total:
            net = ema.copy()
    return net


def test_lookahead_matches_airbench_loop_and_ends_on_slow_weights():
    deltas = np.random.default_rng(0).normal(size=(13, 3))
    fast = slow = jnp.zeros(3)
    for step, delta in enumerate(deltas, start=1):
        fast, slow = steps.lookahead(fast + delta, slow, jnp.asarray(step), len(deltas), every=5, decay=0.95**5)
    np.testing.assert_allclose(fast, airbench_lookahead_reference(deltas, 5, 0.95**5), rtol=1e-5)
    np.testing.assert_array_equal(fast, slow)


def test_train_step_with_lookahead_keeps_bn_statistics_in_the_average():
    model = create_model("airbench")
    cfg = tiny_config(model="airbench", lookahead_every=2, optimizer="sgd", lr=0.1)
    state = steps.create_state(model, jax.random.key(0), lookahead=True)
    tx = optax.sgd(0.1)
    state = state.replace(opt_state=tx.init(state.params))
    step = jax.jit(Classification(cfg, 10, model).train_step(tx, StageContext(steps_per_epoch=3, stage_steps=(0, 3))))
    batch = {"image": jnp.asarray(np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)), jnp.uint8),
             "label": jnp.arange(8) % 10}
    leaves = lambda tree: [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]  # noqa: E731
    state, _ = step(state, batch)  # step 1: fast moves, slow does not
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(state.params), leaves(state.slow["params"])))
    state, _ = step(state, batch)  # step 2: sync, fast restarts from slow (BatchNorm stats included)
    for a, b in zip(leaves((state.params, state.batch_stats)), leaves((state.slow["params"], state.slow["batch_stats"]))):
        np.testing.assert_array_equal(a, b)


def test_airbench_convs_start_as_pytorch_default_plus_identity():
    params = create_model("airbench").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    conv1 = np.asarray(params["backbone"]["group2"]["conv1"]["kernel"])  # 64 -> 256
    identity = np.zeros((3, 3, 64, 64))
    identity[1, 1] = np.eye(64)
    np.testing.assert_array_equal(conv1[..., :64], identity)
    rest = conv1[..., 64:]
    bound = 1 / np.sqrt(3 * 3 * 64)  # PyTorch: U(+/-1/sqrt(fan_in))
    assert np.abs(rest).max() <= bound and np.abs(rest).max() > 0.9 * bound


def test_airbench_batchnorm_updates_running_stats_like_airbench():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(2.0, 3.0, (8, 4, 4, 5)).astype(np.float32)
    bn = batch_norm(use_running_average=False, name="bn")
    variables = bn.init(jax.random.key(0), x)
    y, updated = bn.apply(variables, x, mutable=["batch_stats"])
    reference = torch.nn.BatchNorm2d(5, eps=1e-12, momentum=1 - 0.6, affine=False)  # airbench94's BatchNorm
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], reference.running_mean.numpy(), rtol=1e-5)


def test_lookahead_step_needs_its_stage_length():
    cfg = tiny_config(lookahead_every=5)
    with pytest.raises(ValueError, match="stage_steps"):
        Classification(cfg, 10).train_step(optax.sgd(0.1), StageContext(steps_per_epoch=4))


def max_weight_difference(a: steps.TrainState, b: steps.TrainState) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)))


def test_epoch_scan_computes_what_the_step_loop_computes():
    """The scan runs the same step on the same batches in the same order; XLA compiles the
    scanned body with other fusions, so the two differ by float32 rounding, which the
    trajectory then amplifies. The tolerances come from `experiments/rounding_drift.py`
    (experiments/results/rounding_drift.json), which measures that amplification:
    - after 1 step: 1.5e-8 apart (one ulp of the largest weight, 0.14), so 1e-6 is ~60 ulps;
    - after 4 steps: 3.0e-5 apart here, 1.3e-5 on another CPU (the issue's AVX2 machine).
      Nudging every initial weight by one ulp moves the step loop's own result by up to
      6.2e-5 (8 nudges): rounding-sized differences grow ~1000x when a ReLU or max-pool
      flips. The bound, 1e-3, is 16x that; feeding the same batches in the wrong order (the
      bug this guards against) moves the weights by 1.4e-2, which the test checks stays
      well above the bound, so the test can fail."""
    model, tx = create_model("simple_cnn"), optax.sgd(0.05, momentum=0.9)
    state = steps.create_state(model, jax.random.key(0))
    state = state.replace(opt_state=tx.init(state.params))
    cfg = tiny_config(augment={"crop_padding": 0, "flip": False})
    step = Classification(cfg, 10, model).train_step(tx, StageContext(steps_per_epoch=4))
    data = synthetic_split(128, 0)
    split = {"image": jnp.asarray(data.images), "label": jnp.asarray(data.labels)}
    rows = jnp.asarray(np.random.default_rng(0).permutation(128).reshape(4, 32))
    scan, jitted = jax.jit(steps.make_epoch_scan(step)), jax.jit(step)

    def step_loop(order):
        s, sums = state, None
        for r in order:
            s, metrics = jitted(s, steps.gather_batch(split, r))
            sums = steps.accumulate(sums, metrics)
        return s, sums

    assert max_weight_difference(scan(state, split, rows[:1])[0], step_loop(rows[:1])[0]) <= 1e-6
    (scanned, scan_sums), (looped, loop_sums) = scan(state, split, rows), step_loop(rows)
    assert int(scanned.step) == int(looped.step) == 4
    assert max_weight_difference(scanned, looped) <= 1e-3
    assert max_weight_difference(step_loop(rows[::-1])[0], looped) > 5e-3
    summarize = lambda sums: steps.summarize(sums, steps.loss_and_accuracy)  # noqa: E731
    assert summarize(scan_sums) == pytest.approx(summarize(loop_sums), rel=1e-4)


def test_scan_epoch_runs_through_fit_like_the_step_loop(tmp_path, tiny_data, caplog):
    results, warned = {}, {}
    for scan in (False, True):
        cfg = tiny_config(epochs=2, optimizer="sgd", lr=0.05, data={"device_resident": True, "scan_epoch": scan})
        caplog.clear()
        results[scan] = train.fit(cfg, tmp_path / str(scan), data=tiny_data)
        warned[scan] = "data.scan_epoch=True on a CPU" in caplog.text
    assert warned == {False: False, True: True}  # the scan is slow on XLA:CPU (docs/design.md)
    assert results[True]["steps"] == results[False]["steps"] == 2 * (256 // 32)
    history = {scan: [json.loads(line)["train_loss"] for line in (tmp_path / str(scan) / "metrics.jsonl").open()]
               for scan in (False, True)}
    # Not bit-identical: XLA fuses the scanned step differently, and on these zero-padded
    # synthetic crops a last-bit difference can move a max-pool's tie-break, which changes
    # later updates by ~lr * gradient (without flips, the step-level test above agrees to 1e-6).
    np.testing.assert_allclose(history[True], history[False], rtol=1e-3)
    assert abs(results[True]["test_accuracy"] - results[False]["test_accuracy"]) <= 2 / 77


def test_scan_epoch_needs_device_resident_data():
    with pytest.raises(ValueError, match="scan_epoch=True needs data.device_resident=True"):
        config_lib.validate(tiny_config(data={"scan_epoch": True}), 1)


NO_TENSORFLOW_FIT = """
import sys
sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None  # any import of them now fails
from jaxcifar import data, train
from jaxcifar.testing import tiny_config
splits = data.load_jpeg_pack({pack!r})
summary = train.fit(tiny_config(epochs=1, batch_size=16, data={{"device_resident": True, "scan_epoch": True}}),
                    {workdir!r}, data=data.Data(splits["train"], splits["test"], 10))
print("RESULT", summary["steps"], summary["eval_examples"])
"""


@pytest.mark.slow  # a fresh process
def test_device_resident_path_trains_from_a_jpeg_pack_without_tensorflow(tmp_path):
    pack = tmp_path / "pack.npz"
    write_jpeg_pack(pack, {"train": synthetic_split(64, 0), "test": synthetic_split(20, 1)})
    decoded = data_lib.load_jpeg_pack(str(pack))
    assert decoded["train"].images.shape == (64, 32, 32, 3) and decoded["train"].images.dtype == np.uint8
    np.testing.assert_array_equal(decoded["test"].labels, synthetic_split(20, 1).labels)
    original, other = synthetic_split(64, 0).images.astype(int), synthetic_split(64, 5).images.astype(int)
    jpeg_error = np.abs(decoded["train"].images - original).mean()
    assert jpeg_error < 0.5 * np.abs(other - original).mean()  # lossy (noise images), but the same pictures

    script = NO_TENSORFLOW_FIT.format(pack=str(pack), workdir=str(tmp_path / "run"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RESULT 4 20" in out.stdout  # 64 / 16 steps; every test image evaluated
