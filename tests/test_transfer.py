"""Staged training: frozen backbone (parameters AND BatchNorm statistics untouched),
then fine-tuning; parameter-group rules; --init_from."""

import logging

import jax
import numpy as np
import pytest

from jaxcifar import checkpoint, optim, testing, train
from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar.testing import tiny_config

TINY_RESNET = {"stage_sizes": (1, 1), "width": 8}
GROUPS = {"backbone": "backbone/.*", "head": "head/.*"}


def staged_config(**fields):
    base = dict(model="resnet18", model_kwargs=TINY_RESNET, param_groups=GROUPS,
                lr_multipliers={"backbone": 1.0, "head": 1.0}, optimizer="sgd", lr=0.05, momentum=0.9,
                weight_decay=0.5, keep_checkpoints=5,  # a huge decay: it must still not touch frozen weights
                stages=({"name": "frozen", "epochs": 1, "lr_multipliers": {"backbone": None, "head": 1.0}},
                        {"name": "finetune", "epochs": 1, "lr": 0.01}))
    return tiny_config(**{**base, **fields})


def subtree(variables, collection, part):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(variables[collection][part])]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def one_stage_optimizer(params, **fields):
    """The optimizer of a one-stage `staged_config(**fields)`, at 10 steps per epoch."""
    stage = dict(config_lib.stage_plan(staged_config(stages=(), **fields)))["train"]
    return optim.make_optimizer(stage, GROUPS, params, 10)[0]


def test_frozen_stage_leaves_backbone_params_and_bn_stats_bit_identical(tmp_path, tiny_data):
    config = staged_config()
    trainer = train.Trainer(config, tmp_path, tiny_data)
    start = trainer.initial_state()
    start_vars = {"params": start.params, "batch_stats": start.batch_stats}
    trainer.checkpointer.close()
    train.fit(config, tmp_path, data=tiny_data)

    steps_per_epoch = 256 // 32
    after_frozen, _ = checkpoint.load_variables(tmp_path, steps_per_epoch)
    after_finetune, _ = checkpoint.load_variables(tmp_path, "latest")
    for collection in ("params", "batch_stats"):
        assert same(subtree(after_frozen, collection, "backbone"), subtree(start_vars, collection, "backbone"))
        assert not same(subtree(after_finetune, collection, "backbone"), subtree(start_vars, collection, "backbone"))
    assert not same(subtree(after_frozen, "params", "head"), subtree(start_vars, "params", "head"))


def test_a_stage_of_0_epochs_is_announced_as_skipped_not_as_training(tmp_path, tiny_data, caplog):
    stages = ({"name": "frozen", "epochs": 1, "lr_multipliers": {"backbone": None, "head": 1.0}},
              {"name": "finetune", "epochs": 0})
    with caplog.at_level(logging.INFO, logger=train.log.name):
        summary = train.fit(staged_config(stages=stages, batch_size=256), tmp_path, data=tiny_data)
    assert "Stage 'frozen' trains" in caplog.text and "Stage 'finetune' has 0 epochs: skipped." in caplog.text
    assert "Stage 'finetune' trains" not in caplog.text
    assert summary["trainable_parameters"]["finetune"] > 0  # still counted in the summary


def test_frozen_groups_get_no_optimizer_moments(tmp_path, tiny_data):
    config = staged_config(optimizer="adam")
    trainer = train.Trainer(config, tmp_path, tiny_data)
    state = trainer.initial_state()
    frozen, finetune = trainer.stages
    head_size = sum(x.size for x in jax.tree_util.tree_leaves(state.params["head"]))
    all_size = sum(x.size for x in jax.tree_util.tree_leaves(state.params))

    def moment_elements(stage):
        opt_state = trainer.with_fresh_opt_state(state, stage).opt_state
        return sum(x.size for x in jax.tree_util.tree_leaves(opt_state) if x.ndim > 0)

    assert moment_elements(frozen) == 2 * head_size  # Adam's mu and nu, head only
    assert moment_elements(finetune) == 2 * all_size
    trainer.checkpointer.close()


def test_unmatched_parameter_is_named():
    params = {"backbone": {"conv1": {"kernel": np.zeros((3, 3))}}, "head": {"kernel": np.zeros(2)}}
    with pytest.raises(ValueError, match="backbone/conv1/kernel"):
        optim.param_labels(params, {"head": "head/.*"})
    labels = optim.param_labels(params, {"bias": ".*bias", "head": "head/.*", "rest": ".*"})
    assert labels == {"backbone": {"conv1": {"kernel": "rest"}}, "head": {"kernel": "head"}}


def test_discriminative_learning_rates_scale_each_group():
    params = {"backbone": {"w": np.ones(2, np.float32)}, "head": {"w": np.ones(2, np.float32)}}
    tx = one_stage_optimizer(params, schedule="constant", warmup_epochs=0.0, optimizer="sgd", momentum=0.0,
                             weight_decay=0.0, lr=1.0, lr_multipliers={"backbone": 0.1, "head": 1.0})
    updates, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_allclose(updates["backbone"]["w"], -0.1)
    np.testing.assert_allclose(updates["head"]["w"], -1.0)


