"""Self-supervised pretraining: the views, the losses, the kNN monitor and linear probe,
labels never read, resume, and handing the backbone to a classifier."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import augment, checkpoint, methods, parallel, ssl, testing, train
from jaxcifar import steps as steps_lib
from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import evaluate as evaluate_lib
from jaxcifar.methods.base import Evaluator
from jaxcifar.runs import load_run
from jaxcifar.testing import synthetic_split, tiny_ssl_config


def tiny_data(labels_seed=None):
    """testing.tiny_data, or its images with other labels."""
    data = testing.tiny_data()
    if labels_seed is None:
        return data
    relabelled = np.random.default_rng(labels_seed).permutation(data.train.labels)
    return dataclasses.replace(data, train=data_lib.ArraySplit(data.train.images, relabelled))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# ----- views -----
def test_resized_crop_of_the_whole_image_is_the_image():
    images = jnp.asarray(synthetic_split(4).images, jnp.float32)
    same = augment.random_resized_crop(jax.random.key(0), images, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(same, images, atol=1e-3)


def test_resized_crop_zooms_in():
    """A crop of a quarter of the area shows a region at twice the size: a horizontal
    gradient keeps its direction and its slope doubles (within the window's position)."""
    ramp = jnp.broadcast_to(jnp.arange(32, dtype=jnp.float32)[None, None, :, None], (8, 32, 32, 3))
    crops = augment.random_resized_crop(jax.random.key(1), ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    slopes = np.diff(np.asarray(crops)[:, 16, 4:28, 0], axis=1)
    np.testing.assert_allclose(slopes, 0.5, atol=1e-4)


def test_colour_jitter_without_strength_and_grayscale():
    x = jnp.asarray(synthetic_split(4).images, jnp.float32) / 255
    np.testing.assert_allclose(augment.color_jitter(jax.random.key(0), x, 0, 0, 0, 0, probability=1.0), x, atol=1e-5)
    gray = augment.random_grayscale(jax.random.key(0), x, probability=1.0)
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-6)
    np.testing.assert_allclose(gray[..., 0], x @ jnp.asarray(augment.GRAY_WEIGHTS), atol=1e-6)
    # A hue shift moves colours but keeps the grey level (it rotates about the grey axis).
    shifted = augment._rotate_hue(x, jnp.full(4, 0.1))
    assert float(jnp.max(jnp.abs(shifted - x))) > 0.01
    np.testing.assert_allclose(augment._gray(shifted), augment._gray(x), atol=1e-5)


def test_two_views_differ_and_replay_from_the_key():
    config = config_lib.load_recipe("ssl_simclr")
    images = jnp.asarray(synthetic_split(8).images)
    view = lambda seed: augment.ssl_view(jax.random.key(seed), images, config.ssl, "cifar10")  # noqa: E731
    assert view(0).shape == (8, 32, 32, 3) and view(0).dtype == jnp.float32
    assert float(jnp.mean(jnp.abs(view(0) - view(1)))) > 0.1
    np.testing.assert_array_equal(view(0), view(0))


# ----- losses -----
def nt_xent_reference(z1, z2, t):
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    out = []
    for i in range(2 * n):
        logits = np.array([z[i] @ z[j] / t for j in range(2 * n) if j != i])
        others = [j for j in range(2 * n) if j != i]
        positive = others.index((i + n) % (2 * n))
        out.append(np.log(np.sum(np.exp(logits))) - logits[positive])
    return np.array(out)


def test_nt_xent_matches_its_definition():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)
    np.testing.assert_allclose(ssl.nt_xent(z1, z2, 0.2), nt_xent_reference(z1, z2, 0.2), rtol=1e-4)
    # Views that agree (and differ from the others) cost far less than unrelated ones.
    assert float(ssl.nt_xent(z1, z1, 0.2).mean()) < float(ssl.nt_xent(z1, z2, 0.2).mean()) - 1.0


def vicreg_reference(z1, z2, weights=(25.0, 25.0, 1.0)):
    def spread(z):
        z = z - z.mean(0)
        cov = np.cov(z, rowvar=False)
        off = cov - np.diag(np.diag(cov))
        return np.mean(np.maximum(0, 1 - np.sqrt(z.var(0) + 1e-4))), np.sum(off**2) / z.shape[1]
    (v1, c1), (v2, c2) = spread(z1.astype(np.float64)), spread(z2.astype(np.float64))
    return weights[0] * np.mean((z1 - z2) ** 2) + weights[1] * (v1 + v2) / 2 + weights[2] * (c1 + c2)


