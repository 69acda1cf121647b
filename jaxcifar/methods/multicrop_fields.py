"""The settings of the many-crop method (methods/multicrop.py), in a run's `config.method`:
declared apart from the method so that a config is read without JAX (schema.py says why)."""

from __future__ import annotations

from jaxcifar import schema

SETTINGS = (
    schema.Field("crops", 16, "crops of each image per step (EMP-SSL: 20)", check=lambda v: (
        "" if isinstance(v, int) and v >= 2 else "must be a whole number of at least 2: the loss compares crops")),
    schema.Field("crop_size", 16, "side of each crop in pixels, taken at the image's own resolution when the crop "
                                  "area matches (16 of 32: a quarter of the area)", check=schema.positive_int),
    schema.Field("crop_scale", (0.2, 0.35), "area fraction range of each crop's window (EMP-SSL: 0.25)",
                 check=schema.fraction_range),
    schema.Field("invariance_weight", 200.0, "weight of the pull of each crop toward its image's mean (EMP-SSL: "
                                             "200)", check=schema.positive),
    schema.Field("coding_rate_eps", 0.2, "distortion eps of the total coding rate (EMP-SSL: 0.2)",
                 check=schema.positive),
)
