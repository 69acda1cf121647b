"""Mixed precision (`config.precision`, jaxcifar/precision.py): bfloat16 compute, float32 state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import checkpoint, methods, models, runs, train
from jaxcifar import config as config_lib
from jaxcifar import steps as steps_lib
from jaxcifar.precision import compute_dtype
from jaxcifar.testing import (PRECISION_CURVE_ATOL, crash_after_saves, loss_curve, read_history, synthetic_split,
                              tiny_config)


def test_auto_picks_bfloat16_on_accelerators_and_float32_on_cpus():
    assert compute_dtype("auto", "gpu")[0] == compute_dtype("auto", "tpu")[0] == jnp.bfloat16
    dtype, reason = compute_dtype("auto", "cpu")
    assert dtype == jnp.float32 and "cpu" in reason
    assert compute_dtype("bfloat16", "cpu")[0] == jnp.bfloat16  # a named precision is taken as it is
    assert compute_dtype("float32", "gpu")[0] == jnp.float32


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision='float16': use float32, bfloat16 or auto"):
        config_lib.validate(tiny_config(precision="float16"), 1)


def float_dtypes(tree) -> set:
    return {leaf.dtype for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


def test_bfloat16_computes_in_bfloat16_and_keeps_parameters_and_batchnorm_statistics_in_float32():
    config = tiny_config(model="airbench", model_kwargs={"widths": (8, 8, 8)}, precision="bfloat16")
    model = methods.create(config, 10).model
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), images, train=False)
    logits, updated = model.apply(variables, images, train=True, mutable=["batch_stats", "intermediates"],
                                  capture_intermediates=True)
    conv = updated["intermediates"]["backbone"]["group1"]["conv1"]["__call__"][0]
    bn = updated["intermediates"]["backbone"]["group1"]["bn1"]["__call__"][0]
    assert conv.dtype == bn.dtype == jnp.bfloat16  # activations between the layers
    assert logits.dtype == jnp.float32  # so the softmax and the loss are float32
    assert float_dtypes(variables) == float_dtypes(updated["batch_stats"]) == {jnp.dtype(jnp.float32)}


def test_the_loss_and_its_metrics_are_float32_whatever_the_logits_dtype():
    """A bfloat16 softmax would round probabilities to 8 bits of mantissa; the loss casts first."""
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, 10)) * 20, jnp.bfloat16)
    labels = jnp.arange(8) % 10
    loss = steps_lib.cross_entropy(logits, labels)
    assert loss.dtype == jnp.float32
    np.testing.assert_array_equal(loss, steps_lib.cross_entropy(logits.astype(jnp.float32), labels))
    assert {v.dtype for v in steps_lib.metric_sums(logits, labels, loss).values()} == {jnp.dtype(jnp.float32)}


def test_float32_is_the_default_and_builds_the_registrys_models_unchanged():
    config = tiny_config(model="airbench", model_kwargs={"widths": (8, 8, 8)})
    assert config.precision == "float32"
    ours, registry = methods.create(config, 10).model, models.create_model("airbench", 10, widths=(8, 8, 8))
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
    variables = registry.init(jax.random.key(0), images, train=False)
    apply = lambda model: model.apply(variables, images, train=True, mutable=["batch_stats"])  # noqa: E731
    jax.tree_util.tree_map(np.testing.assert_array_equal, apply(ours), apply(registry))


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    """float32 and bfloat16 runs of the loss curve: (workdir root, {precision: (losses, summary)})."""
    root = tmp_path_factory.mktemp("precision")
    return root, {precision: loss_curve(root / precision, precision) for precision in ("float32", "bfloat16")}


def test_a_bfloat16_run_trains_and_follows_float32s_loss_curve(curves):
    _, runs_by_precision = curves
    (exact, exact_summary), (low, summary) = runs_by_precision["float32"], runs_by_precision["bfloat16"]
    assert summary["compute_dtype"] == "bfloat16" and exact_summary["compute_dtype"] == "float32"
    assert low[-1] < 0.5 * low[0] and summary["test_accuracy"] > 0.5  # it learns (chance is 0.1)
    np.testing.assert_allclose(low, exact, rtol=0, atol=PRECISION_CURVE_ATOL)


def test_a_bfloat16_runs_checkpoint_holds_float32_parameters_and_optimizer_state(curves):
    root, _ = curves
    manager = checkpoint._open_for_reading(root / "bfloat16" / "checkpoints")
    try:
        saved = manager.item_metadata(manager.latest_step()).state
    finally:
        manager.close()
    assert set(saved) >= {"params", "opt_state", "batch_stats"}
    assert float_dtypes(saved) == {jnp.dtype(jnp.float32)}  # params, Adam's moments, everything


def test_inference_computes_at_the_runs_precision_unless_told_otherwise(curves):
    root, _ = curves
    run, exact = runs.load_run(root / "bfloat16"), runs.load_run(root / "bfloat16", precision="float32")
    assert run.model.dtype == jnp.bfloat16 and exact.model.dtype == jnp.float32
    images = synthetic_split(16, 2).images
    low, high = np.asarray(run.logits(images)), np.asarray(exact.logits(images))
    assert low.dtype == high.dtype == np.float32
    assert not np.array_equal(low, high)  # the run's own precision really computed in bfloat16
    assert np.mean(low.argmax(-1) == high.argmax(-1)) >= 0.9
    # Export and serve run `serving_fn` (the weights baked in as constants, which XLA folds into
    # other roundings: not bit-equal to `logits`), evaluate and predict `logits`.
    served, served_exact = (np.asarray(jax.jit(r.serving_fn())(images)) for r in (run, exact))
    np.testing.assert_array_equal(served_exact, high)
    assert not np.array_equal(served, served_exact)
    np.testing.assert_allclose(served, low, rtol=0.02, atol=0.25)  # a bfloat16 ulp is 0.125 at |logit| 16..32


@pytest.mark.parametrize("first, then", [("float32", "bfloat16"), ("bfloat16", "float32")])
def test_a_run_resumes_at_the_other_precision(tmp_path, tiny_data, first, then):
    crash_after_saves(lambda: train.fit(tiny_config(precision=first), tmp_path, data=tiny_data))
    [crashed] = read_history(tmp_path)
    summary = train.fit(tiny_config(precision=then), tmp_path, data=tiny_data)
    history = read_history(tmp_path)
    assert summary["compute_dtype"] == then and summary["epochs_completed"] == 2
    assert history[0] == crashed and history[1]["step"] == 2 * 256 // 32  # epoch 1 kept, epoch 2 trained on