def test_vicreg_terms():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(64, 8)).astype(np.float32), rng.normal(size=(64, 8)).astype(np.float32) * 0.5
    assert float(ssl.vicreg(z1, z2)) == pytest.approx(vicreg_reference(z1, z2), rel=1e-4)
    z = rng.normal(size=(4096, 8)).astype(np.float32) * 2.0  # std 2 > 1, nearly uncorrelated
    assert float(ssl.vicreg(z, z)) < 0.1  # only sampling covariance left to pay
    collapsed = np.zeros_like(z)
    assert float(ssl.vicreg(collapsed, collapsed)) == pytest.approx(25.0 * (1 - 1e-2), rel=1e-3)  # sqrt(1e-4) = 1e-2
    assert float(ssl.vicreg(z, z + 1.0, invariance=1.0, variance=0.0, covariance=0.0)) == pytest.approx(1.0)
    correlated = np.concatenate([z[:, :1]] * 8, axis=1)
    assert float(ssl.vicreg(correlated, correlated, invariance=0, variance=0)) > 1.0


def test_view_matching_counts_own_view_nearest():
    z = np.eye(4, dtype=np.float32)
    np.testing.assert_array_equal(ssl.view_matching(z, z), 1.0)
    np.testing.assert_array_equal(ssl.view_matching(z, z[::-1]), [0, 0, 0, 0])


# ----- kNN and linear probe -----
def test_knn_votes_weighted_by_similarity():
    bank = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], np.float32)
    labels = np.array([0, 0, 1, 1, 1])
    queries = np.array([[1, 0.05], [0.05, 1]], np.float32)
    np.testing.assert_array_equal(ssl.knn_predict(bank, labels, queries, 2, k=5, temperature=0.1), [0, 1])
    # With a flat weighting the majority of the 5 (class 1) wins instead.
    np.testing.assert_array_equal(ssl.knn_predict(bank, labels, queries, 2, k=5, temperature=1e6), [1, 1])
    # k larger than the bank, and queries in several chunks, give the same answer.
    np.testing.assert_array_equal(ssl.knn_predict(bank, labels, np.tile(queries, (3, 1)), 2, k=50, chunk=4),
                                  [0, 1] * 3)


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    features = rng.normal(size=(300, 16)).astype(np.float32) + 3 * np.eye(3, 16)[labels]
    predicted = ssl.linear_probe(features[:200], labels[:200], features[200:], 3)
    assert np.mean(predicted == labels[200:]) > 0.95


# ----- the objective in the training loop -----
def test_each_method_evaluates_the_metrics_its_registry_entry_declares():
    """The registry is the one declaration of a method's eval metrics: config's choices and
    early stopping's watchable metrics come from it, and `evaluate` returns exactly them."""
    data = tiny_data()
    evaluator = Evaluator(parallel.make_mesh(), 20, data.train)
    for name in methods.names():
        config = tiny_ssl_config()
        config_lib.override(config, "objective", name)  # with that method's own settings
        method = methods.create(config, 10)
        evaluated = method.evaluate(evaluator, steps_lib.create_state(method.model, jax.random.key(0)), data.eval)
        assert tuple(evaluated) == tuple(methods.info(name).eval_metrics)
    # An entry that could not select a checkpoint by its own metrics is refused.
    for selection in ("knn_accuracy", "loss"):
        with pytest.raises(ValueError, match=f"selection metric '{selection}' must be one of its eval metrics"):
            methods.register(methods.MethodInfo("other", "", "module:attribute", ("classification",), selection))
    assert "other" not in methods.names()
    with_validation = {"validation_fraction": 0.1}
    with pytest.raises(ValueError, match="val_knn_accuracy"):
        config_lib.validate(tiny_ssl_config(data=with_validation, early_stopping={"patience": 2, "metric": "val_loss"}), 1)
    config_lib.validate(tiny_ssl_config(data=with_validation, early_stopping={"patience": 2, "metric": "val_knn_accuracy"}), 1)


