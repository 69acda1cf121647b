"""Pure train steps and the one inference path. Everything that changes during training lives in `TrainState`,
a plain pytree, so Orbax saves it as-is and jit can donate it.

Metrics are *sums* (every method's `loss_sum` and `count`, plus its own, e.g. `correct`)
so they can be accumulated on the device across steps and devices without a host sync,
and averaged exactly at log points.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcifar import augment


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # global optimizer step, across stages (an early stop skips its stage's remaining steps)
    params: Any
    batch_stats: Any  # BatchNorm running statistics ({} for models without BN)
    opt_state: Any
    rng: jax.Array  # raw uint32 key data (portable in checkpoints); each step folds in its number
    ema_params: Any = None  # exponential moving average of params (None when disabled)
    slow: Any = None  # lookahead's slow {"params", "batch_stats"} (None when disabled)
    method_state: Any = None  # the method's own state, e.g. a momentum teacher (None for a method that keeps none)


def create_state(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...] = (1, 32, 32, 3),
                 ema: bool = False, lookahead: bool = False) -> TrainState:
    """Fresh parameters; `opt_state` is filled in by the stage that trains them."""
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros(input_shape, jnp.float32), train=False)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                       batch_stats=variables.get("batch_stats", {}), opt_state=None,
                       rng=jax.random.key_data(state_rng), ema_params={} if ema else None, slow={} if lookahead else None)
    return reset_averages(state)


def reset_averages(state: TrainState) -> TrainState:
    """EMA and lookahead copies (where enabled) set to the current weights: after creation,
    and after anything that replaces the weights (data-dependent init, --init_from). Copies,
    so that donating the state never donates one buffer twice."""
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731
    return state.replace(
        ema_params=None if state.ema_params is None else copy(state.params),
        slow=None if state.slow is None else copy({"params": state.params, "batch_stats": state.batch_stats}))


def lookahead(fast: Any, slow: Any, step_in_stage: jax.Array, stage_steps: int, every: int,
              decay: float) -> tuple[Any, Any]:
    """airbench's lookahead, applied after optimizer step `step_in_stage` (1-based): every
    `every` steps the slow weights move towards the fast ones, slow += (1 - d) (fast - slow)
    with d = decay * (step_in_stage / stage_steps)^3, and the fast weights restart from the
    slow ones; after the stage's last step the fast weights become the slow ones. Returns
    (fast, slow). Works on any pytree: airbench averages BatchNorm statistics as well."""
    due = step_in_stage % every == 0
    d = decay * (step_in_stage / stage_steps) ** 3
    new_slow = jax.tree_util.tree_map(lambda s, f: jnp.where(due, s + (1 - d) * (f - s), s), slow, fast)
    reset = due | (step_in_stage >= stage_steps)
    new_fast = jax.tree_util.tree_map(lambda s, f: jnp.where(reset, s, f), new_slow, fast)
    return new_fast, new_slow


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


# A method's loss (jaxcifar/methods): (params, state, batch, step key) -> (mean loss, (new
# batch_stats, new method_state, metric sums)). `state` is the TrainState before the step, for
# its batch_stats, method_state, step and rng (`run_key`); its params equal `params`, but only
# `params` carries the gradient. The sums hold at least `loss_sum` and `count`.
LossFn = Callable[[Any, TrainState, dict, jax.Array], tuple[jax.Array, tuple[Any, Any, dict]]]


def keep_method_state(state: TrainState) -> Any:
    """The default `after_update`: a method's state changes only in its loss, if at all."""
    return state.method_state


