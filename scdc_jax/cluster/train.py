"""scDeepCluster training: jit-compiled epochs for ZINB pretraining and the DEC clustering stage.

Each epoch is ONE compiled call: the cell order is drawn on the device, minibatches are gathered
inside ``lax.scan`` (the last partial batch is one more step at its own, smaller shape, padded
only to a multiple of the device count and masked out of the loss, so it counts as a full step
over its real cells, as in the reference), and only the epoch's mean losses come back.
Random keys derive from ``fold_in(seed_key, epoch)``, so any epoch can be replayed exactly after
a resume.  Parameters are an ``nnx.State`` (``ae``) plus the cluster centres (``mu``).
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp
from flax import nnx
from jax.scipy.special import gammaln

from ..losses import dec_kl, log_soft_assign, target_distribution, zinb_nll_logits
from ..nn import ZINBAutoencoder


class ClusterData(NamedTuple):
    """Device arrays of one dataset (n cells, g genes, nb batches).

    The raw counts are held once, dense or as padded sparse rows (ELL: for every cell the column
    indices and values of its non-zero counts, padded with zeros to the longest row); the encoder
    input ``(log1p(raw * scale) - mean) / std`` is computed per minibatch, so no second dense
    cells x genes matrix is ever stored.
    """

    counts: jax.Array         # (n, g) dense raw counts, or (n, m) ELL values
    cols: jax.Array | None    # (n, m) ELL column indices, or None for dense counts
    scale: jax.Array          # (n,) median total / cell total (library-size normalisation)
    sf: jax.Array             # (n,) size factors: cell total / median total
    const: jax.Array          # (n,) mean over genes of lgamma(raw + 1), the parameter-free NLL term
    mean: jax.Array           # (g,) gene means of the log-normalised counts
    std: jax.Array            # (g,) gene spreads (divisors)
    b: jax.Array | None       # (n, nb) one-hot batches, or None

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]


def ell_rows(csr) -> tuple[np.ndarray, np.ndarray]:
    """(column indices int32 (n, m), values float32 (n, m)) of a CSR matrix's rows, m = longest row.

    Padding slots hold column 0 and value 0, which add nothing when the rows are scattered back.
    """
    nnz = np.diff(csr.indptr)
    m = max(int(nnz.max()), 1)
    rows = np.repeat(np.arange(csr.shape[0]), nnz)
    pos = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], nnz)
    cols = np.zeros((csr.shape[0], m), np.int32)
    vals = np.zeros((csr.shape[0], m), np.float32)
    cols[rows, pos] = csr.indices
    vals[rows, pos] = csr.data
    return cols, vals


def use_sparse_rows(raw) -> bool:
    """Sparse rows (8 bytes a slot) when the input is sparse and they take less than dense float32."""
    if not sp.issparse(raw) or raw.nnz == 0:
        return False
    return 2 * int(np.diff(raw.indptr).max()) < raw.shape[1]


def device_data(raw, norm: dict, b: np.ndarray | None = None, *, sharding=None,
                sparse: bool | None = None) -> ClusterData:
    """Put prepared counts on the device(s).

    raw : (n, g) counts, dense or CSR (never densified whole: CSR becomes ELL rows).
    norm : ``{"median_total", "mean", "std"}`` of :func:`scdc_jax.preprocess.prepare` (or of the
        training data, to encode new cells as the training cells).
    sparse : force ELL rows (True) or dense counts (False); default :func:`use_sparse_rows`.
    sharding : where to put the arrays; default the default device.
    """
    put = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jnp.asarray
    sparse = use_sparse_rows(raw) if sparse is None else sparse
    totals = np.asarray(raw.sum(1), np.float64).ravel()
    median = float(norm["median_total"])
    if sparse:
        cols, vals = ell_rows(sp.csr_matrix(raw, dtype=np.float32))
        counts, cols = put(vals), put(cols)
    else:
        dense = raw.toarray() if sp.issparse(raw) else raw
        counts, cols = put(np.asarray(dense, np.float32)), None
    const = _lgamma_row_means(counts, len(norm["mean"]))
    return ClusterData(counts, cols, put((median / totals).astype(np.float32)),
                       put((totals / median).astype(np.float32)), const,
                       put(np.asarray(norm["mean"], np.float32)), put(np.asarray(norm["std"], np.float32)),
                       None if b is None else put(np.asarray(b, np.float32)))


@partial(jax.jit, static_argnums=(1, 2))
def _lgamma_row_means(counts, n_genes: int, chunk: int = 16384):
    """``sum_j lgamma(counts + 1) / n_genes`` per row, ``chunk`` rows at a time (no full-size temporary)."""
    n = counts.shape[0]
    if n <= chunk:
        return gammaln(counts + 1.0).sum(1) / n_genes
    steps = math.ceil(n / chunk)
    idx = jnp.minimum(jnp.arange(steps * chunk), n - 1).reshape(steps, chunk)
    sums = jax.lax.map(lambda i: gammaln(counts[i] + 1.0).sum(1), idx)
    return sums.reshape(-1)[:n] / n_genes


def batch_rows(data: ClusterData, idx):
    """(encoder input x, raw counts), each (len(idx), g), of the cells ``idx``."""
    if data.cols is None:
        raw = data.counts[idx]
    else:
        rows = jnp.arange(idx.shape[0])[:, None]
        raw = jnp.zeros((idx.shape[0], data.mean.shape[0]), data.counts.dtype).at[rows, data.cols[idx]].add(
            data.counts[idx])
    x = (jnp.log1p(raw * data.scale[idx][:, None]) - data.mean) / data.std
    return x, raw


def build_model(n_genes: int, n_batches: int, cfg, seed: int):
    """(graphdef, initial autoencoder state) with the configured sizes."""
    key = jax.random.fold_in(jax.random.key(seed), 0)
    model = ZINBAutoencoder(n_genes, n_batches=n_batches, encoder=tuple(cfg.encoder), latent=cfg.latent,
                            decoder=tuple(cfg.decoder), dtype=jnp.bfloat16 if cfg.precision == "bf16" else None,
                            rngs=nnx.Rngs(params=key))
    return nnx.split(model)


def stage_key(seed: int, stage: int, epoch: int) -> jax.Array:
    """Key of one epoch of one stage (1 pretraining, 2 clustering)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stage), epoch)


