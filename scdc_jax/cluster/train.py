"""scDeepCluster training: jit-compiled epochs for ZINB pretraining and the DEC clustering stage.

Both stages run through one scaffold, :func:`make_epoch`, with their losses :func:`pretrain_loss`
and :func:`cluster_loss`.  Each epoch is ONE compiled call: the cell order is drawn on the device,
minibatches are gathered inside ``lax.scan`` (the last partial batch is one more step at its own,
smaller shape, padded only to a multiple of the device count and masked out of the loss, so it
counts as a full step over its real cells, as in the reference), and only the epoch's mean
measurements come back.  Random keys derive from ``fold_in(seed_key, epoch)`` and, per step,
``fold_in(epoch_key, step)``, so any epoch can be replayed exactly after a resume.  Parameters
are an ``nnx.State`` (``ae``) plus, in the clustering stage, the cluster centres (``mu``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial, wraps
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp
from flax import nnx
from jax.scipy.special import gammaln

from ..losses import batch_mmd as mmd_between_batches
from ..losses import dec_kl, log_soft_assign, masked_mean, target_distribution, zinb_nll_logits
from ..nn import ZINBAutoencoder, init_split
from ..parallel import padded_size
from ..preprocess import Prepared


# ---- data on the device ---------------------------------------------------------------------------

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


def ell_rows(csr, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(column indices int32 (n, m), values float32 (n, m)) of a CSR matrix's rows, m = ``width``
    or the longest row (the blocks of a streamed file share the whole file's width, so one
    compiled epoch serves them all).

    Padding slots hold column 0 and value 0, which add nothing when the rows are scattered back.
    """
    nnz = np.diff(csr.indptr)
    m = max(int(nnz.max()), 1) if width is None else int(width)
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


def device_data(prep: Prepared, *, sharding=None, sparse: bool | None = None,
                width: int | None = None, put_rows=None, put_genes=None) -> ClusterData:
    """Put prepared cells on the device(s).

    prep : :func:`scdc_jax.preprocess.prepare` of the training cells, or
        :func:`scdc_jax.preprocess.prepare_query` of new cells (normalised as the training cells):
        its raw counts (dense or CSR, never densified whole: CSR becomes ELL rows), library-size
        factors, gene statistics and batches.
    sparse : force ELL rows (True) or dense counts (False); default :func:`use_sparse_rows`.
    width : slots of the ELL rows (default: the longest row), see :func:`ell_rows`.
    sharding : where to put the arrays; default the default device.
    put_rows, put_genes : how to place the per-cell arrays and the gene statistics instead of by
        ``sharding`` (a streamed block split over several processes: each process's own rows, and
        local copies).  With ``put_rows`` the per-cell lgamma constants are computed on the host,
        so that nothing here starts a device program (it runs on the prefetch thread, and every
        process must start the programs over global arrays in the same order).
    """
    put = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jnp.asarray
    put = put if put_genes is None else put_genes
    cell_put = put if put_rows is None else put_rows
    raw, norm, b = prep.raw, prep.norm, prep.data.batch
    sparse = use_sparse_rows(raw) if sparse is None else sparse
    if sparse:
        cols, vals = ell_rows(sp.csr_matrix(raw, dtype=np.float32), width)
        counts, cols = cell_put(vals), cell_put(cols)
    else:
        dense = raw.toarray() if sp.issparse(raw) else raw
        counts, cols = cell_put(np.asarray(dense, np.float32)), None
    if put_rows is None:
        const = _lgamma_row_means(counts, prep.shape[1])
    else:  # on the host (see put_rows above)
        from scipy.special import gammaln

        host = vals if sparse else np.asarray(dense, np.float32)
        const = cell_put((gammaln(np.asarray(host, np.float64) + 1.0).sum(1) / prep.shape[1]).astype(np.float32))
    return ClusterData(counts, cols, cell_put(prep.scale), cell_put(prep.size_factors), const,
                       put(np.asarray(norm["mean"], np.float32)), put(np.asarray(norm["std"], np.float32)),
                       None if b is None else cell_put(np.asarray(b, np.float32)))


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


# ---- model --------------------------------------------------------------------------------------

def build_model(cfg, n_genes: int, seed: int, *, n_batches: int = 0):
    """(graphdef, initial autoencoder state) with the configured sizes (the state drawn by
    :func:`~scdc_jax.nn.init_split`: one compiled program)."""
    return init_split(ZINBAutoencoder, jax.random.fold_in(jax.random.key(seed), 0), **_sizes(cfg, n_genes, n_batches))


def _sizes(cfg, n_genes: int, n_batches: int) -> dict:
    return dict(n_genes=n_genes, n_batches=n_batches, encoder=tuple(cfg.encoder), latent=cfg.latent,
                decoder=tuple(cfg.decoder), dtype=jnp.bfloat16 if cfg.precision == "bf16" else None)