def run_key(state: TrainState) -> jax.Array:
    """The run's key, from which every step's randomness is folded."""
    return jax.random.wrap_key_data(state.rng)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    stage_steps: tuple[int, int] | None = None,
                    after_update: Callable[[TrainState], Any] = keep_method_state,
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """train_step(state, batch) -> (state, metric sums): one optimizer step on a method's
    `loss_fn` (the augmentation, the model call and the loss), then the weight averages the
    recipe keeps, then the method's `after_update(new state) -> method_state` (e.g. a
    momentum teacher following the new weights). `stage_steps` = (the stage's first global
    step, its number of steps), which lookahead's schedule needs."""
    if config.lookahead_every and stage_steps is None:
        raise ValueError("lookahead_every > 0 needs stage_steps=(the stage's first step, its number of steps)")
    first_step, num_steps = stage_steps or (0, 0)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(run_key(state), state.step)
        grads, (batch_stats, method_state, metrics) = jax.grad(loss_fn, has_aux=True)(
            state.params, state, batch, step_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_params is not None:
            ema_params = optax.incremental_update(params, ema_params, 1.0 - config.ema_decay)
        slow = state.slow
        if slow is not None:
            fast = {"params": params, "batch_stats": batch_stats}
            fast, slow = lookahead(fast, slow, state.step + 1 - first_step, num_steps, config.lookahead_every,
                                   config.lookahead_decay)
            params, batch_stats = fast["params"], fast["batch_stats"]
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, ema_params=ema_params, slow=slow, method_state=method_state)
        new_state = new_state.replace(method_state=after_update(new_state))
        # The first step whose loss is not finite, so a NaN can be reported exactly.
        metrics = {**metrics, "first_bad_step": jnp.where(jnp.isfinite(metrics["loss_sum"]), NO_BAD_STEP, state.step)}
        return new_state, metrics

    return train_step


# fold_in(key, i) is split(key, n)[i] (jax_threefry_partitionable), and augmentation splits the
# step's key in 3: dropout draws from a stream index that no split of it reaches.
DROPOUT_STREAM = 0x44524F50  # "DROP"


def dropout_key(run_key: jax.Array, step: jax.Array) -> jax.Array:
    """The step's dropout key: like augmentation's, a pure function of (seed, step), so a
    resumed run replays it exactly."""
    return jax.random.fold_in(jax.random.fold_in(run_key, step), DROPOUT_STREAM)


def gather_batch(split: dict, idx: jax.Array) -> dict:
    """The batch of rows `idx` of a device-resident split (uint8 images, int labels)."""
    return {"image": split["image"][idx], "label": split["label"][idx], "index": idx}


def make_epoch_scan(train_step: Callable) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """epoch(state, split, rows) -> (state, metric sums): `train_step` on the batches
    `split[rows[i]]`, one after the other, as one `lax.scan`, so the host dispatches once
    per epoch instead of once per step (what airbench-style runs on accelerators need)."""

    def epoch(state: TrainState, split: dict, rows: jax.Array) -> tuple[TrainState, dict]:
        state, per_step = jax.lax.scan(lambda s, idx: train_step(s, gather_batch(split, idx)), state, rows)
        return state, {k: jnp.min(v) if k == "first_bad_step" else jnp.sum(v) for k, v in per_step.items()}

    return epoch


def eval_variables(state: TrainState) -> dict:
    """The weights a run evaluates: its EMA when it keeps one."""
    return inference_variables({"params": state.params, "batch_stats": state.batch_stats,
                                "ema_params": state.ema_params})


def inference_variables(saved: dict) -> dict:
    """{'params', 'batch_stats'} to run from a (saved) train state's fields: the EMA weights
    when the run kept them (they are what it evaluated), else its params."""
    return {"params": saved.get("ema_params") or saved["params"], "batch_stats": saved.get("batch_stats") or {}}


# Logits of uint8 NHWC images: (variables, images, tta) -> float32 (n, num_classes).
ForwardFn = Callable[[dict, jax.Array, bool], jax.Array]