def test_init_from_run_with_other_head_size_and_mismatched_backbone(tmp_path, tiny_data):
    source = tmp_path / "pretrain"
    train.fit(staged_config(stages=()), source, data=tiny_data)
    pretrained, _ = checkpoint.load_variables(source, "best")

    three_class = data_lib.Data(*(data_lib.select_examples(s, (0, 1, 2)) for s in (tiny_data.train, tiny_data.eval)), 3)
    config = staged_config(data={"classes": (0, 1, 2)})
    trainer = train.Trainer(config, tmp_path / "transfer", three_class, init_from=str(source))
    state = trainer.initial_state()
    assert state.params["head"]["kernel"].shape[-1] == 3
    for collection in ("params", "batch_stats"):
        got = {"params": state.params, "batch_stats": state.batch_stats}
        assert same(subtree(got, collection, "backbone"), subtree(pretrained, collection, "backbone"))
    trainer.checkpointer.close()

    wider = staged_config(model_kwargs={"stage_sizes": (1, 1), "width": 16})
    with pytest.raises(ValueError, match="backbone does not fit"):
        train.fit(wider, tmp_path / "bad", data=tiny_data, init_from=str(source))


def test_stage_switch_resets_optimizer_and_resumes_across_stages(tmp_path, tiny_data):
    # dies right after the first checkpoint: at the frozen -> finetune boundary
    testing.assert_resumes_exactly(staged_config(), tmp_path, tiny_data)
    assert [h["stage"] for h in testing.read_history(tmp_path / "resumed")] == ["frozen", "finetune"]


def test_frozen_group_never_moves_even_with_gradients_weight_decay_and_momentum():
    """The optimizer alone must hold frozen weights (the model's stop_gradient is a second guard)."""
    params = {"backbone": {"kernel": np.ones((2, 2), np.float32)}, "head": {"kernel": np.ones((2, 2), np.float32)}}
    tx = one_stage_optimizer(params, optimizer="sgd", momentum=0.9, weight_decay=0.5, warmup_epochs=0.0,
                             lr_multipliers={"backbone": None, "head": 1.0})
    opt_state = tx.init(params)
    for _ in range(3):
        updates, opt_state = tx.update(params, opt_state, params)  # non-zero "gradients"
        np.testing.assert_array_equal(updates["backbone"]["kernel"], 0.0)
        assert np.abs(updates["head"]["kernel"]).min() > 0


def test_group_epochs_stop_a_group_after_its_epochs_despite_momentum_and_weight_decay():
    params = {"backbone": {"kernel": np.ones((2, 2), np.float32)}, "head": {"kernel": np.ones((2, 2), np.float32)}}
    tx = one_stage_optimizer(params, optimizer="sgd", momentum=0.9, weight_decay=0.5, warmup_epochs=0.0,
                              schedule="constant", lr_multipliers={"backbone": 1.0, "head": 1.0},
                              group_epochs={"backbone": 1})
    opt_state = tx.init(params)
    for step in range(12):  # 10 steps per epoch: the backbone trains for steps 0..9 only
        updates, opt_state = tx.update(params, opt_state, params)
        moved = np.abs(updates["backbone"]["kernel"]).min() > 0
        assert moved == (step < 10), step
        assert np.abs(updates["head"]["kernel"]).min() > 0


def test_weight_decay_multipliers_and_weight_decay_on_all_reach_biases():
    params = {"backbone": {"bias": np.ones(2, np.float32)}, "head": {"bias": np.ones(2, np.float32)}}
    zero_grads = jax.tree_util.tree_map(np.zeros_like, params)
    common = dict(optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.1, warmup_epochs=0.0, schedule="constant",
                  lr_multipliers={"backbone": 64.0, "head": 1.0})
    tx = one_stage_optimizer(params, weight_decay_on="all", weight_decay_multipliers={"backbone": 1 / 64}, **common)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # airbench's rule: the 64x-lr group decays at the same speed as the rest
    np.testing.assert_allclose(updates["backbone"]["bias"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["bias"], -0.1, rtol=1e-6)
    tx = one_stage_optimizer(params, **common)  # default: kernels only
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["head"]["bias"], 0.0)


def test_linear_schedule_runs_from_start_factor_to_peak_to_end_factor():
    stage = dict(config_lib.stage_plan(staged_config(
        stages=(), schedule="linear", lr=2.0, epochs=10, warmup_epochs=2.0, lr_start_factor=0.2,
        lr_end_factor=0.07)))["train"]
    schedule = optim.make_schedule(stage, 10)
    np.testing.assert_allclose([schedule(0), schedule(10), schedule(20), schedule(60), schedule(100)],
                               [0.4, 1.2, 2.0, 2.0 - (2.0 - 0.14) * 0.5, 0.14], rtol=1e-6)


def test_group_fields_naming_unknown_groups_are_rejected():
    with pytest.raises(ValueError, match="group_epochs names unknown groups"):
        config_lib.validate(staged_config(stages=(), group_epochs={"nope": 1}), 1)
    with pytest.raises(ValueError, match=r"group_epochs.head=99 must be in"):
        config_lib.validate(staged_config(stages=(), group_epochs={"head": 99}), 1)


def test_a_run_whose_best_epoch_is_in_an_earlier_stage_reports_that_epochs_weights(tmp_path, tiny_data, monkeypatch):
    """The best checkpoint of a frozen stage has another optimizer state than the last stage's
    (no moments for the frozen groups): it must restore all the same, and be what is reported."""
    data = data_lib.Data(tiny_data.train, tiny_data.eval, 10, validation=testing.synthetic_split(20, 2))
    frozen_only = train.fit(staged_config(stages=staged_config().stages[:1]), tmp_path / "frozen_only", data=data)
    monkeypatch.setattr(checkpoint.Checkpointer, "best_step", lambda self: min(self.steps()))  # the frozen epoch's
    summary = train.fit(staged_config(), tmp_path / "staged", data=data)
    assert summary["selection"]["epoch"] == 1 and summary["epochs_completed"] == 2
    assert summary["test_accuracy"] == frozen_only["test_accuracy"]
    assert summary["val_loss"] == frozen_only["val_loss"]
