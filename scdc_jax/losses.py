"""Pure loss functions: ZINB likelihood, DEC soft assignment / target / KL, NT-Xent and SupCon.

Every function takes arrays and returns a scalar or array; nothing here holds state.  Each has a
float64 NumPy transcription of REFERENCE.md's formula in ``tests/test_losses.py``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy

EPS = 1e-10


def _masked_mean_rows(per_row: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return per_row.mean()
    mask = mask.astype(per_row.dtype)
    return (per_row * mask).sum() / jnp.maximum(mask.sum(), 1.0)


_STIRLING_SHIFT = 6  # recurrence steps lifting small arguments into the range where Stirling's series is exact in f32
_HALF_LOG_2PI = 0.9189385332046727


def _lgamma_digamma(z):
    """``(lgamma(z), digamma(z))`` for ``z > 0``, sharing one Stirling evaluation.

    Arguments below 6 are shifted by the recurrence ``Gamma(z + 6) = Gamma(z) z (z+1) ... (z+5)``;
    the series then errs by less than 1e-8.  Cheaper than the general (reflection-handling)
    ``gammaln``/``digamma``, which dominate the ZINB loss on CPUs; accurate to float32 rounding
    (tested against SciPy in float64).
    """
    small = z < _STIRLING_SHIFT
    p = jnp.ones_like(z)
    dp = jnp.zeros_like(z)
    for i in range(_STIRLING_SHIFT):
        f = jnp.where(small, z + i, 1.0)
        dp = dp * f + jnp.where(small, p, 0.0)
        p = p * f
    w = jnp.where(small, z + _STIRLING_SHIFT, z)
    inv = 1.0 / w
    inv2 = inv * inv
    log_w = jnp.log(w)
    lg = (w - 0.5) * log_w - w + _HALF_LOG_2PI + inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 / 1260)) - jnp.log(p)
    dg = log_w - 0.5 * inv - inv2 * (1.0 / 12 - inv2 * (1.0 / 120 - inv2 / 252)) - dp / p
    return lg, dg


@jax.custom_jvp
def lgamma_pos(z):
    """``lgamma(z)`` for positive ``z`` (see :func:`_lgamma_digamma`); its derivative is digamma."""
    return _lgamma_digamma(z)[0]


@lgamma_pos.defjvp
def _lgamma_pos_jvp(primals, tangents):
    lg, dg = _lgamma_digamma(primals[0])
    return lg, dg * tangents[0]


def zinb_nll_elements(x, mean, disp, pi_logit, scale_factor, *, include_constant: bool = True):
    """Elementwise ZINB negative log-likelihood.

    Parameters
    ----------
    x : (n, g) raw counts.
    mean : (n, g) decoder mean (before the size factor).
    disp : (n, g) dispersion theta > 0.
    pi_logit : (n, g) logit of the dropout probability pi.
    scale_factor : (n,) size factors; the NB mean is ``mu = mean * s``.
    include_constant : add ``lgamma(x + 1)``, which does not depend on the parameters.

    Returns
    -------
    (n, g) array: the reference's formula in a stable form.  With ``theta' = theta + eps``,
    ``r = log1p(mu / theta')`` (so ``log(theta' + mu) = log theta' + r``) and
    ``s = softplus(logit) = -log(1 - pi)`` (so ``log pi = logit - s``):

    * zero count: ``s - logaddexp(logit, -theta r)``
      (= ``-log(pi + (1 - pi) (theta' / (theta' + mu))^theta)``);
    * otherwise: ``lgamma(theta') - lgamma(x + theta') + (theta + x) r + x (log theta' - log(mu + eps)) + s``.
    """
    mu = mean * scale_factor[:, None]
    theta = disp + EPS
    r = jnp.log1p(mu / theta)
    s = jax.nn.softplus(pi_logit)
    zero_case = -jnp.logaddexp(pi_logit, -disp * r)
    nb_case = (lgamma_pos(theta) - lgamma_pos(x + theta) + (disp + x) * r
               + x * (jnp.log(theta) - jnp.log(mu + EPS)))
    if include_constant:
        nb_case = nb_case + gammaln(x + 1.0)
    return s + jnp.where(x <= 1e-8, zero_case, nb_case)


def zinb_nll(x, mean, disp, pi_logit, scale_factor, *, ridge_lambda: float = 0.0, mask=None,
             include_constant: bool = True):
    """Mean ZINB NLL over the valid cells x all genes of a batch.

    ``mask`` is an optional (n,) boolean array of valid (non-padding) rows; the mean runs over
    the valid rows only, so a padded batch gives the value of the unpadded one.  ``ridge_lambda``
    adds ``lambda * pi^2`` per element.  Shapes as in :func:`zinb_nll_elements`; returns a scalar.
    """
    el = zinb_nll_elements(x, mean, disp, pi_logit, scale_factor, include_constant=include_constant)
    if ridge_lambda:
        el = el + ridge_lambda * jax.nn.sigmoid(pi_logit) ** 2
    return _masked_mean_rows(el.mean(axis=1), mask)


def log_soft_assign(z, centers, alpha: float = 1.0):
    """Log of the Student's t soft assignment q: (n, d) x (k, d) -> (n, k)."""
    d2 = jnp.sum((z[:, None, :] - centers[None, :, :]) ** 2, axis=-1)
    logits = -(alpha + 1.0) / 2.0 * jnp.log1p(d2 / alpha)
    return jax.nn.log_softmax(logits, axis=1)


def soft_assign(z, centers, alpha: float = 1.0):
    """Student's t soft assignment ``q_ij ~ (1 + |z_i - mu_j|^2/alpha)^(-(alpha+1)/2)``, rows sum to 1.

    z : (n, d) embeddings; centers : (k, d); returns (n, k).
    """
    return jnp.exp(log_soft_assign(z, centers, alpha))


def target_distribution(q, mask=None):
    """DEC target ``p_ij = (q_ij^2 / f_j) / sum_k (q_ik^2 / f_k)``, ``f_j = sum_i q_ij`` over valid rows.

    q : (n, k); mask : optional (n,) valid rows (padding excluded from f).  Returns (n, k).
    """
    f = q.sum(0) if mask is None else (q * mask[:, None].astype(q.dtype)).sum(0)
    w = q ** 2 / f
    return w / w.sum(1, keepdims=True)


def dec_kl(p, log_q, mask=None):
    """KL(P || Q) summed over clusters, averaged over the valid rows; p = 0 contributes 0.

    p : (n, k) target (treated as a constant); log_q : (n, k) log soft assignments.
    """
    p = jax.lax.stop_gradient(p)
    per_row = jnp.sum(xlogy(p, p) - p * log_q, axis=1)
    return _masked_mean_rows(per_row, mask)


def _l2_normalise(z):
    """``z / max(||z||, 1e-12)`` row-wise, with a finite gradient at a zero row (which a norm
    would make NaN): a dropout view can zero every input of a cell."""
    sq = jnp.sum(z * z, axis=1, keepdims=True)
    return z * jax.lax.rsqrt(jnp.maximum(sq, 1e-24))


def ntxent(z1, z2, *, temperature: float = 0.07, mask=None):
    """NT-Xent (SimCLR) of two views, summed over both directions as in GsRCL.

    For anchor i of view a, the logits are its similarities to every cell of view b and every
    other cell of view a; the positive is cell i of view b.  Padding rows (``mask`` False) are
    neither anchors nor negatives.  z1, z2 : (n, d) projections (normalised here); returns a
    scalar equal to ``mean_i l(1->2) + mean_i l(2->1)``.
    """
    z1, z2 = _l2_normalise(z1), _l2_normalise(z2)
    n = z1.shape[0]
    valid = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
    eye = jnp.eye(n, dtype=bool)
    neg_inf = jnp.asarray(-jnp.inf, z1.dtype)

    def direction(a, b):
        s_ab = a @ b.T / temperature
        s_aa = a @ a.T / temperature
        s_ab = jnp.where(valid[None, :], s_ab, neg_inf)
        s_aa = jnp.where(valid[None, :] & ~eye, s_aa, neg_inf)
        lse = jax.nn.logsumexp(jnp.concatenate([s_ab, s_aa], axis=1), axis=1)
        per_row = lse - jnp.diagonal(s_ab)
        return _masked_mean_rows(jnp.where(valid, per_row, 0.0), valid)

    return direction(z1, z2) + direction(z2, z1)


def supcon(z1, z2, labels, *, temperature: float = 0.07, mask=None):
    """Supervised contrastive loss (Khosla et al.) over the 2n samples of two views.

    Positives of an anchor are all other samples with the same label (its other view included);
    the denominator runs over all other valid samples.  z1, z2 : (n, d); labels : (n,) ints;
    returns the mean over valid anchors of ``-mean_{p in P(a)} log softmax_a(p)``.
    """
    z = _l2_normalise(jnp.concatenate([z1, z2], axis=0))
    n2 = z.shape[0]
    valid = jnp.ones((n2 // 2,), bool) if mask is None else mask.astype(bool)
    valid = jnp.concatenate([valid, valid])
    lab = jnp.concatenate([labels, labels])
    not_self = ~jnp.eye(n2, dtype=bool)
    sim = z @ z.T / temperature
    sim = jnp.where(valid[None, :] & not_self, sim, -jnp.inf)
    log_prob = sim - jax.nn.logsumexp(sim, axis=1, keepdims=True)
    pos = (lab[:, None] == lab[None, :]) & not_self & valid[None, :]
    n_pos = jnp.maximum(pos.sum(1), 1)
    per_anchor = -jnp.where(pos, log_prob, 0.0).sum(1) / n_pos
    return _masked_mean_rows(jnp.where(valid, per_anchor, 0.0), valid)