def make_forward(model: nn.Module, image_size: int, normalization: str, tta_translate: bool = False) -> ForwardFn:
    """The one inference path, used by training's evaluation (`Method.logits`) and by every
    tool that runs a trained model (runs.Run: evaluate, predict, export, serve): resize to
    the run's image size and normalise uint8 pixels as the run was trained
    (`augment.model_input`), then `predict_logits`."""

    def forward(variables: dict, images: jax.Array, tta: bool = False) -> jax.Array:
        return predict_logits(model, variables, augment.model_input(images, image_size, normalization),
                              tta=tta, translate=tta_translate)

    return forward


def pooled_features(module: nn.Module, x: jax.Array) -> jax.Array:
    """Eval-mode backbone features of normalised images (a `method=` for `model.apply`)."""
    return module.backbone(x, use_running_average=True)


def make_features(model: nn.Module, image_size: int, normalization: str) -> Callable[[dict, jax.Array], jax.Array]:
    """(variables, uint8 images) -> backbone features, through the same input path as
    `make_forward`: what the kNN monitor, `evaluate`, `propagate` and `select_labels` embed.
    Any run's model works, a self-supervised network or a classifier (every model has a
    `backbone` submodule, models/__init__.py), so a fine-tuned run can embed images too."""

    def features(variables: dict, images: jax.Array) -> jax.Array:
        return model.apply(variables, augment.model_input(images, image_size, normalization), method=pooled_features)

    return features


def predict_logits(model: nn.Module, variables: dict, images: jax.Array, tta: bool = False,
                   translate: bool = False) -> jax.Array:
    """Eval-mode logits of normalised images. With `tta`, averaged with the mirrored images;
    with `translate` too, airbench's level-2 TTA: half weight on the unshifted pair, a
    quarter each on the pair shifted by one pixel up-left and down-right (reflect padding)."""
    apply = lambda x: model.apply(variables, x, train=False)  # noqa: E731
    with_flip = lambda x: (apply(x) + apply(x[:, :, ::-1])) / 2 if tta else apply(x)  # noqa: E731
    if not (tta and translate):
        return with_flip(images)
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    shifted = [padded[:, i:i + h, i:i + w] for i in (0, 2)]
    return 0.5 * with_flip(images) + 0.25 * sum(with_flip(x) for x in shifted)


def metric_sums(logits: jax.Array, labels: jax.Array, loss: jax.Array) -> dict:
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss), "correct": jnp.sum(correct), "count": jnp.asarray(loss.size, jnp.float32)}


NO_BAD_STEP = jnp.iinfo(jnp.int32).max


def accumulate(total: dict | None, metrics: dict) -> dict:
    """Running metric sums, on the device (no host sync); `first_bad_step` keeps the minimum."""
    if total is None:
        return metrics
    return {k: jnp.minimum(total[k], v) if k == "first_bad_step" else total[k] + v for k, v in metrics.items()}


def sums_to_host(sums: dict) -> dict[str, float]:
    """Metric sums as JSON floats (exact: float32 -> float64), e.g. for a mid-epoch checkpoint."""
    return {k: float(v) for k, v in sums.items() if k != "first_bad_step"}


def sums_from_host(sums: dict[str, float]) -> dict:
    """Inverse of `sums_to_host`: device sums to continue accumulating onto."""
    return {**{k: jnp.float32(v) for k, v in sums.items()}, "first_bad_step": NO_BAD_STEP}


def summarize(sums: dict, averages: Callable[[dict[str, float]], dict[str, float]]) -> dict[str, float]:
    """Host-side metrics of accumulated sums (this is a device sync): a method's `averages`
    of them (its `train_metrics`), and `first_bad_step` if a step's loss was not finite."""
    out = averages(sums_to_host(sums))
    if "first_bad_step" in sums and int(sums["first_bad_step"]) != NO_BAD_STEP:
        out["first_bad_step"] = int(sums["first_bad_step"])
    return out


def loss_and_accuracy(sums: dict[str, float]) -> dict[str, float]:
    """Mean loss and accuracy of host metric sums holding `loss_sum`, `correct` and `count`."""
    return {"loss": sums["loss_sum"] / sums["count"], "accuracy": sums["correct"] / sums["count"]}
