"""Run a tiny training job on synthetic data and print its summary and final-parameter
digest as JSON. Used by tests that need a fresh process (device count, distributed,
SIGKILL/SIGTERM):

    python tests/fit_synthetic.py WORKDIR [--config.FIELD=VALUE ...] [--distributed.X=...]

JAXCIFAR_TEST_CRASH_AFTER_SAVES=N makes the process die (os._exit) right after its N-th
checkpoint is on disk, to test resuming, e.g. on another device count.
JAXCIFAR_TEST_NUDGE_SEED=K moves every initial weight by one ulp, up or down at random
(seed K): a rounding-sized difference, to measure how much the trajectory amplifies one
(experiments/rounding_drift.py).
"""

import contextlib
import hashlib
import json
import os
import sys

from jaxcifar import checkpoint, config as config_lib, parallel, stop_signals, testing, train


def params_digest(workdir: str) -> str:
    import jax
    import numpy as np

    variables, _ = checkpoint.load_variables(workdir, "latest")
    leaves = jax.tree_util.tree_leaves(variables)
    return hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in leaves)).hexdigest()


def nudge_initial_weights(seed: int) -> None:
    import jax
    import numpy as np

    original = train.Trainer.initial_state
    rng = np.random.default_rng(seed)

    def nudged(p):
        return p * (1 + np.float32(2**-23) * rng.choice([-1, 1], p.shape).astype(np.float32))

    def initial_state(self):
        state = original(self)
        return state.replace(params=jax.tree_util.tree_map(nudged, state.params))

    train.Trainer.initial_state = initial_state


def main(argv: list[str]) -> None:
    workdir, rest = argv[0], argv[1:]
    distributed = dict(a[len("--distributed."):].split("=", 1) for a in rest if a.startswith("--distributed."))
    if distributed:
        parallel.initialize_distributed(distributed["coordinator"], int(distributed["num_processes"]),
                                        int(distributed["process_id"]))
    parallel.configure_compilation_cache()  # as the CLI does: the suite's shared cache (tests/conftest.py)
    if "JAXCIFAR_TEST_NUDGE_SEED" in os.environ:
        nudge_initial_weights(int(os.environ["JAXCIFAR_TEST_NUDGE_SEED"]))
    cfg = testing.tiny_config()
    for item in rest:
        if item.startswith("--config."):
            config_lib.override(cfg, *item[len("--config."):].split("=", 1))
    crash_after = os.environ.get("JAXCIFAR_TEST_CRASH_AFTER_SAVES")
    dies = testing.after_checkpoint(int(crash_after), lambda: os._exit(17)) if crash_after else contextlib.nullcontext()
    try:
        with dies:
            summary = train.fit(cfg, workdir, data=testing.tiny_data())
    except stop_signals.StopRequested as e:  # exit as the CLI does: 128 + the signal
        print(e, file=sys.stderr, flush=True)
        sys.exit(e.exit_status)
    import jax

    digest = params_digest(workdir)  # an Orbax restore is collective: every process takes part
    if jax.process_index() == 0:
        print("RESULT " + json.dumps({"summary": {k: v for k, v in summary.items() if k != "config"},
                                      "train_loss": [h["train_loss"] for h in testing.read_history(workdir)],
                                      "digest": digest}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
