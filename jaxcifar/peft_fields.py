"""The `peft` block of a config: which parameters every stage may train (jaxcifar/peft.py),
declared apart from peft.py so that a config is read without JAX (schema.py says why)."""

from __future__ import annotations

from jaxcifar import schema

MODES = ("full", "linear", "bitfit", "lora")

FIELDS = schema.block("peft", (
    schema.Field("mode", "full", "parameters every stage may train: full = all; linear = the head; bitfit = the "
                                 "head, biases and BatchNorm; lora = the head and low-rank adapters on the 3x3/1x1 "
                                 "convs (see jaxcifar/peft.py)", choices=MODES),
    schema.Field("rank", 8, "lora: rank of each conv's adapter", check=schema.positive_int),
    schema.Field("alpha", 8.0, "lora: the adapter's update is scaled by alpha / rank"),
    schema.Field("train_norms", False, "lora: also train what bitfit trains (every bias, every BatchNorm scale and "
                                       "bias); only with mode=lora"),
))