@pytest.mark.parametrize("method", ["ssl_simclr", "ssl_vicreg", "ssl_multicrop"])
def test_pretraining_never_reads_labels_and_resumes_exactly(tmp_path, method):
    """The same images with shuffled labels give bit-identical weights: labels reach only
    the kNN monitor, which reads but never trains. (The run they are compared with is the
    straight run of the resume check.)"""
    summary, _ = testing.assert_resumes_exactly(tiny_ssl_config(method), tmp_path, tiny_data())
    train.fit(tiny_ssl_config(method), tmp_path / "relabelled", data=tiny_data(labels_seed=1))
    weights = [leaves(checkpoint.load_variables(tmp_path / name, "latest")[0]) for name in ("straight", "relabelled")]
    assert len(weights[0]) > 10
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    assert summary["metric"] == "knn_accuracy" and "test_accuracy" not in summary
    history, relabelled = (testing.read_history(tmp_path / name) for name in ("straight", "relabelled"))
    # The shuffled labels make a different kNN classifier out of the same features. Compared over
    # both epochs, not the last alone: the tiny VICReg run diverges in its second epoch, and on such
    # features the two classifiers' accuracies can coincide (they did on JAX 0.12.1).
    assert [h["eval_knn_accuracy"] for h in relabelled] != [h["eval_knn_accuracy"] for h in history]
    assert [sorted(k for k in h if k.startswith("eval_")) for h in history] == [["eval_knn_accuracy"]] * 2
    assert summary["selection"]["weights"] == "final"  # no validation split: nothing is selected


def test_knn_monitor_learns_and_picks_the_best_checkpoint_on_validation(tmp_path):
    """On images whose brightness encodes the class, SSL features separate the classes well
    above chance, and 'best' is the epoch with the best kNN accuracy on the validation split."""
    data = dataclasses.replace(tiny_data(), validation=synthetic_split(60, 3))
    summary = train.fit(tiny_ssl_config(epochs=3, data={"validation_fraction": 0.1}), tmp_path, data=data)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(history, key=lambda h: h["val_knn_accuracy"])
    assert summary["selection"]["step"] == best_epoch["step"]
    assert summary["val_knn_accuracy"] == best_epoch["val_knn_accuracy"] > 0.3  # chance is 0.1


def test_knn_bank_is_computed_once_per_set_of_weights():
    """The eval split and the extra splits share one bank; other weights at the same step
    (early stopping's restore of its best epoch) get their own."""
    data = tiny_data()
    config = tiny_ssl_config()
    objective = methods.create(config, 10)
    state = steps_lib.create_state(objective.model, jax.random.key(0))
    evaluator = Evaluator(parallel.make_mesh(), 20, data.train)
    bank_reads = []  # one entry per pass of the network over a split: True for the train split
    batches = evaluator._batches
    evaluator._batches = lambda split: bank_reads.append(split is data.train) or batches(split)
    first = objective.evaluate(evaluator, state, data.eval)
    assert objective.evaluate(evaluator, state, data.eval) == first
    assert bank_reads.count(True) == 1
    other = state.replace(params=jax.tree_util.tree_map(lambda x: x * 1.5, state.params))  # same step
    objective.evaluate(evaluator, other, data.eval)
    assert bank_reads.count(True) == 2


def finetune_config(**stages):
    config = config_lib.load_recipe("ssl_finetune")
    config_lib.apply_dict(config, {"model_kwargs": {"widths": (8, 16, 16)}, "batch_size": 32, "eval_batch_size": 20,
                                   "log_every_steps": 2})
    config.stages = tuple(dict(s, epochs=stages.get(s["name"], 1)) for s in config.stages)
    return config


def test_backbone_goes_to_a_classifier_and_a_frozen_stage_keeps_it(tmp_path):
    """--init_from an SSL workdir: the classifier starts from its backbone (weights and
    BatchNorm statistics), the projector stays behind, and a linear-probe stage trains the
    head only, with the backbone's statistics untouched."""
    train.fit(tiny_ssl_config(), tmp_path / "ssl", data=tiny_data())
    ssl_vars, _ = checkpoint.load_variables(tmp_path / "ssl", "best")
    train.fit(finetune_config(frozen=2, finetune=0), tmp_path / "probe", data=tiny_data(), init_from=str(tmp_path / "ssl"))
    probe_vars, _ = checkpoint.load_variables(tmp_path / "probe", "latest")
    assert set(probe_vars["params"]) == {"backbone", "head"}
    for collection in ("params", "batch_stats"):
        for a, b in zip(leaves(ssl_vars[collection]["backbone"]), leaves(probe_vars[collection]["backbone"])):
            np.testing.assert_array_equal(a, b)
    # The full fine-tune moves the backbone away from it.
    train.fit(finetune_config(frozen=1, finetune=1), tmp_path / "ft", data=tiny_data(), init_from=str(tmp_path / "ssl"))
    ft_vars, _ = checkpoint.load_variables(tmp_path / "ft", "latest")
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(ssl_vars["params"]["backbone"]),
                                                        leaves(ft_vars["params"]["backbone"])))


