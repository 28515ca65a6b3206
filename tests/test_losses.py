"""Each loss against a direct float64 NumPy transcription of REFERENCE.md's formula."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import gammaln as np_gammaln

from scdc_jax import losses

EPS = 1e-10


def ref_zinb(x, mean, disp, pi, sf, ridge=0.0):
    mu = mean * sf[:, None]
    t1 = np_gammaln(disp + EPS) + np_gammaln(x + 1.0) - np_gammaln(x + disp + EPS)
    t2 = (disp + x) * np.log(1.0 + mu / (disp + EPS)) + x * (np.log(disp + EPS) - np.log(mu + EPS))
    nb_case = t1 + t2 - np.log(1.0 - pi + EPS)
    zero_nb = (disp / (disp + mu + EPS)) ** disp
    zero_case = -np.log(pi + (1.0 - pi) * zero_nb + EPS)
    res = np.where(x <= 1e-8, zero_case, nb_case) + ridge * pi ** 2
    return res.mean()


def zinb_inputs(seed=0, n=64, g=40):
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(1.0, 3.0, size=(n, g))).astype(np.float64)
    x[rng.random((n, g)) < 0.3] = 0
    mean = rng.gamma(2.0, 2.0, size=(n, g))
    disp = rng.gamma(2.0, 2.0, size=(n, g)) + 0.05
    logit = rng.normal(0.0, 2.0, size=(n, g))
    sf = rng.lognormal(0.0, 0.4, size=n)
    return x, mean, disp, logit, sf


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_zinb_matches_reference_formula(seed, ridge):
    x, mean, disp, logit, sf = zinb_inputs(seed)
    pi = 1.0 / (1.0 + np.exp(-logit))
    expected = ref_zinb(x, mean, disp, pi, sf, ridge)
    got = losses.zinb_nll(*(jnp.asarray(a, jnp.float32) for a in (x, mean, disp, logit, sf)), ridge_lambda=ridge)
    np.testing.assert_allclose(float(got), expected, rtol=2e-5)


def test_zinb_gradient_matches_float64():
    x, mean, disp, logit, sf = zinb_inputs(2, n=16, g=12)

    def f(m, d, l, dtype):
        return losses.zinb_nll(jnp.asarray(x, dtype), m, d, l, jnp.asarray(sf, dtype))

    with jax.enable_x64(True):
        g64 = jax.grad(lambda *a: f(*a, jnp.float64), argnums=(0, 1, 2))(
            *(jnp.asarray(a, jnp.float64) for a in (mean, disp, logit)))
        g64 = [np.asarray(g) for g in g64]
    g32 = jax.grad(lambda *a: f(*a, jnp.float32), argnums=(0, 1, 2))(
        *(jnp.asarray(a, jnp.float32) for a in (mean, disp, logit)))
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-3, atol=1e-6)


def test_zinb_stable_where_naive_float32_fails():
    # pi close to 1 and huge logits: the naive float32 formula gives inf/NaN, ours stays finite
    x = jnp.array([[0.0, 3.0]])
    out = losses.zinb_nll(x, jnp.array([[1e5, 2.0]]), jnp.array([[1e-4, 1e4]]), jnp.array([[60.0, -60.0]]),
                          jnp.array([1.0]))
    assert np.isfinite(float(out))
    g = jax.grad(lambda l: losses.zinb_nll(x, jnp.array([[1e5, 2.0]]), jnp.array([[1e-4, 1e4]]), l,
                                           jnp.array([1.0])))(jnp.array([[60.0, -60.0]]))
    assert np.all(np.isfinite(np.asarray(g)))


def test_zinb_mask_equals_unpadded_batch():
    x, mean, disp, logit, sf = (jnp.asarray(a, jnp.float32) for a in zinb_inputs(3, n=20))
    full = losses.zinb_nll(x[:13], mean[:13], disp[:13], logit[:13], sf[:13])
    mask = jnp.arange(20) < 13
    masked = losses.zinb_nll(x, mean, disp, logit, sf, mask=mask)
    np.testing.assert_allclose(float(masked), float(full), rtol=1e-6)


def test_zinb_without_constant_differs_by_lgamma_term():
    x, mean, disp, logit, sf = (jnp.asarray(a, jnp.float32) for a in zinb_inputs(4))
    a = losses.zinb_nll(x, mean, disp, logit, sf)
    b = losses.zinb_nll(x, mean, disp, logit, sf, include_constant=False)
    np.testing.assert_allclose(float(a - b), float(np_gammaln(np.asarray(x, np.float64) + 1).mean()), rtol=1e-5)


def zinb_logit_inputs(seed=0, n=48, g=30):
    """Counts and head logits; some logits fall outside the clip ranges of the mean and dispersion."""
    x, _, _, logit, sf = zinb_inputs(seed, n, g)
    rng = np.random.default_rng(seed + 10)
    mean_logit = rng.normal(0.5, 2.0, size=(n, g))
    disp_logit = rng.normal(0.5, 2.0, size=(n, g))
    mean_logit[0, :3] = [15.0, -12.0, 14.0]    # mean clipped at 1e6 and at 1e-5
    disp_logit[1, :3] = [-10.0, 1.2e4, -9.5]   # dispersion clipped at 1e-4 and at 1e4
    return x, mean_logit, disp_logit, logit, sf


@pytest.mark.parametrize("ridge", [0.0, 0.1])
@pytest.mark.parametrize("constant", [True, False])
def test_zinb_logits_value_matches_reference_formula(ridge, constant):
    x, a, b, logit, sf = zinb_logit_inputs(1)
    mean, disp = np.clip(np.exp(a), 1e-5, 1e6), np.clip(np.logaddexp(0.0, b), 1e-4, 1e4)
    expected = ref_zinb(x, mean, disp, 1.0 / (1.0 + np.exp(-logit)), sf, ridge)
    if not constant:
        expected -= np_gammaln(x + 1.0).mean()
    got = losses.zinb_nll_logits(*(jnp.asarray(v, jnp.float32) for v in (x, a, b, logit, sf)), ridge_lambda=ridge,
                                 include_constant=constant)
    np.testing.assert_allclose(float(got), expected, rtol=2e-5)


@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_zinb_logits_gradient_matches_autodiff_of_the_composition_in_float64(ridge):
    inputs = zinb_logit_inputs(2)
    mask = np.arange(inputs[0].shape[0]) < 37

    def composed(a, b, logit, x, sf):
        return losses.zinb_nll(x, losses.zinb_mean(a), losses.zinb_dispersion(b), logit, sf, ridge_lambda=ridge,
                               mask=jnp.asarray(mask))

    def fused(a, b, logit, x, sf):
        return losses.zinb_nll_logits(x, a, b, logit, sf, ridge_lambda=ridge, mask=jnp.asarray(mask))

    def order(v):  # value_and_grad by the three logits, which come first
        x, a, b, logit, sf = v
        return a, b, logit, x, sf

    with jax.enable_x64(True):
        v64, g64 = jax.value_and_grad(composed, argnums=(0, 1, 2))(*order([jnp.asarray(v) for v in inputs]))
        g64 = [np.asarray(g) for g in g64]
    v32, g32 = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(
        *order([jnp.asarray(v, jnp.float32) for v in inputs]))
    np.testing.assert_allclose(float(v32), float(v64), rtol=2e-5)
    for got, want in zip(g32, g64):
        got = np.asarray(got)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3 * np.abs(want).max())
        assert np.all(got[37:] == 0)  # padding rows get no gradient
    assert np.all(np.asarray(g32[0])[0, :2] == 0) and np.all(np.asarray(g32[1])[1, :2] == 0)  # clipped heads
    x, a, b, logit, sf = (jnp.asarray(v, jnp.float32) for v in inputs)
    scaled = jax.grad(lambda a: 3.0 * fused(a, b, logit, x, sf))(a)  # the cotangent scales the gradient
    np.testing.assert_allclose(np.asarray(scaled), 3.0 * np.asarray(g32[0]), rtol=1e-5)


def ref_soft_assign(z, mu, alpha=1.0):
    d2 = ((z[:, None, :] - mu[None]) ** 2).sum(-1)
    q = (1.0 + d2 / alpha) ** (-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdims=True)


def ref_target(q):
    w = q ** 2 / q.sum(0)
    return w / w.sum(1, keepdims=True)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_soft_assign_and_target(alpha):
    rng = np.random.default_rng(0)
    z, mu = rng.normal(size=(50, 8)), rng.normal(size=(5, 8)) * 2
    q = ref_soft_assign(z, mu, alpha)
    got = losses.soft_assign(jnp.asarray(z, jnp.float32), jnp.asarray(mu, jnp.float32), alpha)
    np.testing.assert_allclose(np.asarray(got), q, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.target_distribution(jnp.asarray(q, jnp.float32))),
                               ref_target(q), rtol=1e-5, atol=1e-7)


def test_target_distribution_mask_ignores_padding():
    rng = np.random.default_rng(1)
    q = rng.dirichlet(np.ones(4), size=30)
    padded = np.concatenate([q, rng.dirichlet(np.ones(4), size=6)])
    mask = np.arange(36) < 30
    got = losses.target_distribution(jnp.asarray(padded, jnp.float32), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got)[:30], ref_target(q), rtol=1e-5, atol=1e-7)


def test_dec_kl_matches_formula_and_handles_zero_p():
    rng = np.random.default_rng(2)
    z, mu = rng.normal(size=(40, 6)), rng.normal(size=(4, 6))
    q = ref_soft_assign(z, mu)
    p = ref_target(q)
    p[0] = [1.0, 0.0, 0.0, 0.0]
    expected = np.mean(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0), axis=1))
    log_q = losses.log_soft_assign(jnp.asarray(z, jnp.float32), jnp.asarray(mu, jnp.float32))
    got = losses.dec_kl(jnp.asarray(p, jnp.float32), log_q)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    grad = jax.grad(lambda m: losses.dec_kl(jnp.asarray(p, jnp.float32), losses.log_soft_assign(
        jnp.asarray(z, jnp.float32), m)))(jnp.asarray(mu, jnp.float32))
    assert np.all(np.isfinite(np.asarray(grad)))


def l2n(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def ref_ntxent(z1, z2, t=0.07):
    z1, z2 = l2n(z1), l2n(z2)
    n = len(z1)
    total = 0.0
    for a, b in ((z1, z2), (z2, z1)):
        losses_ = []
        for i in range(n):
            logits = [a[i] @ b[j] / t for j in range(n)] + [a[i] @ a[j] / t for j in range(n) if j != i]
            logits = np.array(logits)
            m = logits.max()
            losses_.append(m + np.log(np.exp(logits - m).sum()) - logits[i])
        total += np.mean(losses_)
    return total


def ref_supcon(z1, z2, y, t=0.07):
    z = l2n(np.concatenate([z1, z2]))
    lab = np.concatenate([y, y])
    n2 = len(z)
    out = []
    for a in range(n2):
        others = [k for k in range(n2) if k != a]
        s = np.array([z[a] @ z[k] / t for k in others])
        lse = s.max() + np.log(np.exp(s - s.max()).sum())
        pos = [i for i, k in enumerate(others) if lab[k] == lab[a]]
        out.append(-np.mean(s[pos] - lse))
    return np.mean(out)


def test_ntxent_matches_reference_and_masks_padding():
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    expected = ref_ntxent(z1, z2)
    got = losses.ntxent(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)
    pad = rng.normal(size=(4, 5)) * 10
    p1 = np.concatenate([z1, pad])
    p2 = np.concatenate([z2, pad[::-1]])
    mask = np.arange(16) < 12
    got_pad = losses.ntxent(jnp.asarray(p1, jnp.float32), jnp.asarray(p2, jnp.float32), mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(got_pad), expected, rtol=1e-4)


def test_supcon_matches_reference_and_masks_padding():
    rng = np.random.default_rng(4)
    z1, z2 = rng.normal(size=(10, 5)), rng.normal(size=(10, 5))
    y = rng.integers(0, 2, size=10)
    expected = ref_supcon(z1, z2, y)
    got = losses.supcon(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), jnp.asarray(y))
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)
    p1 = np.concatenate([z1, rng.normal(size=(3, 5))])
    p2 = np.concatenate([z2, rng.normal(size=(3, 5))])
    py = np.concatenate([y, [0, 1, 1]])
    got_pad = losses.supcon(jnp.asarray(p1, jnp.float32), jnp.asarray(p2, jnp.float32), jnp.asarray(py),
                            mask=jnp.arange(13) < 10)
    np.testing.assert_allclose(float(got_pad), expected, rtol=1e-4)


def test_contrastive_gradients_stay_finite_for_a_zero_projection():
    import jax

    from scdc_jax.losses import ntxent, supcon

    z1 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32).at[1].set(0.0)
    z2 = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)
    for f in (lambda a, b: ntxent(a, b), lambda a, b: supcon(a, b, jnp.array([0, 1, 0, 1]))):
        value, grads = jax.value_and_grad(f, argnums=(0, 1))(z1, z2)
        assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_positive_lgamma_and_its_derivative_match_scipy():
    from scipy.special import digamma as np_digamma

    z = np.concatenate([np.geomspace(1e-4, 1e7, 400), np.arange(1, 40) + 1e-4, [0.5, 1.0, 2.0, 5.999, 6.0, 6.001]])
    zj = jnp.asarray(z, jnp.float32)
    z32 = np.asarray(zj, np.float64)  # the float32 arguments, to compare like with like
    lg = np.asarray(losses.lgamma_pos(zj), np.float64)
    dg = np.asarray(jax.vmap(jax.grad(losses.lgamma_pos))(zj), np.float64)
    ref_lg, ref_dg = np_gammaln(z32), np_digamma(z32)
    # float32 rounding of values of size |v| (and of the log-terms summed into them) bounds the error
    np.testing.assert_allclose(lg, ref_lg, rtol=2e-6, atol=4e-6)
    np.testing.assert_allclose(dg, ref_dg, rtol=2e-6, atol=4e-6)
    xla = np.asarray(jax.scipy.special.gammaln(zj), np.float64)
    assert np.max(np.abs(lg - ref_lg)) <= 2 * np.max(np.abs(xla - ref_lg)) + 1e-6  # no worse than XLA's gammaln
