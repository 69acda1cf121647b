"""`fast_muon`: the airbench94_muon recipe (Keller Jordan's CIFAR-10 speed record, 94.01% in
8 epochs) written for jaxcifar: the `fast` network and data path, trained by Muon.

What differs from `fast`:
- Muon (jaxcifar.optim.muon, built on optax.contrib.scale_by_muon) updates the conv
  filters: Nesterov momentum 0.6, 3 Newton-Schulz iterations, each kernel renormalised to
  norm sqrt(out channels) before its step, learning rate 0.24, no weight decay.
- Nesterov SGD (momentum 0.85) updates the rest: BatchNorm biases, the whitening bias (for
  the first 3 epochs) and the head.
- Batch 2,000, 8 epochs (25 steps each), learning rate decaying linearly from its peak to 0
  with no warmup, no lookahead.

Hyperparameters are airbench94_muon's, converted where jaxcifar's conventions differ:
- Its SGD rates are for a loss summed over the batch; jaxcifar's loss is the batch mean, so
  they are multiplied by the batch size (bias lr 0.053 -> 106). Muon's step does not depend
  on the gradient's scale, so its rate is unchanged.
- Its coupled weight decay is `wd / lr` per group with wd = 2e-6 * 2000, i.e. every SGD
  parameter shrinks by lr_factor * 0.004 per step; the same product is kept here.
- Its head is a bias-free Dense with weights rescaled to unit standard deviation and
  logits divided by 256. jaxcifar's head keeps PyTorch's default init, U(+/-1/16) (standard
  deviation k = 1/(16 sqrt 3)), so the same function starts with `scale` = 1/(256 k) =
  sqrt(3)/16, and the same SGD trajectory needs the head's rate times k^2 (a weight k times
  smaller sees a gradient k times smaller and must move k times less).

One difference left in: airbench94_muon decays the whitening bias's rate to 0 over its own 3
epochs; here it follows the run's 8-epoch decay and stops after epoch 3 (`group_epochs`).

    python -m jaxcifar.train --config fast_muon --workdir runs/fast_muon --data_dir ../shared/tensorflow_datasets

Measured time-to-accuracy: experiments/fast_cpu.py --recipe fast_muon -> experiments/results/fast_muon_cpu.json.
"""

import math

from jaxcifar.config import recipe

BATCH_SIZE = 2000
MUON_LR = 0.24
BIAS_LR = 0.053 * BATCH_SIZE  # summed-loss rate -> mean-loss rate
HEAD_INIT_STD = 1 / (16 * math.sqrt(3))  # PyTorch's default for a 256-input Dense: U(+/-1/16)
HEAD_LR = 0.67 * BATCH_SIZE * HEAD_INIT_STD**2
DECAY_PER_STEP = 2e-6 * BATCH_SIZE  # lr * weight_decay of every SGD group


def get_config():
    return recipe(
        model="airbench",
        model_kwargs={"scale": 1 / (256 * HEAD_INIT_STD)},
        data={"device_resident": True},
        batch_size=BATCH_SIZE,
        eval_batch_size=1000,
        epochs=8,
        optimizer="sgd",
        lr=BIAS_LR,
        momentum=0.85,
        nesterov=True,
        weight_decay=DECAY_PER_STEP / BIAS_LR,
        weight_decay_on="all",
        schedule="linear",
        warmup_epochs=0.0,
        lr_start_factor=1.0,
        lr_end_factor=0.0,
        label_smoothing=0.2,
        augment={"crop_padding": 2, "pad_mode": "reflect", "flip": True, "alternating_flip": True},
        param_groups={"whiten_kernel": "backbone/whiten/kernel", "whiten_bias": "backbone/whiten/bias",
                      "bn_bias": ".*/bn[12]/bias", "head": "head/kernel", "filters": ".*"},
        lr_multipliers={"whiten_kernel": None, "whiten_bias": 1.0, "bn_bias": 1.0, "head": HEAD_LR / BIAS_LR,
                        "filters": MUON_LR / BIAS_LR},
        group_optimizers={"filters": "muon"},
        muon_momentum=0.6,
        muon_ns_steps=3,
        group_epochs={"whiten_bias": 3},
        weight_decay_multipliers={"head": BIAS_LR / HEAD_LR, "filters": 0.0},
        tta=True,
        tta_translate=True,
        log_every_steps=5,
    )
