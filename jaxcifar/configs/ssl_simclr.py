"""`ssl_simclr`: self-supervised pretraining without labels, SimCLR (Chen et al. 2020).

Two random views of each image (random resized crop 0.2-1, flip, colour jitter 0.4/0.4/0.2/0.1
with p=0.8, grayscale p=0.2; made on the device inside the jitted step), both through the
backbone and a 512-128 projector, NT-Xent loss at temperature 0.2 with the other 2n - 2
views of the global batch as negatives. Labels are never read while training; each epoch a
weighted kNN classifier (k=200, cosine, T=0.1) on backbone features of the train split is
evaluated on `test`, for monitoring only. Selection: none by default, so the run's result is
its final weights (summary.json: test_knn_accuracy), as lightly and solo-learn report theirs;
with --config.data.validation_fraction=0.1 the best kNN epoch on that held-out part is kept
as `best`. Never chosen on `test`.

Backbone: the `fast` recipe's network (airbench) at half width, 32-128-128 channels, 128
features. Why: on this project's 2-core AVX2 CPU a two-view step of 512 images takes 2.6 s
at half width against 6.4 s at full width (253 against 621 s per epoch;
benchmarks/ssl_step_width.py), and an hour of pretraining is the budget. Its 2x2
whitening layer is set from the (unlabelled) training images and frozen, as in `fast`.
Optimiser as lightly's CIFAR-10 benchmark: SGD momentum 0.9, lr 0.06 x batch/256, weight
decay 5e-4, cosine.

    python -m jaxcifar.train --config ssl_simclr --workdir runs/simclr --data_dir ../shared/tensorflow_datasets
    python -m jaxcifar.train --config ssl_finetune --workdir runs/probe --init_from runs/simclr ...

Measured: experiments/ssl_label_efficiency.py -> experiments/results/ssl_label_efficiency.json.
"""

from jaxcifar.config import recipe

SSL_WIDTHS = (32, 128, 128)


def get_config():
    return recipe(
        objective="simclr",
        model="airbench",
        model_kwargs={"widths": SSL_WIDTHS},
        data={"device_resident": True},
        batch_size=512,
        eval_batch_size=1000,
        epochs=30,
        optimizer="sgd",
        lr=0.12,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=1.0,
        ssl={"projector_dims": (512, 128), "temperature": 0.2},
        param_groups={"whiten_kernel": "backbone/whiten/kernel", "rest": ".*"},
        lr_multipliers={"whiten_kernel": None, "rest": 1.0},
        log_every_steps=10,
    )
