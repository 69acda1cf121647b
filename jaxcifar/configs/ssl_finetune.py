"""`ssl_finetune`: a classifier on a self-supervised backbone (`--init_from` an ssl_simclr
or ssl_vicreg workdir): first a linear probe (the backbone frozen, its BatchNorm in
inference mode, only the new head trained), then the whole network fine-tuned at a tenth of
the learning rate. The same network as the ssl_* recipes (airbench at half width).

    python -m jaxcifar.train --config ssl_finetune --workdir runs/ft --init_from runs/simclr \\
        --data_dir ../shared/tensorflow_datasets --config.data.examples_per_class=25

Linear probe only: --config.stages.finetune.epochs=0. Full fine-tune only:
--config.stages.frozen.epochs=0. From scratch (the baseline): leave out --init_from and
set --config.stages.frozen.epochs=0.
"""

from jaxcifar.config import recipe
from jaxcifar.configs.ssl_simclr import SSL_WIDTHS


def get_config():
    return recipe(
        model="airbench",
        model_kwargs={"widths": SSL_WIDTHS},
        batch_size=100,
        eval_batch_size=1000,
        optimizer="adamw",
        lr=3e-3,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=0.0,
        augment={"crop_padding": 4, "pad_mode": "reflect", "flip": True},
        param_groups={"whiten_kernel": "backbone/whiten/kernel", "backbone": "backbone/.*", "head": "head/.*"},
        lr_multipliers={"whiten_kernel": None, "backbone": 1.0, "head": 1.0},
        stages=(
            {"name": "frozen", "epochs": 20, "lr_multipliers": {"whiten_kernel": None, "backbone": None, "head": 1.0}},
            {"name": "finetune", "epochs": 20, "lr": 3e-4},
        ),
    )