def test_evaluate_reports_knn_and_linear_probe_and_other_tools_refuse(tmp_path):
    data = tiny_data()
    summary = train.fit(tiny_ssl_config(), tmp_path, data=data)
    report, paths = evaluate_lib.evaluate_workdir(tmp_path, split=data.eval, train_split=data.train)
    # The kNN classifier of evaluate is the one the loop monitors with.
    assert report["knn_accuracy"] == summary["test_knn_accuracy"]
    assert report["linear_probe_accuracy"] > 0.3 and report["train_examples"] == 256
    assert json.loads(paths["report.json"].read_text())["knn_accuracy"] == report["knn_accuracy"]
    assert "kNN accuracy" in evaluate_lib.summary_text(report)
    run = load_run(tmp_path)
    with pytest.raises(ValueError, match="self-supervised.*ssl_finetune --init_from"):
        run.logits(data.eval.images[:2])


ONE_SSL_STEP_ON_8_DEVICES_AND_ON_1 = """
import json
import jax, numpy as np, optax
from jaxcifar import methods, parallel, steps
from jaxcifar.methods.base import StageContext
from jaxcifar.testing import synthetic_split, tiny_ssl_config

config = tiny_ssl_config(model="simple_cnn")
config.model_kwargs = type(config.model_kwargs)()
objective, tx = methods.create(config, 10), optax.sgd(0.05, momentum=0.9)
state = steps.create_state(objective.model, jax.random.key(0))
state = state.replace(opt_state=tx.init(state.params))
step = jax.jit(objective.train_step(tx, StageContext(steps_per_epoch=8)))
data = synthetic_split(64, 0)
batch = {"image": data.images, "label": data.labels}
mesh = parallel.make_mesh()
on_eight = step(jax.device_put(state, parallel.replicated(mesh)), jax.device_put(batch, parallel.batch_sharding(mesh)))
on_one = step(jax.device_put(state, jax.devices()[0]), jax.device_put(batch, jax.devices()[0]))
difference = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                 for x, y in zip(jax.tree_util.tree_leaves(on_eight[0].params), jax.tree_util.tree_leaves(on_one[0].params)))
first_device_rows = step(state, {k: v[:8] for k, v in batch.items()})  # its own negatives only
print(json.dumps({"devices": jax.device_count(), "difference": difference,
                  "loss": [float(on_eight[1]["loss_sum"]), float(on_one[1]["loss_sum"])],
                  "local_negatives_loss": float(first_device_rows[1]["loss_sum"]) * 8}))
"""


@pytest.mark.slow  # a fresh process
def test_ssl_step_on_eight_devices_equals_one_device():
    """NT-Xent over the global batch: on 8 devices every device's views are negatives for
    every other's, so the step is the 1-device step up to float32 summation order. Measured
    with simple_cnn's backbone: 1.6e-6 apart after one SGD step (the 128 x 128 similarity
    matrix at temperature 0.2 amplifies rounding more than cross-entropy does; the
    supervised step is 7.5e-9 apart), against a bound of 1e-5. (The toy airbench, with
    BatchNorm epsilon 1e-12 on 4x4 maps of 16 channels, amplifies the same rounding to 3e-4
    in its last conv, a 6% share of the update, so it makes no test of rounding.) A device
    that used only its own rows as negatives would see a loss of another size entirely."""
    out = subprocess.run([sys.executable, "-c", ONE_SSL_STEP_ON_8_DEVICES_AND_ON_1],
                         capture_output=True, text=True, timeout=300,
                         env=testing.with_cpu_devices(8))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-5)
    assert result["difference"] <= 1e-5
    assert abs(result["local_negatives_loss"] - result["loss"][1]) > 0.1 * result["loss"][1]