def _batch_plan(order: jax.Array, n: int, batch_size: int, n_dev: int):
    """Groups of ``(step numbers, (steps, slots) cell indices, validity mask)`` covering ``order``.

    Each step takes the next ``batch_size`` cells of ``order``: the full batches form one group;
    the last partial batch, if any, is its own one-step group with only as many slots as its
    cells (both rounded up to a multiple of the ``n_dev`` devices), so no product runs on
    padding but what the device count needs.  Padding slots point at cell 0 and are masked out.
    """
    full, rest = divmod(n, batch_size)
    groups = []
    for first, steps, size in ((0, full, batch_size), (full, 1 if rest else 0, rest)):
        if not steps:
            continue
        slots = -(-size // n_dev) * n_dev
        idx = order[first * batch_size:first * batch_size + steps * size].reshape(steps, size)
        idx = jnp.pad(idx, ((0, 0), (0, slots - size)))
        valid = jnp.broadcast_to(jnp.arange(slots) < size, (steps, slots))
        groups.append((first + jnp.arange(steps), idx, valid))
    return groups


def _scan_groups(step, carry, groups):
    """``lax.scan`` of ``step`` over each group of :func:`_batch_plan` in turn (one compiled step
    per batch shape); returns the final carry and the steps' outputs, concatenated."""
    outs = []
    for group in groups:
        carry, out = jax.lax.scan(step, carry, group)
        outs.append(out)
    return carry, jnp.concatenate(outs)


def _take(data: ClusterData, idx):
    x, raw = batch_rows(data, idx)
    return x, raw, data.sf[idx], data.const[idx], None if data.b is None else data.b[idx]


def _masked_mean(v, mask):
    m = mask.astype(v.dtype)
    return (v * m).sum() / jnp.maximum(m.sum(), 1.0)


def _noisy_zinb(model, x, raw, sf, b, mask, key, sigma, ridge):
    """ZINB NLL (without the constant) of the denoising path: encode(x + noise) -> decode."""
    z = model.encode(x + sigma * jax.random.normal(key, x.shape, x.dtype), b)
    return zinb_nll_logits(raw, *model.decode_logits(z, b), sf, ridge_lambda=ridge, mask=mask,
                           include_constant=False)


def _constrain(a, sharding):
    return a if sharding is None else jax.lax.with_sharding_constraint(a, sharding)


def _n_dev(batch_sharding) -> int:
    return 1 if batch_sharding is None else batch_sharding.mesh.size


def make_pretrain_epoch(graphdef, tx: optax.GradientTransformation, *, n: int, batch_size: int,
                        sigma: float, ridge_lambda: float = 0.0, batch_sharding=None):
    """``epoch(params, opt_state, data, key) -> (params, opt_state, mean_loss)``, jit-compiled.

    One epoch of ZINB pretraining over a fresh permutation of the ``n`` cells.  ``mean_loss`` is
    the full NLL per matrix element averaged over the cells of the epoch.  ``batch_sharding``
    (optional) spreads each minibatch over a device mesh.
    """

    def loss_fn(params, xb, rb, sb, bb, mask, key):
        return _noisy_zinb(nnx.merge(graphdef, params), xb, rb, sb, bb, mask, key, sigma, ridge_lambda)

    @partial(jax.jit, donate_argnums=(0, 1))
    def epoch(params, opt_state, data: ClusterData, key):
        perm_key, noise_key = jax.random.split(key)
        groups = _batch_plan(jax.random.permutation(perm_key, n), n, batch_size, _n_dev(batch_sharding))

        def step(carry, inp):
            params, opt_state = carry
            i, bidx, mask = inp
            bidx = _constrain(bidx, batch_sharding)
            xb, rb, sb, cb, bb = _take(data, bidx)
            loss, grads = jax.value_and_grad(loss_fn)(params, xb, rb, sb, bb, mask,
                                                      jax.random.fold_in(noise_key, i))
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            n_valid = mask.sum()
            return (params, opt_state), (loss + _masked_mean(cb, mask)) * n_valid

        (params, opt_state), weighted = _scan_groups(step, (params, opt_state), groups)
        return params, opt_state, weighted.sum() / n

    return epoch


def make_cluster_epoch(graphdef, tx: optax.GradientTransformation, *, n: int, batch_size: int,
                       sigma: float, gamma: float, alpha: float = 1.0, ridge_lambda: float = 0.0,
                       batch_sharding=None):
    """``epoch(params, opt_state, data, p, key) -> (params, opt_state, (loss, kl, zinb))``, jitted.

    One pass over the cells in order (not shuffled) minimising ``gamma * KL(p || q) + ZINB``;
    ``q`` comes from the clean encoder pass, ``p`` (n, k) is the fixed target of this epoch.
    ``params`` is ``{"ae": state, "mu": (k, latent) centres}``.
    """

    def loss_fn(params, xb, rb, sb, bb, pb, mask, key):
        model = nnx.merge(graphdef, params["ae"])
        zinb = _noisy_zinb(model, xb, rb, sb, bb, mask, key, sigma, ridge_lambda)
        kl = dec_kl(pb, log_soft_assign(model.encode(xb, bb), params["mu"], alpha), mask)
        return gamma * kl + zinb, (kl, zinb)

    @partial(jax.jit, donate_argnums=(0, 1))
    def epoch(params, opt_state, data: ClusterData, p, key):
        groups = _batch_plan(jnp.arange(n), n, batch_size, _n_dev(batch_sharding))

        def step(carry, inp):
            params, opt_state = carry
            i, bidx, mask = inp
            bidx = _constrain(bidx, batch_sharding)
            xb, rb, sb, cb, bb = _take(data, bidx)
            (loss, (kl, zinb)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, xb, rb, sb, bb, p[bidx], mask, jax.random.fold_in(key, i))
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            const = _masked_mean(cb, mask)
            return (params, opt_state), jnp.stack([loss + const, kl, zinb + const]) * mask.sum()

        (params, opt_state), weighted = _scan_groups(step, (params, opt_state), groups)
        return params, opt_state, weighted.sum(0) / n

    return epoch


def make_encoder(graphdef, chunk: int = 65536):
    """``encode(ae_params, data) -> z0`` (n, latent): the clean encoder pass over all cells of a
    :class:`ClusterData`, ``chunk`` cells at a time."""

    @jax.jit
    def encode(params, data: ClusterData):
        model = nnx.merge(graphdef, params)
        n = data.n_cells

        def block(idx):
            x, _ = batch_rows(data, idx)
            return model.encode(x, None if data.b is None else data.b[idx])

        if n <= chunk:
            return block(jnp.arange(n))
        steps = math.ceil(n / chunk)
        idx = jnp.minimum(jnp.arange(steps * chunk), n - 1).reshape(steps, chunk)
        return jax.lax.map(block, idx).reshape(steps * chunk, -1)[:n]

    return encode


def make_assign(graphdef, alpha: float = 1.0):
    """``assign(params, data) -> (z0, q, p, labels)`` over all cells, jit-compiled."""
    encode = make_encoder(graphdef)

    @jax.jit
    def assign(params, data: ClusterData):
        z0 = encode(params["ae"], data)
        q = jnp.exp(log_soft_assign(z0, params["mu"], alpha))
        return z0, q, target_distribution(q), jnp.argmax(q, axis=1)

    return assign
