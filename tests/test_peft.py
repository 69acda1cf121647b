"""Parameter-efficient fine-tuning (jaxcifar/peft.py): what each mode trains, LoRA's merge,
and adapters that load as their run."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcifar import config as config_lib
from jaxcifar import data as data_lib
from jaxcifar import checkpoint, evaluate, models, optim, peft, runs, train
from jaxcifar.models.layers import LoRA
from jaxcifar.testing import synthetic_split, tiny_config

# resnet18's blocks (BatchNorm, a stride-2 stage, a 1x1 shortcut) in two stages of one block (a quarter
# of its convolutions to compile); 32 channels wide, so that LoRA's rank 2 and BitFit's biases are as small a part
# of the model as on a real network (at 8 channels an adapter of rank 2 is a seventh of the convs).
NET = dict(model="resnet18", model_kwargs={"width": 32, "stage_sizes": (1, 1)},
           param_groups={"backbone": "backbone/.*", "head": "head/.*"},
           lr_multipliers={"backbone": 1.0, "head": 1.0})
PEFT = {"rank": 2, "alpha": 4.0}


def data(seed: int) -> data_lib.Data:
    return data_lib.Data(synthetic_split(128, seed), synthetic_split(40, seed + 1), 10)


# Each run's name -> its peft block: every mode, and lora with bitfit's parameters alongside.
RUNS = {**{mode: {"mode": mode, **PEFT} for mode in ("linear", "bitfit", "lora", "full")},
        "lora_norms": {"mode": "lora", **PEFT, "train_norms": True}}


@pytest.fixture(scope="module")
def peft_runs(tmp_path_factory):
    """A base run, and one run of each PEFT mode (and of lora + train_norms) started from it on
    other data."""
    root = tmp_path_factory.mktemp("peft")
    train.fit(tiny_config(**NET, epochs=1), root / "base", data=data(0))
    summaries = {name: train.fit(tiny_config(**NET, epochs=1, peft=block), root / name, data=data(2),
                                 init_from=str(root / "base"))
                 for name, block in RUNS.items()}
    return root, summaries


def flat(tree) -> dict:
    return peft.flat(jax.tree_util.tree_map(np.asarray, tree))


def test_each_mode_trains_what_it_names():
    trained_by = {"head/kernel": {"full", "linear", "bitfit", "lora"},
                  "backbone/layer1_0/conv1/kernel": {"full"},
                  "backbone/layer1_0/bn1/scale": {"full", "bitfit"},
                  "backbone/layer1_0/bn1/bias": {"full", "bitfit"},
                  "backbone/conv1/bias": {"full", "bitfit"},
                  "backbone/layer1_0/conv1/lora_a/kernel": {"full", "lora"},
                  "backbone/layer1_0/conv1/lora_b/kernel": {"full", "lora"}}
    for path, modes in trained_by.items():
        assert {mode for mode in peft.MODES if peft.is_trainable(mode, path)} == modes, path


def test_lora_with_train_norms_trains_exactly_what_lora_and_bitfit_train():
    model = models.create_model("resnet18", 10, lora=LoRA(2, 4.0), width=8)
    # The labels need only the parameters' paths and shapes: no values computed.
    init = lambda images: model.init(jax.random.key(0), images, train=False)  # noqa: E731
    params = jax.eval_shape(init, jnp.zeros((1, 32, 32, 3)))["params"]
    stage = dict(config_lib.stage_plan(tiny_config(**NET)))["train"]

    def trained(mode: str, train_norms: bool = False) -> set[str]:  # as the loop's optimizer labels them
        return optim.trainable_paths(optim.make_optimizer(stage, NET["param_groups"], params, 10, mode, train_norms)[1])

    lora, bitfit, both = trained("lora"), trained("bitfit"), trained("lora", train_norms=True)
    assert lora - bitfit and bitfit - lora  # each adds something the other leaves frozen
    assert both == lora | bitfit
    assert any(path.endswith("bn1/scale") for path in both - lora)


def test_an_adapter_of_lora_with_train_norms_loads_as_its_run(peft_runs):
    """Its adapter carries the trained biases, BatchNorm parameters and statistics besides the
    LoRA leaves: applied to the base run's variables it gives the run's variables exactly."""
    root, summaries = peft_runs
    base = checkpoint.load_variables(root / "base", "best")[0]
    run = checkpoint.load_variables(root / "lora_norms", "best")[0]
    record, leaves = peft.read_adapter(summaries["lora_norms"]["adapter"]["path"])
    base_leaves = flat(base)
    scales = [p for p in leaves if p.startswith("params/backbone/") and p.endswith("/scale")]
    assert scales and all(not np.array_equal(leaves[p], base_leaves[p]) for p in scales)  # they trained, and are saved
    rebuilt = flat(peft.apply_adapter(run, base, leaves, "base"))
    for path, value in flat(run).items():
        np.testing.assert_array_equal(rebuilt[path], value, err_msg=path)
    lora = summaries["lora"]
    assert summaries["lora_norms"]["trainable_parameters"]["train"] == (
        lora["trainable_parameters"]["train"] + summaries["bitfit"]["trainable_parameters"]["train"]
        - (summaries["linear"]["trainable_parameters"]["train"]))  # the head is in both
    images = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), np.uint8)
    np.testing.assert_array_equal(runs.load_run(root / "lora_norms").logits(images),
                                  runs.load_run(summaries["lora_norms"]["adapter"]["path"]).logits(images))
    assert record["adapter_parameters"] > summaries["lora"]["adapter"]["adapter_parameters"]


@pytest.mark.parametrize("name,kwargs", [("resnet18", {"width": 8}), ("airbench", {"widths": (8, 16, 16)}),
                                         ("simple_cnn", {})])
def test_lora_merged_into_the_kernels_gives_the_same_logits(name, kwargs):
    lora = LoRA(rank=3, alpha=6.0)
    with_lora = models.create_model(name, 10, lora=lora, **kwargs)
    plain = models.create_model(name, 10, **kwargs)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = with_lora.init(jax.random.key(0), images, train=False)
    leaves = flat(variables["params"])
    assert sum(p.endswith("lora_b/kernel") for p in leaves) > 0
    # B starts at zero: the adapted network starts as the frozen one.
    plain_variables = {**variables, "params": peft.merge_lora(variables["params"], lora.scale)}
    np.testing.assert_array_equal(with_lora.apply(variables, images, train=False),
                                  plain.apply(plain_variables, images, train=False))
    # With trained (random) adapters the merge is exact up to rounding, stride-2 and 1x1 convs included.
    keys = iter(jax.random.split(jax.random.key(2), len(leaves)))
    trained = {p: (0.05 * np.asarray(jax.random.normal(next(keys), v.shape)) if "lora_b" in p else v)
               for p, v in leaves.items()}
    params = peft.traverse_util.unflatten_dict(trained, sep="/")
    variables = {**variables, "params": params}
    adapted = with_lora.apply(variables, images, train=False)
    merged = plain.apply({**variables, "params": peft.merge_lora(params, lora.scale)}, images, train=False)
    assert float(jnp.abs(adapted - plain.apply(plain_variables, images, train=False)).max()) > 1e-3  # adapters act
    np.testing.assert_allclose(merged, adapted, atol=1e-5, rtol=0)


def test_only_the_parameters_of_the_mode_move_and_batch_norm_statistics_follow_it(peft_runs):
    root, _ = peft_runs
    base = checkpoint.load_variables(root / "base", "latest")[0]
    for name in ("linear", "bitfit", "lora", "lora_norms"):
        mode, train_norms = RUNS[name]["mode"], RUNS[name].get("train_norms", False)
        run = checkpoint.load_variables(root / name, "latest")[0]
        before = flat(base["params"])
        for path, value in flat(run["params"]).items():
            if path.startswith("head/") or peft.is_adapter_path(path):
                continue
            assert (not np.array_equal(value, before[path])) == peft.is_trainable(mode, path, train_norms), (name, path)
        stats_moved = not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(base["batch_stats"]),
                                                                    jax.tree_util.tree_leaves(run["batch_stats"])))
        assert stats_moved == (mode != "linear"), mode  # linear runs the frozen backbone's BN in inference mode


def test_trainable_parameter_counts_are_recorded(peft_runs):
    root, summaries = peft_runs
    params = flat(runs.load_run(root / "full").variables["params"])
    head = sum(v.size for p, v in params.items() if p.startswith("head/"))
    biases_and_bn = sum(v.size for p, v in params.items() if p.startswith("backbone/") and p.endswith(("/bias", "/scale")))
    assert summaries["full"]["trainable_parameters"] == {"train": summaries["full"]["parameters"]}
    assert summaries["linear"]["trainable_parameters"] == {"train": head}
    assert summaries["bitfit"]["trainable_parameters"] == {"train": head + biases_and_bn}
    lora = summaries["lora"]
    assert lora["trainable_parameters"]["train"] == head + lora["parameters"] - summaries["full"]["parameters"]


def test_an_adapter_is_small_and_loads_as_its_run(peft_runs, tmp_path):
    root, summaries = peft_runs
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
    assert summaries["full"]["adapter"] is None
    for mode in ("linear", "bitfit", "lora"):
        adapter = summaries[mode]["adapter"]
        assert adapter["adapter_bytes"] < 0.1 * adapter["model_bytes"], (mode, adapter)
        assert (adapter["base"], adapter["base_absolute"]) == ("../../base", str(root / "base"))
        whole, small = runs.load_run(root / mode), runs.load_run(adapter["path"])
        np.testing.assert_array_equal(whole.logits(images), small.logits(images))
    # Evaluate reads an adapter like any workdir, and reproduces the run's own accuracy.
    report, _ = evaluate.evaluate_workdir(root / "lora" / "adapter", split=data(2).eval, out=tmp_path / "eval")
    assert report["accuracy"] == pytest.approx(summaries["lora"]["test_accuracy"], abs=1e-9)


def test_an_adapter_without_its_base_says_which_base_it_needs(peft_runs, tmp_path):
    root, _ = peft_runs
    copy = tmp_path / "adapter"
    shutil.copytree(root / "bitfit" / "adapter", copy)
    record = json.loads((copy / peft.ADAPTER_FILE).read_text())
    gone = str(tmp_path / "gone")
    (copy / peft.ADAPTER_FILE).write_text(json.dumps({**record, "base": gone, "base_absolute": gone}))
    with pytest.raises(FileNotFoundError, match="needs its base run .*gone"):
        runs.load_run(copy)
    with pytest.raises(ValueError, match="holds one checkpoint"):
        runs.load_run(root / "bitfit" / "adapter", "latest")


def test_an_adapter_moved_with_its_base_finds_it_by_its_relative_path(peft_runs, tmp_path):
    root, _ = peft_runs
    moved = tmp_path / "shipped"
    shutil.copytree(root / "base", moved / "base")
    shutil.copytree(root / "bitfit" / "adapter", moved / "bitfit" / "adapter")
    record = json.loads((moved / "bitfit" / "adapter" / peft.ADAPTER_FILE).read_text())
    # The original base is still there: point the absolute fallback elsewhere to see which is read.
    (moved / "bitfit" / "adapter" / peft.ADAPTER_FILE).write_text(
        json.dumps({**record, "base_absolute": str(tmp_path / "gone")}))
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), np.uint8)
    np.testing.assert_array_equal(runs.load_run(moved / "bitfit" / "adapter").logits(images),
                                  runs.load_run(root / "bitfit").logits(images))


def test_peft_fields_are_validated():
    for fields, message in (({"mode": "prefix"}, "peft.mode='prefix'"), ({"rank": 0}, "peft.rank=0"),
                            ({"mode": "bitfit", "train_norms": True}, "peft.train_norms with peft.mode='bitfit'")):
        with pytest.raises(ValueError, match=message):
            config_lib.validate(tiny_config(peft=fields), 1)
