"""Pure loss functions: ZINB likelihood, DEC soft assignment / target / KL, the batch MMD, NT-Xent and SupCon.

Every function takes arrays and returns a scalar or array; nothing here holds state.  Each has a
float64 NumPy transcription of REFERENCE.md's formula in ``tests/test_losses.py``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy

EPS = 1e-10


def masked_mean(per_row: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``per_row`` (n,) over the rows where ``mask`` (n,) holds (all rows when None); 0
    when no row does.  Padding rows of a batch are masked out with it."""
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
    return masked_mean(el.mean(axis=1), mask)


def zinb_mean(logit):
    """The decoder's mean head activation, ``clip(exp(logit), 1e-5, 1e6)``."""
    return jnp.clip(jnp.exp(logit), 1e-5, 1e6)


def zinb_dispersion(logit):
    """The decoder's dispersion head activation, ``clip(softplus(logit), 1e-4, 1e4)``."""
    return jnp.clip(jax.nn.softplus(logit), 1e-4, 1e4)


def _zinb_terms(x, mean_logit, disp_logit, pi_logit, scale_factor, ridge_lambda):
    """Per element: the NLL of :func:`zinb_nll_elements` (without the constant, plus the ridge) of
    the head activations, and its derivatives by the three head logits, in one pass.

    Derivatives, with ``tm = theta' + mu``, ``q = mu / theta'`` and ``w`` the softmax weight of
    ``logit`` in the zero case's ``logaddexp(logit, u)``, ``u = -theta r``:

    * by mu: zero ``(1 - w) theta / tm``; otherwise ``(theta + x) / tm - x / (mu + eps)``;
    * by theta: zero ``(1 - w) (r - theta q / tm)``;
      otherwise ``digamma(theta') - digamma(x + theta') + r - (theta + x) q / tm + x / theta'``;
    * by the dropout logit: ``pi - w`` (zero) or ``pi``, plus ``2 lambda pi^2 (1 - pi)``;

    then through the clipped activations (zero outside the clip range) and ``mu = mean * s``.
    """
    e = jnp.exp(mean_logit)
    mean = jnp.clip(e, 1e-5, 1e6)
    d_mean = jnp.where((e > 1e-5) & (e < 1e6), mean, 0.0)
    # softplus and sigmoid of one logit share exp(-|logit|)
    eb = jnp.exp(-jnp.abs(disp_logit))
    sp = jnp.maximum(disp_logit, 0.0) + jnp.log1p(eb)
    disp = jnp.clip(sp, 1e-4, 1e4)
    d_disp = jnp.where((sp > 1e-4) & (sp < 1e4), jnp.where(disp_logit >= 0, 1.0, eb) / (1.0 + eb), 0.0)
    el_ = jnp.exp(-jnp.abs(pi_logit))
    s = jnp.maximum(pi_logit, 0.0) + jnp.log1p(el_)
    pi = jnp.where(pi_logit >= 0, 1.0, el_) / (1.0 + el_)

    mu = mean * scale_factor[:, None]
    theta = disp + EPS
    tm = theta + mu
    q = mu / theta
    r = jnp.log1p(q)
    q_tm = q / tm
    u = -disp * r
    diff = pi_logit - u
    ed = jnp.exp(-jnp.abs(diff))
    w = jnp.where(diff >= 0, 1.0, ed) / (1.0 + ed)
    zero_case = -(jnp.maximum(pi_logit, u) + jnp.log1p(ed))
    lg_t, dg_t = _lgamma_digamma(theta)
    lg_xt, dg_xt = _lgamma_digamma(x + theta)
    log_mu = jnp.log(mu + EPS)
    nb_case = lg_t - lg_xt + (disp + x) * r + x * (jnp.log(theta) - log_mu)
    zero = x <= 1e-8
    value = s + jnp.where(zero, zero_case, nb_case)
    g_pi = pi - jnp.where(zero, w, 0.0)
    g_mu = jnp.where(zero, (1.0 - w) * disp / tm, (disp + x) / tm - x / (mu + EPS))
    g_disp = jnp.where(zero, (1.0 - w) * (r - disp * q_tm), dg_t - dg_xt + r - (disp + x) * q_tm + x / theta)
    if ridge_lambda:
        value = value + ridge_lambda * pi * pi
        g_pi = g_pi + 2.0 * ridge_lambda * pi * pi * (1.0 - pi)
    return value, g_mu * scale_factor[:, None] * d_mean, g_disp * d_disp, g_pi


@partial(jax.custom_vjp, nondiff_argnums=(6,))
def _zinb_weighted_sum(x, mean_logit, disp_logit, pi_logit, scale_factor, row_weight, ridge_lambda):
    value = _zinb_terms(x, mean_logit, disp_logit, pi_logit, scale_factor, ridge_lambda)[0]
    return jnp.sum(value * row_weight[:, None])


