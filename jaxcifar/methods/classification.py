"""Supervised classification: cross-entropy on augmented labelled images; evaluated by
accuracy (with the recipe's test-time augmentation) and loss; the best checkpoint is the
one with the best eval accuracy."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from jaxcifar import augment, models
from jaxcifar import steps as steps_lib
from jaxcifar.methods.base import Method, StageContext, model_kwargs


class Classification(Method):

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, model: nn.Module | None = None):
        """`model`: one built elsewhere (a benchmark's dtype variant); default: the config's."""
        super().__init__(config, num_classes)
        self.model = model or models.create_model(config.model, num_classes, **model_kwargs(config))

    def loss(self, stage: StageContext) -> steps_lib.LossFn:
        """With `stage.frozen_backbone` the backbone's BatchNorm runs in inference mode (its
        statistics neither used from the batch nor updated), as Keras does for `trainable=False`."""
        model, config = self.model, self.config

        def loss_fn(params, state, batch, key):
            run_key = steps_lib.run_key(state)
            images = augment.augment(key, augment.resize(batch["image"], config.data.image_size), config.augment,
                                     run_key=run_key, index=batch.get("index"),
                                     epoch=state.step // stage.steps_per_epoch)
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                          freeze_backbone=stage.frozen_backbone, mutable=["batch_stats"],
                                          rngs={"dropout": steps_lib.dropout_key(run_key, state.step)})
            loss = steps_lib.cross_entropy(logits, batch["label"], config.label_smoothing)
            sums = steps_lib.metric_sums(logits, batch["label"], loss)
            return loss.mean(), (updates.get("batch_stats", {}), state.method_state, sums)

        return loss_fn

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return steps_lib.loss_and_accuracy(sums)
