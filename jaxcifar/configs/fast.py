"""`fast`: an airbench94-style recipe written for JAX (Keller Jordan's CIFAR-10 speed record).

The whole uint8 train split stays on the device and batches are gathered there; random
translate (reflect-pad 2) and an alternating flip run inside the jitted step; a frozen
2x2 patch-whitening first layer set from the data (its bias trains for the first 3 epochs);
convs start as PyTorch-default + identity (models/airbench.py); BatchNorm without scale,
eps 1e-12, running statistics 0.6 * running + 0.4 * batch; label smoothing 0.2; Nesterov
SGD with BatchNorm biases at 64x the learning rate; triangular schedule 0.2 -> 1 (at 23%)
-> 0.07; lookahead every 5 steps; flip + translate test-time augmentation. Selection: none,
as in airbench: the result is the final (lookahead) weights; `test` is only monitored.

Hyperparameters are airbench94's, converted from its summed loss to jaxcifar's mean loss:
lr = 11.5 / (1024 * (1 + 1/(1-0.85))) * 1024 = 1.5; coupled weight decay = 0.0153 * 1024 /
7850.7 / 1.5 = 1.33e-3, on every trainable parameter, at 1/64 for the 64x-lr BatchNorm
biases so every parameter decays at the same speed (airbench's `wd / lr_biases`).
Difference from airbench94: 10 whole epochs of 48 steps (airbench stops at 9.9 epochs,
476 steps), so the warmup is 110 steps instead of 109.

    python -m jaxcifar.train --config fast --workdir runs/fast --data_dir ../shared/tensorflow_datasets

Measured time-to-accuracy: experiments/fast_cpu.py -> experiments/results/fast_cpu.json.
"""

from jaxcifar.config import recipe


def get_config():
    return recipe(
        model="airbench",
        data={"device_resident": True},
        batch_size=1024,
        eval_batch_size=1000,
        epochs=10,
        optimizer="sgd",
        lr=1.5,
        momentum=0.85,
        nesterov=True,
        weight_decay=1.33e-3,
        weight_decay_on="all",
        schedule="linear",
        warmup_epochs=2.3,
        lr_start_factor=0.2,
        lr_end_factor=0.07,
        label_smoothing=0.2,
        augment={"crop_padding": 2, "pad_mode": "reflect", "flip": True, "alternating_flip": True},
        param_groups={"whiten_kernel": "backbone/whiten/kernel", "whiten_bias": "backbone/whiten/bias",
                      "bn_bias": ".*/bn[12]/bias", "rest": ".*"},
        lr_multipliers={"whiten_kernel": None, "whiten_bias": 1.0, "bn_bias": 64.0, "rest": 1.0},
        group_epochs={"whiten_bias": 3},
        weight_decay_multipliers={"bn_bias": 1 / 64},
        lookahead_every=5,
        tta=True,
        tta_translate=True,
        log_every_steps=10,
    )
