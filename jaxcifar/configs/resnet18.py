"""CIFAR ResNet-18 (3x3 stem, no max-pool): the standard strong baseline, ~95% with 200
epochs of this recipe on a GPU. On a 2-core CPU an epoch takes tens of minutes; shorten
with --config.epochs.

    python -m jaxcifar.train --config resnet18 --workdir runs/resnet18 \
        --data_dir ../shared/tensorflow_datasets --config.epochs=30
"""

from jaxcifar.config import recipe


def get_config():
    return recipe(
        model="resnet18",
        epochs=30,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=1.0,
        label_smoothing=0.1,
        augment={"crop_padding": 4, "flip": True},
    )
