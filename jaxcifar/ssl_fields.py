"""The `ssl` block of a config: the views, projector, losses and kNN monitor of the
self-supervised methods (jaxcifar/ssl.py, methods/two_view.py); classification ignores it.
Declared apart from ssl.py so that a config is read without JAX (schema.py says why)."""

from __future__ import annotations

from jaxcifar import schema

FIELDS = schema.block("ssl", (
    schema.Field("projector_dims", (512, 128), "self-supervised: widths of the projector MLP on the backbone (the "
                                               "last is the output)"),
    schema.Field("temperature", 0.2, "simclr: temperature of the NT-Xent loss"),
    schema.Field("vicreg_weights", (25.0, 25.0, 1.0), "vicreg: weights of the (invariance, variance, covariance) "
                                                      "terms"),
    schema.Field("crop_scale", (0.2, 1.0), "self-supervised views: area fraction range of the random resized crop"),
    schema.Field("color_jitter", (0.4, 0.4, 0.2, 0.1), "self-supervised views: (brightness, contrast, saturation, "
                                                       "hue) jitter strengths"),
    schema.Field("color_jitter_probability", 0.8, "self-supervised views: probability of colour jitter"),
    schema.Field("grayscale_probability", 0.2, "self-supervised views: probability of grayscale"),
    schema.Field("knn_k", 200, "self-supervised eval: neighbours of the weighted kNN monitor (solo-learn/lightly: "
                               "200)"),
    schema.Field("knn_temperature", 0.1, "self-supervised eval: temperature of the kNN's vote weights "
                                         "exp(sim / T)"),
))
