"""`ssl_student`: a self-trained student for few labels, from a self-supervised backbone
(`--init_from` an ssl_multicrop, ssl_simclr or ssl_vicreg workdir) and the labels that
`python -m jaxcifar.propagate` spread from the same budget over every unlabelled image.

Each step: 50 labelled images (cross-entropy, crop and flip) and 7 x 50 unlabelled ones
(strong view: crop, flip, RandAugment, Cutout), each trained toward its propagated class
weighted by that label's certainty (jaxcifar/methods/self_training.py). The whole network
trains from the start (the backbone is already good and the propagated labels are many),
AdamW at 1e-3 with cosine decay, weight decay 5e-4; the evaluated and saved weights are an
EMA (decay 0.99: a horizon of about 100 steps, short beside the run's 750, so the random
head it starts from has faded). A fixed schedule, no validation split: a few-label run has
no labels to spare for selection, so its result is its final EMA weights.

    python -m jaxcifar.propagate --workdir runs/multicrop --out runs/propagated25 \\
        --data_dir ../shared/tensorflow_datasets --config.data.examples_per_class=25 --config.data.label_seed=0
    python -m jaxcifar.train --config ssl_student --workdir runs/student25 --init_from runs/multicrop \\
        --data_dir ../shared/tensorflow_datasets --config.data.examples_per_class=25 \\
        --config.data.label_seed=0 --config.method.targets=runs/propagated25/targets.npz

Add the consistency phase with --config.method.consistency_weight=1.0.
"""

from jaxcifar.config import recipe
from jaxcifar.configs.ssl_simclr import SSL_WIDTHS


def get_config():
    return recipe(
        objective="self_training",
        model="airbench",
        model_kwargs={"widths": SSL_WIDTHS},
        batch_size=50,
        eval_batch_size=1000,
        epochs=150,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=5.0,
        ema_decay=0.99,
        augment={"crop_padding": 4, "pad_mode": "reflect", "flip": True},
        method={"unlabeled_ratio": 7},
        param_groups={"whiten_kernel": "backbone/whiten/kernel", "rest": ".*"},
        lr_multipliers={"whiten_kernel": None, "rest": 1.0},
        log_every_steps=25,
    )
