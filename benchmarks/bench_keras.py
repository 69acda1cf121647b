"""Keras 3 (TensorFlow backend) twins of the benchmark networks, timed with ``train_on_batch``.

Options: ``jit_compile`` (default ``"auto"``, Keras' own default, which on a
CPU-only TensorFlow backend resolves to False, i.e. TensorFlow's own oneDNN/Eigen
kernels; True forces XLA:CPU, the compiler JAX uses).
"""

from __future__ import annotations

import time

from harness import Spec, Target


def simple_cnn(keras):
    """Conv(32/64/128, 3x3, valid) + ReLU + 2x2 max-pool, flatten, Dense 10: the seed model."""
    layers = keras.layers
    stack = [keras.Input((32, 32, 3))]
    for features in (32, 64, 128):
        stack += [layers.Conv2D(features, 3, activation="relu"), layers.MaxPooling2D(2)]
    return keras.Sequential(stack + [layers.Flatten(), layers.Dense(10)])


def resnet18(keras):
    """CIFAR ResNet-18 (3x3 stem, no max-pool, BasicBlocks (2, 2, 2, 2)); BN eps/momentum as torch."""
    layers = keras.layers

    def conv_bn(x, features: int, kernel: int, stride: int):
        x = layers.Conv2D(features, kernel, stride, padding="same" if kernel > 1 else "valid",
                          use_bias=False)(x)
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    inputs = keras.Input((32, 32, 3))
    x = layers.ReLU()(conv_bn(inputs, 64, 3, 1))
    for i in range(4):
        features = 64 * 2**i
        for j in range(2):
            stride = 2 if i and not j else 1
            y = conv_bn(layers.ReLU()(conv_bn(x, features, 3, stride)), features, 3, 1)
            shortcut = conv_bn(x, features, 1, stride) if stride != 1 or x.shape[-1] != features else x
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def airbench(keras):
    """airbench94-style net as jaxcifar's ``airbench`` (see bench_torch.airbench)."""
    layers = keras.layers

    def bn():
        return layers.BatchNormalization(momentum=0.4, epsilon=1e-12, scale=False)

    stack = [keras.Input((32, 32, 3)), layers.Conv2D(24, 2), layers.Activation("gelu")]
    for width in (64, 256, 256):
        stack += [layers.Conv2D(width, 3, padding="same", use_bias=False), layers.MaxPooling2D(2), bn(),
                  layers.Activation("gelu"), layers.Conv2D(width, 3, padding="same", use_bias=False), bn(),
                  layers.Activation("gelu")]
    stack += [layers.GlobalMaxPooling2D(), layers.Dense(10, use_bias=False), layers.Rescaling(1 / 9)]
    return keras.Sequential(stack)


NETS = {"simple_cnn": simple_cnn, "resnet18": resnet18, "airbench": airbench}


def build(spec: Spec) -> Target:
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = NETS[spec.net](keras)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, weight_decay=5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=spec.options.get("jit_compile", "auto"))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((spec.batch, 32, 32, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, (spec.batch,), dtype=np.int32))
    start = time.perf_counter()
    model.train_on_batch(x, y)  # traces and compiles the train function
    compile_s = time.perf_counter() - start

    def run(n: int) -> None:
        for _ in range(n):
            model.train_on_batch(x, y)  # returns the loss as numpy: a sync each step

    return Target(run=run, images_per_step=spec.batch, compile_s=compile_s)
