"""`ssl_multicrop`: self-supervised pretraining without labels from many small crops per
image (EMP-SSL's loss, jaxcifar/methods/multicrop.py says why this one).

Each step takes 16 crops of every image (area 0.2-0.35 of the image, 16 x 16 pixels at the
image's own resolution, flip, colour jitter and grayscale as in `ssl_simclr`), all through
the backbone and a 512-128 projector in one pass; the loss pulls each crop toward its
image's mean projection (weight 200) and keeps each crop position's projections spread
(total coding rate, eps 0.2). Labels are never read while training; each epoch the weighted
kNN monitor (k=200, cosine, T=0.1) on whole-image backbone features is evaluated on `test`,
for monitoring only. The result is the final weights, as for `ssl_simclr`.

Backbone: the ssl_* network (airbench at half width, 32-128-128 channels). Optimiser: SGD
momentum 0.9 at lr 0.1 with a one-epoch warmup and cosine decay over the run, weight decay
5e-4 (LARS in EMP-SSL; plain SGD keeps the optimiser the other recipes use).

    python -m jaxcifar.train --config ssl_multicrop --workdir runs/multicrop --data_dir ../shared/tensorflow_datasets

Measured: experiments/few_labels.py -> experiments/results/few_labels.json.
"""

from jaxcifar.config import recipe
from jaxcifar.configs.ssl_simclr import SSL_WIDTHS


def get_config():
    return recipe(
        objective="multicrop",
        model="airbench",
        model_kwargs={"widths": SSL_WIDTHS},
        data={"device_resident": True},
        batch_size=128,
        eval_batch_size=1000,
        epochs=5,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=0.2,
        ssl={"projector_dims": (512, 128)},
        method={"crops": 16, "crop_size": 16},
        param_groups={"whiten_kernel": "backbone/whiten/kernel", "rest": ".*"},
        lr_multipliers={"whiten_kernel": None, "rest": 1.0},
        log_every_steps=10,
    )
