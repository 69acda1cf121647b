"""The math of self-supervised learning, as pure functions: the SimCLR and VICReg losses,
the weighted kNN classifier that monitors a backbone, and the linear probe that measures it.

The training loop never sees these directly: the methods of jaxcifar/methods (simclr.py,
vicreg.py) turn them into methods the loop runs like supervised classification.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def view_matching(z1: jax.Array, z2: jax.Array) -> jax.Array:
    """1.0 where an image's first view is most similar (cosine) to its own second view among
    all second views of the batch: the "accuracy" an SSL run reports while it trains."""
    sim = _l2_normalize(z1) @ _l2_normalize(z2).T
    return (jnp.argmax(sim, axis=-1) == jnp.arange(z1.shape[0])).astype(jnp.float32)


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's NT-Xent loss of each of the 2n views (Chen et al. 2020): cross-entropy of
    picking the other view of the same image among the 2n - 1 others, by cosine similarity
    over `temperature`. Under jit on a mesh the batch is the global one, so every device's
    views are negatives for every other device's (SimCLR's cross-replica negatives)."""
    n = z1.shape[0]
    z = _l2_normalize(jnp.concatenate([z1, z2]).astype(jnp.float32))
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # a view is not its own positive
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, positives)


def vicreg(z1: jax.Array, z2: jax.Array, invariance: float = 25.0, variance: float = 25.0,
           covariance: float = 1.0) -> jax.Array:
    """VICReg's loss (Bardes et al. 2022), a scalar over the batch: mean squared distance of
    the two views, plus a hinge keeping each dimension's standard deviation at 1 (no
    collapse), plus the squared off-diagonal covariances (no redundant dimensions). The
    weights are the paper's."""
    z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
    n, d = z1.shape

    def spread(z):
        z = z - z.mean(axis=0)
        std = jnp.sqrt(z.var(axis=0) + 1e-4)
        cov = z.T @ z / (n - 1)
        off_diagonal = cov - jnp.diag(jnp.diag(cov))
        return jnp.mean(jax.nn.relu(1.0 - std)), jnp.sum(off_diagonal**2) / d

    (var1, cov1), (var2, cov2) = spread(z1), spread(z2)
    return (invariance * jnp.mean((z1 - z2) ** 2) + variance * (var1 + var2) / 2
            + covariance * (cov1 + cov2))


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _knn_chunk(bank: jax.Array, bank_labels: jax.Array, queries: jax.Array, num_classes: int, k: int,
               temperature: float) -> jax.Array:
    similarity = _l2_normalize(queries) @ bank.T
    top_similarity, top_index = jax.lax.top_k(similarity, k)
    votes = jax.nn.one_hot(bank_labels[top_index], num_classes) * jnp.exp(top_similarity / temperature)[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=-1)


def knn_predict(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1000) -> np.ndarray:
    """Weighted kNN classes of `queries` (Wu et al. 2018, as solo-learn and lightly monitor
    SSL runs): the k most cosine-similar features of the labelled `bank` each vote for
    their class with weight exp(similarity / temperature). Queries go in chunks so the
    similarity matrix stays small however large the bank."""
    k = min(k, len(bank))
    bank = _l2_normalize(jnp.asarray(bank, jnp.float32))
    labels = jnp.asarray(bank_labels)
    return np.concatenate([np.asarray(_knn_chunk(bank, labels, jnp.asarray(queries[i:i + chunk], jnp.float32),
                                                 num_classes, k, temperature))
                           for i in range(0, len(queries), chunk)])


def knn_accuracy(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, labels: np.ndarray,
                 num_classes: int, ssl_config) -> float:
    """The kNN monitor's accuracy with a run's `config.ssl` (k, temperature): one definition
    for the monitor during training and for `evaluate` afterwards, so the two agree."""
    predicted = knn_predict(bank, bank_labels, queries, num_classes, ssl_config.knn_k, ssl_config.knn_temperature)
    return float(np.mean(predicted == labels))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_linear(features: jax.Array, labels: jax.Array, num_classes: int, steps: int, lr: float,
                weight_decay: float) -> dict:
    tx = optax.adamw(lr, weight_decay=weight_decay)
    params = {"w": jnp.zeros((features.shape[1], num_classes)), "b": jnp.zeros(num_classes)}

    def loss(p):
        logits = features @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(_, carry):
        p, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    return jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))[0]


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 num_classes: int, steps: int = 500, lr: float = 0.01, weight_decay: float = 1e-3) -> np.ndarray:
    """Classes of `test_features` from a softmax regression fitted on frozen, standardised
    `train_features` (full batch AdamW from zero weights: deterministic and without
    hyperparameters to search, the usual linear-evaluation protocol minus augmentation).
    The training loop's frozen stage (`--init_from`) is the probe with augmentation."""
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    params = _fit_linear(jnp.asarray((train_features - mean) / std), jnp.asarray(train_labels), num_classes,
                         steps, lr, weight_decay)
    logits = jnp.asarray((test_features - mean) / std) @ params["w"] + params["b"]
    return np.asarray(jnp.argmax(logits, axis=-1))
