"""The seed tutorial's transfer-learning flow: an (ImageNet-)pretrained ResNet-50 + global
average pool + Dense 10; train the new head with the backbone frozen (Adam 1e-3), then
unfreeze everything and fine-tune at 1e-4; flip/rotation/zoom augmentation.

Weights come from `--init_from` (torchvision/timm .safetensors or .pth, or an earlier
jaxcifar run). Inputs are upsampled to `data.image_size` (ImageNet backbones do much
better on larger images; 224 on an accelerator, smaller on a CPU) and normalised with
ImageNet statistics, as the pretrained weights expect.

    python -m jaxcifar.train --config resnet50_transfer --workdir runs/r50 \
        --data_dir ../shared/tensorflow_datasets --init_from resnet50.safetensors

While the backbone is frozen its BatchNorm layers run in inference mode (running
statistics used, never updated), as Keras does for `trainable=False`.
"""

from jaxcifar.config import recipe


def get_config():
    return recipe(
        model="resnet50",
        data={"image_size": 128},
        batch_size=64,
        eval_batch_size=200,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        schedule="constant",
        warmup_epochs=0.0,
        augment={"crop_padding": 0, "flip": True, "rotation": 0.1, "zoom": 0.1, "normalization": "imagenet"},
        param_groups={"backbone": "backbone/.*", "head": "head/.*"},
        lr_multipliers={"backbone": 1.0, "head": 1.0},
        stages=(
            {"name": "frozen", "epochs": 5, "lr_multipliers": {"backbone": None, "head": 1.0}},
            {"name": "finetune", "epochs": 5, "lr": 1e-4},
        ),
    )
