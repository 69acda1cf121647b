"""The settings of the self-trained student (methods/self_training.py), in a run's
`config.method`: declared apart from the method so that a config is read without JAX
(schema.py says why)."""

from __future__ import annotations

from jaxcifar import schema

SETTINGS = (
    # Checked when the method is built, not in the recipe: a recipe cannot know the file.
    schema.Field("targets", "", "targets.npz written by `python -m jaxcifar.propagate` for this run's label budget"),
    schema.Field("unlabeled_ratio", 7, "unlabelled images per labelled image in each step (FixMatch: 7)",
                 check=schema.positive_int),
    schema.Field("unlabeled_weight", 1.0, "weight of the propagated labels' loss", check=schema.positive),
    schema.Field("consistency_weight", 0.0, "weight of the FixMatch-style consistency loss; 0 = off",
                 check=schema.in_range(0)),
    schema.Field("alignment_momentum", 0.999, "consistency: momentum of the running mean of the predictions that "
                                              "distribution alignment divides by", check=schema.fraction),
)
