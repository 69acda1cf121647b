"""The `augment` block of a config: the on-device augmentation and normalisation of
jaxcifar/augment.py, declared apart from it so that a config is read without JAX
(schema.py says why)."""

from __future__ import annotations

from jaxcifar import schema

NORMALIZATIONS = ("cifar10", "imagenet", "unit")

FIELDS = schema.block("augment", (
    schema.Field("crop_padding", 4, "random crop from an image padded by this many pixels; 0 = off"),
    schema.Field("pad_mode", "constant", "padding of the random crop", choices=("constant", "reflect")),
    schema.Field("flip", True, "random horizontal flips"),
    schema.Field("alternating_flip", False, "airbench: each image flipped in every other epoch, not at random"),
    schema.Field("rotation", 0.0, "max rotation as a fraction of a full turn (Keras RandomRotation)"),
    schema.Field("zoom", 0.0, "max zoom in/out as a fraction (Keras RandomZoom)"),
    schema.Field("normalization", "cifar10", "input normalisation: CIFAR-10 mean/std, ImageNet mean/std "
                                             "(pretrained backbones), or x/255", choices=NORMALIZATIONS),
))
