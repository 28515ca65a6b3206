"""Our optimisers against NumPy transcriptions of torch.optim's update rules."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from scdc_jax.optim import adadelta_torch, adam_coupled_l2, amsgrad_torch


def run(tx, p0, grads):
    p = jnp.asarray(p0)
    s = tx.init(p)
    for g in grads:
        u, s = tx.update(jnp.asarray(g), s, p)
        p = optax.apply_updates(p, u)
    return np.asarray(p)


def grads_seq(seed=0, n=6, shape=(5,)):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) * (10.0 if i == 1 else 1.0) for i in range(n)]


def test_amsgrad_matches_torch_semantics():
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    p0 = np.linspace(-1, 1, 5)
    gs = grads_seq()
    p, m, v, vmax = p0.copy(), 0 * p0, 0 * p0, 0 * p0
    for t, g in enumerate(gs, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax) / np.sqrt(1 - b2 ** t) + eps
        p = p - lr / (1 - b1 ** t) * m / denom
    np.testing.assert_allclose(run(amsgrad_torch(lr), p0, gs), p, rtol=1e-5, atol=1e-7)
    # optax's own amsgrad differs (max of the bias-corrected moment): make sure we did not use it
    assert not np.allclose(run(optax.amsgrad(lr), p0, gs), p, rtol=1e-7, atol=1e-9)


def test_adadelta_matches_torch():
    lr, rho, eps = 1.0, 0.95, 1e-6
    p0 = np.linspace(-1, 1, 5)
    gs = grads_seq(1)
    p, sq, acc = p0.copy(), 0 * p0, 0 * p0
    for g in gs:
        sq = rho * sq + (1 - rho) * g * g
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        acc = rho * acc + (1 - rho) * delta * delta
        p = p - lr * delta
    np.testing.assert_allclose(run(adadelta_torch(lr, rho, eps), p0, gs), p, rtol=1e-5, atol=1e-7)


def test_adam_coupled_weight_decay():
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-8
    p0 = np.linspace(-1, 1, 5)
    gs = grads_seq(2)
    p, m, v = p0.copy(), 0 * p0, 0 * p0
    for t, g in enumerate(gs, 1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(run(adam_coupled_l2(lr, wd), p0, gs), p, rtol=1e-5, atol=1e-7)