def _zinb_weighted_sum_fwd(x, mean_logit, disp_logit, pi_logit, scale_factor, row_weight, ridge_lambda):
    # Only the value here; the backward pass recomputes the shared terms for the gradient.  Saving
    # the gradient from this pass instead writes three (n, g) arrays that the backward must read
    # and scale by the cotangent: measured 5% slower per CPU epoch.
    value = _zinb_weighted_sum(x, mean_logit, disp_logit, pi_logit, scale_factor, row_weight, ridge_lambda)
    return value, (x, mean_logit, disp_logit, pi_logit, scale_factor, row_weight)


def _zinb_weighted_sum_bwd(ridge_lambda, inputs, ct):
    x, mean_logit, disp_logit, pi_logit, scale_factor, row_weight = inputs
    _, g_mean, g_disp, g_pi = _zinb_terms(x, mean_logit, disp_logit, pi_logit, scale_factor, ridge_lambda)
    w = ct * row_weight[:, None]
    return None, w * g_mean, w * g_disp, w * g_pi, None, None


_zinb_weighted_sum.defvjp(_zinb_weighted_sum_fwd, _zinb_weighted_sum_bwd)


def zinb_nll_logits(x, mean_logit, disp_logit, pi_logit, scale_factor, *, ridge_lambda: float = 0.0, mask=None,
                    include_constant: bool = True):
    """:func:`zinb_nll` of the decoder heads' logits, ``mean = zinb_mean(mean_logit)`` and
    ``disp = zinb_dispersion(disp_logit)``, with a hand-written gradient.

    Same value as the composition (the same formula, float32 rounding apart); its gradient by
    the three logits is one elementwise pass (see :func:`_zinb_terms`) instead of autodiff's chain
    of saved intermediates: on CPUs that pass is most of the ZINB work of a training step.  Gradients flow to the logits only (not to ``x``,
    ``scale_factor`` or ``mask``).  Shapes as in :func:`zinb_nll_elements`; returns a scalar.
    """
    n, g = x.shape
    if mask is None:
        row_weight = jnp.full((n,), 1.0 / (n * g), x.dtype)
    else:
        m = mask.astype(x.dtype)
        row_weight = m / (jnp.maximum(m.sum(), 1.0) * g)
    loss = _zinb_weighted_sum(x, mean_logit, disp_logit, pi_logit, scale_factor, row_weight, float(ridge_lambda))
    if include_constant:
        loss = loss + jnp.sum(gammaln(x + 1.0) * row_weight[:, None])
    return loss


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
    return masked_mean(per_row, mask)


MMD_SCALES = (0.25, 1.0, 4.0)


def batch_mmd(z, onehot, mask=None, *, groups=None, scales=MMD_SCALES):
    """How far each batch's cells lie from all cells in ``z``: the squared maximum mean
    discrepancy between each batch present and the whole minibatch, weighted by the batch's share
    of the minibatch's cells; with ``groups``, within each group (cluster) instead.

    z : (n, d) embeddings; onehot : (n, nb) batch labels; mask : optional (n,) valid rows;
    groups : optional (n, k) non-negative group weights (hard or soft cluster assignments): then
    the discrepancy is between a batch's cells of group j and all cells of group j, each weighed
    by the (group, batch) pair's share, so that batches holding the cell types in other
    proportions are not pulled together across types.  The kernel is a sum of Gaussians
    ``exp(-|a - b|^2 / (s * m))`` over ``scales`` s, with ``m`` the minibatch's mean squared
    distance between cells (held constant in the gradient), so the penalty does not depend on
    the latent space's scale.  0 when every batch present is distributed as the minibatch (or
    one batch only is present); never negative up to rounding.
    """
    valid = jnp.ones(z.shape[0], z.dtype) if mask is None else mask.astype(z.dtype)
    g = valid[:, None] if groups is None else groups.astype(z.dtype) * valid[:, None]   # (n, k)
    w = g[:, :, None] * onehot.astype(z.dtype)[:, None, :]                              # (n, k, nb)
    mass_gb, mass_g = w.sum(0), g.sum(0)                                                # (k, nb), (k,)
    wb = w / jnp.maximum(mass_gb, 1e-12)                 # each (group, batch) column sums to 1 (or 0)
    wg = g / jnp.maximum(mass_g, 1e-12)                  # each group's column sums to 1 (or 0)
    sq = jnp.sum(z * z, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)                  # (n, n)
    pooled = valid / jnp.maximum(valid.sum(), 1.0)
    m = jax.lax.stop_gradient(jnp.maximum(pooled @ d2 @ pooled, 1e-12))
    kern = sum(jnp.exp(-d2 / (s * m)) for s in scales)
    kb = jnp.einsum("ij,jkb->ikb", kern, wb)
    kg = kern @ wg                                                                      # (n, k)
    per_pair = (jnp.einsum("ikb,ikb->kb", wb, kb) - 2.0 * jnp.einsum("ik,ikb->kb", wg, kb)
                + jnp.einsum("ik,ik->k", wg, kg)[:, None])
    share = mass_gb / jnp.maximum(mass_gb.sum(), 1e-12)
    return jnp.sum(share * per_pair)


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
        return masked_mean(jnp.where(valid, per_row, 0.0), valid)

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
    return masked_mean(jnp.where(valid, per_anchor, 0.0), valid)
