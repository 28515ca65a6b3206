"""Optimisers with the exact semantics of the PyTorch references, where optax differs.

The constructors return the same transformation for the same hyperparameters (they are
memoised; a transformation holds no state), so that a compiled training step built around one is
found again by a later run in the same process (see ``cluster.train.make_epoch``)."""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class AmsgradTorchState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def scale_by_amsgrad_torch(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """AMSGrad as ``torch.optim.Adam(amsgrad=True)``: the running maximum is of the RAW second
    moment and the bias correction is applied after it (optax.amsgrad maximises the corrected
    moment instead).  Update: ``m_hat / (sqrt(max(v)) / sqrt(1 - b2^t) + eps)``."""

    def init(params):
        def zeros():
            return jax.tree.map(jnp.zeros_like, params)

        return AmsgradTorchState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros())

    def update(grads, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        c1 = 1 - b1 ** t
        c2 = jnp.sqrt(1 - b2 ** t)
        upd = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v) / c2 + eps), mu, nu_max)
        return upd, AmsgradTorchState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


@lru_cache(maxsize=16)
def amsgrad_torch(learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam with AMSGrad in PyTorch's semantics (scDeepCluster pretraining)."""
    return optax.chain(scale_by_amsgrad_torch(b1, b2, eps), optax.scale(-learning_rate))


@lru_cache(maxsize=16)
def adadelta_torch(learning_rate: float = 1.0, rho: float = 0.95, eps: float = 1e-6):
    """``torch.optim.Adadelta``; optax's adadelta has the same update (checked in the tests)."""
    return optax.adadelta(learning_rate=learning_rate, rho=rho, eps=eps)


@lru_cache(maxsize=16)
def adam_coupled_l2(learning_rate: float = 1e-4, weight_decay: float = 1e-6):
    """``torch.optim.Adam(weight_decay=wd)``: the decay is added to the gradient before Adam."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))
