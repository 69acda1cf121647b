"""The seed tutorial's CNN (Conv 32/64/128 + max-pool, Dense 10), trained the jaxcifar way.

Expected: >= 72% on `test` after 10 epochs on a 2-core CPU in about 10 minutes; see
experiments/simple_cnn.sh and experiments/results/simple_cnn.json for the measured figure.

    python -m jaxcifar.train --config simple_cnn --workdir runs/simple_cnn \
        --data_dir ../shared/tensorflow_datasets
"""

from jaxcifar.config import recipe


def get_config():
    return recipe(
        model="simple_cnn",
        epochs=10,
        batch_size=64,
        optimizer="adam",
        lr=2e-3,
        weight_decay=0.0,
        schedule="cosine",
        warmup_epochs=0.5,
        augment={"crop_padding": 2, "flip": True},
    )
