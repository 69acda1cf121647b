"""Run a tiny training job on synthetic data and print its summary and final-parameter
digest as JSON. Used by tests that need a fresh process (device count, distributed,
SIGKILL): `python tests/fit_synthetic.py WORKDIR [--config.FIELD=VALUE ...]`."""

import hashlib
import json
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from tests.conftest import synthetic_split, tiny_config  # noqa: E402
from jaxcifar import checkpoint, config as config_lib, train  # noqa: E402


def params_digest(workdir: str) -> str:
    variables, _ = checkpoint.load_variables(workdir, "latest")
    leaves = jax.tree_util.tree_leaves(variables)
    return hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in leaves)).hexdigest()


def main(argv: list[str]) -> None:
    workdir, overrides = argv[0], [a[len("--config."):].split("=", 1) for a in argv[1:]]
    cfg = tiny_config()
    for key, value in overrides:
        config_lib.override(cfg, key, value)
    data = train.Data(synthetic_split(256, 0), synthetic_split(77, 1), 10)
    summary = train.fit(cfg, workdir, data=data)
    if jax.process_index() == 0:
        history = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
        print("RESULT " + json.dumps({"summary": {k: v for k, v in summary.items() if k != "config"},
                                      "train_loss": [h["train_loss"] for h in history],
                                      "digest": params_digest(workdir)}))


if __name__ == "__main__":
    main(sys.argv[1:])
