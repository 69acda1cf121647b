"""jaxcifar's own train step (``stages.build_stage``), jitted and sharded as train.py does.

Options (``Spec.options``):
* ``augment`` (default True): the recipe's on-device pad-4 crop + flip. False keeps
  only the uint8 -> float normalisation, so the step is like-for-like with the
  PyTorch/Keras twins, which are fed ready float32 batches.
* ``dtype``: ``"float32"`` (default) or ``"bfloat16"`` compute (params stay float32).
* ``matmul_precision``: a ``jax.default_matmul_precision`` value, or None.
* ``pool``: a pooling.POOLS name to swap into SimpleCNN (study only; default: the package's).
* ``conv``: a conv_variants.CONVS name to give every ``nn.Conv`` (study only).

The batch is placed on the mesh once and reused: input-pipeline cost is measured
separately (bench_pipeline.py). The optimizer is SGD with momentum 0.9, weight decay
5e-4 and a constant learning rate, as in the twins.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from harness import Spec, Target

STEPS_PER_EPOCH = 100  # only feeds the (constant) schedule and the epoch counter of augmentation


def sgd_config(spec: Spec):
    """A run config for ``spec``: the package defaults with plain SGD-momentum and the batch."""
    from jaxcifar import config as config_lib

    augment = spec.options.get("augment", True)
    return config_lib.recipe(
        model=spec.net, batch_size=spec.batch, optimizer="sgd", lr=0.01, momentum=0.9,
        nesterov=False, weight_decay=5e-4, schedule="constant", warmup_epochs=0.0,
        augment={"crop_padding": 4 if augment else 0, "flip": augment})


def compile_step(spec: Spec) -> tuple[Callable, Any, dict, float]:
    """(compiled step, replicated state, sharded batch, compile seconds) for ``spec``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxcifar import models, parallel, stages, steps
    from jaxcifar.methods.classification import Classification

    if "pool" in spec.options:
        import pooling

        pooling.install(spec.options["pool"])
    if "conv" in spec.options:
        import conv_variants

        conv_variants.install(spec.options["conv"])
    config = sgd_config(spec)
    dtype = jnp.dtype(spec.options.get("dtype", "float32"))
    precision = spec.options.get("matmul_precision")
    model = models.create_model(spec.net, dtype=dtype)
    mesh = parallel.make_mesh()
    state = steps.create_state(model, jax.random.PRNGKey(0))
    # The training loop's own stage builder, so the benchmark times the step train.py runs.
    stage = stages.plan_stages(config)[0]
    built = stages.build_stage(Classification(config, 10, model), config, stage, state.params,
                              STEPS_PER_EPOCH)
    state = state.replace(opt_state=built.tx.init(state.params))
    state = jax.device_put(state, parallel.replicated(mesh))
    rng = np.random.default_rng(0)
    batch = parallel.to_global({
        "image": rng.integers(0, 256, (spec.batch, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, (spec.batch,), dtype=np.int32),
        "index": np.arange(spec.batch, dtype=np.int32)}, mesh)

    scope = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
    start = time.perf_counter()
    with scope:
        compiled = jax.jit(built.train_step, donate_argnums=0).lower(state, batch).compile()
    return compiled, state, batch, time.perf_counter() - start


def build(spec: Spec) -> Target:
    """Compile the train step for ``spec`` on a mesh over all (virtual) devices."""
    import jax

    compiled, state, batch, compile_s = compile_step(spec)
    holder = {"state": state}

    def run(n: int) -> None:
        current = holder["state"]
        for _ in range(n):
            current, metrics = compiled(current, batch)
        jax.block_until_ready((current, metrics))
        holder["state"] = current

    return Target(run=run, images_per_step=spec.batch, compile_s=compile_s)
