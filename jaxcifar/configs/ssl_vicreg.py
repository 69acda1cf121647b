"""`ssl_vicreg`: self-supervised pretraining without labels, VICReg (Bardes et al. 2022),
the non-contrastive method: no negatives, no momentum encoder. The loss keeps the two
views' projections close (invariance), each dimension's standard deviation at 1 (variance,
which prevents collapse) and the dimensions decorrelated (covariance), with the paper's
weights 25/25/1, on a 1024-1024-1024 expander.

Why VICReg rather than BYOL: it costs what SimCLR costs per step, while BYOL's momentum
encoder adds a third forward pass (about 20% per step) and an EMA copy of the network;
on a 2-core CPU with an hour's budget, that is two fewer epochs.

Everything else (views, backbone, kNN monitor, selection, optimiser) is `ssl_simclr`'s; see there.

    python -m jaxcifar.train --config ssl_vicreg --workdir runs/vicreg --data_dir ../shared/tensorflow_datasets
"""

from jaxcifar.configs.ssl_simclr import get_config as simclr_config


def get_config():
    config = simclr_config()
    config.objective = "vicreg"
    config.ssl.projector_dims = (1024, 1024, 1024)
    return config
