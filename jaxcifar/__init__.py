"""jaxcifar: pure-JAX functional training of CIFAR-10 classifiers.

Import surface (each a module, imported on first use so `import jaxcifar` stays light
and TensorFlow, optional, is only loaded by what needs it: jaxcifar.tf_extra):

    jaxcifar.config      recipes, overrides, stages          jaxcifar.data     TFDS -> a run's splits (Data)
    jaxcifar.batch_order which rows make each batch          jaxcifar.cli      the tools' command lines
    jaxcifar.augment     on-device augmentation              jaxcifar.models   Flax models, weight import
    jaxcifar.optim       parameter groups, multi_transform   jaxcifar.steps    pure train steps
    jaxcifar.checkpoint  Orbax checkpoints                   jaxcifar.train    the loop: fit()
    jaxcifar.parallel    mesh, shardings, multi-process      jaxcifar.pretrained  --init_from
    jaxcifar.runs        open a trained workdir              jaxcifar.evaluate  report + plots
    jaxcifar.predict     classify image files                jaxcifar.export    StableHLO / SavedModel
    jaxcifar.methods     classification, SimCLR, VICReg      jaxcifar.ssl      SSL losses, kNN, probe
    jaxcifar.peft        linear/bitfit/lora modes, adapters  jaxcifar.quantize  int8 (Qwix, LiteRT)
    jaxcifar.prune       magnitude and channel pruning       jaxcifar.precision  mixed precision
    jaxcifar.litert      LiteRT conversion, runtime          jaxcifar.testing  tiny runs, crashes, exact resume
    jaxcifar.xla_cpu     XLA:CPU flags set on import (Eigen convolutions)
    jaxcifar.tf_extra    TensorFlow, imported in one place   (the optional `tf` extra)
    jaxcifar.evaluators  what measures a run: classification, kNN, linear probe (one file each)
"""

import importlib

from jaxcifar import xla_cpu

# A side effect of importing the package, kept on purpose: the flag (Eigen instead of YNNPACK
# convolutions, 1.3-1.9x faster train steps on the CPUs measured) must be in XLA_FLAGS before
# JAX starts its CPU backend, and no JAX API can set it afterwards. It never overrides a flag
# the user set; JAXCIFAR_XLA_CPU_DEFAULTS=0 turns it off (xla_cpu.py).
xla_cpu.configure()

__version__ = "0.1.0"
_SUBMODULES = ("augment", "batch_order", "checkpoint", "cli", "config", "data", "evaluate", "export", "litert", "methods", "models",
               "optim", "parallel", "peft", "precision", "predict", "pretrained", "prune", "quantize", "runs", "ssl",
               "steps", "testing", "tf_extra", "train", "workdir", "xla_cpu")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxcifar.{name}")
    raise AttributeError(f"module 'jaxcifar' has no attribute {name!r}")


__all__ = list(_SUBMODULES)