def abstract_model(cfg, n_genes: int, *, n_batches: int = 0):
    """(graphdef, autoencoder state of ``jax.ShapeDtypeStruct`` leaves): the target a checkpoint
    is restored onto, built by ``nnx.eval_shape`` without computing any weights."""
    return nnx.split(nnx.eval_shape(lambda: ZINBAutoencoder(**_sizes(cfg, n_genes, n_batches),
                                                            rngs=nnx.Rngs(params=jax.random.key(0)))))


def stage_key(seed: int, stage: int, epoch: int) -> jax.Array:
    """Key of one epoch of one stage (1 pretraining, 2 clustering)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stage), epoch)


# ---- losses ---------------------------------------------------------------------------------------
# ``loss_fn(params, batch, key) -> (loss, measurements)``: the loss is differentiated; the
# measurements (per-cell means over the batch's valid cells) are what an epoch reports.
# ``batch`` holds x, raw, sf, const, b of :func:`_take` and the validity mask of its slots.

def _noisy_zinb(model, batch, key, sigma, ridge):
    """ZINB NLL (without the constant) of the denoising path: encode(x + noise) -> decode."""
    x, b = batch["x"], batch["b"]
    z = model.encode(x + sigma * jax.random.normal(key, x.shape, x.dtype), b)
    return zinb_nll_logits(batch["raw"], *model.decode_logits(z, b), batch["sf"], ridge_lambda=ridge,
                           mask=batch["mask"], include_constant=False)


def pretrain_loss(params, batch, key, *, graphdef, sigma: float, ridge_lambda: float = 0.0):
    """ZINB pretraining of the autoencoder state ``params``: the denoising NLL.

    Measures ``loss``, the full NLL per matrix element (with the constant ``lgamma(x + 1)``).
    """
    zinb = _noisy_zinb(nnx.merge(graphdef, params), batch, key, sigma, ridge_lambda)
    return zinb, {"loss": zinb + masked_mean(batch["const"], batch["mask"])}


def cluster_loss(params, batch, key, *, graphdef, sigma: float, gamma: float, alpha: float = 1.0,
                 ridge_lambda: float = 0.0, batch_mmd: float = 0.0):
    """The DEC stage's ``gamma * KL(p || q) + ZINB (+ batch_mmd * MMD)`` of
    ``params = {"ae": state, "mu": (k, latent)}``.

    ``q`` comes from the clean encoder pass, ``p = batch["p"]`` is the fixed target of the epoch.
    With batches and a positive ``batch_mmd``, the MMD between the batches within the clusters
    (weighted by ``p``) on the same pass is added: cells of one cluster are pulled together
    across batches, and batches holding the clusters in other proportions are not penalised
    for it.  (An MMD over whole minibatches, tried in pretraining too, also pulls different
    cell types together: on the semi-synthetic two-platform PBMC it lowered ARI from 0.74 to
    0.45.)  Measures ``loss`` and ``zinb`` (both with the NLL's constant), ``kl`` (and ``mmd``).
    """
    model = nnx.merge(graphdef, params["ae"])
    zinb = _noisy_zinb(model, batch, key, sigma, ridge_lambda)
    z = model.encode(batch["x"], batch["b"])
    kl = dec_kl(batch["p"], log_soft_assign(z, params["mu"], alpha), batch["mask"])
    loss = gamma * kl + zinb
    mmd = None
    if batch_mmd and batch["b"] is not None:
        mmd = mmd_between_batches(z, batch["b"], batch["mask"], groups=jax.lax.stop_gradient(batch["p"]))
        loss = loss + batch_mmd * mmd
    const = masked_mean(batch["const"], batch["mask"])
    measured = {"loss": loss + const, "kl": kl, "zinb": zinb + const}
    return loss, measured if mmd is None else {**measured, "mmd": mmd}


# ---- epoch ----------------------------------------------------------------------------------------

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
        slots = padded_size(size, n_dev)
        idx = order[first * batch_size:first * batch_size + steps * size].reshape(steps, size)
        idx = jnp.pad(idx, ((0, 0), (0, slots - size)))
        valid = jnp.broadcast_to(jnp.arange(slots) < size, (steps, slots))
        groups.append((first + jnp.arange(steps), idx, valid))
    return groups


def _take(data: ClusterData, idx) -> dict:
    """The minibatch of the cells ``idx`` (b): ``{"x", "raw"}`` (b, g), ``{"sf", "const"}`` (b,),
    ``"b"`` (b, nb) or None."""
    x, raw = batch_rows(data, idx)
    return {"x": x, "raw": raw, "sf": data.sf[idx], "const": data.const[idx],
            "b": None if data.b is None else data.b[idx]}


def _same_program(value):
    """A hashable stand-in for a builder argument, equal for arguments that build the same program:
    a ``functools.partial`` by its function and arguments, anything else as itself."""
    if isinstance(value, partial):
        return (partial, value.func, tuple(map(_same_program, value.args)),
                tuple(sorted((k, _same_program(v)) for k, v in value.keywords.items())))
    return value


def _reused(build, size: int = 32):
    """``build`` (a maker of jitted functions) returning the function it made before for the same
    arguments, so that a second run in one process (a notebook, an ensemble, ``predict`` after
    ``fit``) reuses the compiled programs instead of tracing and compiling them again.  Arguments
    that cannot be hashed build afresh."""
    made: OrderedDict = OrderedDict()

    @wraps(build)
    def reuse(*args, **kwargs):
        try:
            key = (tuple(map(_same_program, args)), tuple(sorted((k, _same_program(v)) for k, v in kwargs.items())))
            hash(key)
        except TypeError:
            return build(*args, **kwargs)
        if key not in made:
            made[key] = build(*args, **kwargs)
            if len(made) > size:
                made.popitem(last=False)
        made.move_to_end(key)
        return made[key]

    return reuse


@_reused
def make_epoch(loss_fn, tx: optax.GradientTransformation, *, n: int, batch_size: int, shuffle: bool,
               batch_sharding=None, members: bool = False):
    """``epoch(params, opt_state, data, key, per_cell=None) -> (params, opt_state, means)``, jitted.

    One pass over the ``n`` cells of ``data`` in minibatches of ``batch_size``: in a fresh random
    order drawn from ``key`` (``shuffle``) or in order, one optimiser step of ``loss_fn`` (see the
    losses above) each, with step ``i``'s key ``fold_in(key, i)``.  ``per_cell`` holds more (n, ...)
    arrays (the DEC target ``p``), gathered into each batch under their names.  ``means`` are the
    measurements of ``loss_fn``, each averaged over all cells of the epoch (a batch weighs as its
    valid cells).  ``params`` and ``opt_state`` are donated.  ``batch_sharding`` (optional)
    spreads each minibatch over a device mesh.  ``members``: ``params``, ``opt_state``, ``key``
    and ``per_cell`` carry a leading axis of ensemble members (seeds) trained side by side as one
    vmapped program over the same cells, each in its own cell order; ``means`` are then (members,).
    """
    n_dev = 1 if batch_sharding is None else batch_sharding.mesh.size
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def epoch(params, opt_state, data: ClusterData, key, per_cell=None):
        if shuffle:
            perm_key, key = jax.random.split(key)
            order = jax.random.permutation(perm_key, n)
        else:
            order = jnp.arange(n)

        def step(carry, inp):
            params, opt_state = carry
            i, idx, mask = inp
            if batch_sharding is not None:
                idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
            batch = {**_take(data, idx), **{k: v[idx] for k, v in (per_cell or {}).items()}, "mask": mask}
            (_, measured), grads = grad_fn(params, batch, jax.random.fold_in(key, i))
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            n_valid = mask.sum()
            return (params, opt_state), {k: v * n_valid for k, v in measured.items()}

        # one compiled step per batch shape: the full batches, then the last partial one
        outs = []
        for group in _batch_plan(order, n, batch_size, n_dev):
            (params, opt_state), out = jax.lax.scan(step, (params, opt_state), group)
            outs.append(out)
        means = {k: jnp.concatenate([o[k] for o in outs]).sum() / n for k in outs[0]}
        return params, opt_state, means

    if members:
        one = jax.vmap(epoch, in_axes=(0, 0, None, 0, 0))

        def epoch(params, opt_state, data: ClusterData, key, per_cell=None):
            return one(params, opt_state, data, key, per_cell)

    return jax.jit(epoch, donate_argnums=(0, 1))


# ---- inference ------------------------------------------------------------------------------------

@_reused
def make_encoder(graphdef, chunk: int = 65536, *, members: bool = False):
    """``encode(ae_params, data) -> z0`` (n, latent): the clean encoder pass over all cells of a
    :class:`ClusterData`, ``chunk`` cells at a time; with ``members``, of each member of stacked
    ``ae_params`` (members, n, latent)."""

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

    return jax.jit(jax.vmap(encode, in_axes=(0, None)) if members else encode)


@_reused
def make_assign(graphdef, alpha: float = 1.0, *, members: bool = False, n_cells: int | None = None):
    """``assign(params, data) -> (z0, q, p, labels)`` over all cells, jit-compiled (each with a
    leading members axis with ``members``); ``n_cells``: only the first ``n_cells`` rows of
    ``data`` are cells (the rest padding, left out of the target's cluster frequencies and of the
    results)."""
    encode = make_encoder(graphdef)

    def assign(params, data: ClusterData):
        z0 = encode(params["ae"], data)
        q = jnp.exp(log_soft_assign(z0, params["mu"], alpha))
        n = data.n_cells if n_cells is None else n_cells
        p = target_distribution(q, None if n == data.n_cells else jnp.arange(data.n_cells) < n)
        return z0[:n], q[:n], p[:n], jnp.argmax(q[:n], axis=1)

    return jax.jit(jax.vmap(assign, in_axes=(0, None)) if members else assign)
