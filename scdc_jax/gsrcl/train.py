"""GsRCL encoder training: Gaussian-noise views, NT-Xent or SupCon on the global batch.

An epoch is the training cells in their given order, in batches of ``batch_size`` (full batch
when fewer cells), never shuffled.  Several epochs run as ONE compiled call (``lax.scan`` over
epochs around a scan over batches).  With a device mesh the parameters are replicated and every
batch is padded to a multiple of the device count (padding masked out of the loss, no row
dropped) and split over the "data" axis; the loss is written on the global batch, so NT-Xent's
negatives come from all devices and XLA inserts the collectives.

The noise of cell ``i`` at step ``s`` of epoch ``e`` is drawn from a key folded with ``e``, ``s``,
the view and ``i`` itself, so it does not depend on padding or on the number of devices.

BatchNorm (the reference adds it when a fold has more than 8192 cells) is not used here: the
network is built without it, so runs on more than 8192 training cells differ from the reference.
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..errors import TrainingDiverged
from ..losses import ntxent, supcon
from ..nn import GsRCLNet
from ..optim import adam_coupled_l2
from ..parallel import make_mesh, padded_size, replicated


def log_transform(X) -> np.ndarray:
    """Dense float32 ``log(x + 1)`` of a (cells, genes) count matrix (dense or sparse)."""
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    return np.log1p(X.astype(np.float32))


def build_model(n_genes: int, cfg, seed: int):
    """(graphdef, params) of a freshly initialised GsRCL network."""
    model = GsRCLNet(n_genes, encoder=tuple(cfg.encoder), head=tuple(cfg.head), batch_norm=False,
                     rngs=nnx.Rngs(params=jax.random.key(seed)))
    return nnx.split(model)


class Batches(NamedTuple):
    """A training set cut into steps: x (steps, slots, g), mask/ids/labels (steps, slots)."""

    x: jax.Array
    mask: jax.Array
    ids: jax.Array
    labels: jax.Array


def make_batches(x: np.ndarray, labels: np.ndarray | None, batch_size: int, n_devices: int = 1,
                 mesh=None) -> Batches:
    """Cut ``x`` (n, g) in order into ``ceil(n / batch_size)`` batches padded to a multiple of the
    device count; padding rows are zeros with mask False.  With ``mesh`` the slots are split on
    "data"."""
    n = x.shape[0]
    bs = min(batch_size, n)
    steps = math.ceil(n / bs)
    slots = padded_size(bs, n_devices)
    idx = np.zeros((steps, slots), np.int64)
    mask = np.zeros((steps, slots), bool)
    for s in range(steps):
        rows = np.arange(s * bs, min((s + 1) * bs, n))
        idx[s, : len(rows)] = rows
        mask[s, : len(rows)] = True
    xs = np.where(mask[..., None], x[idx], 0.0).astype(np.float32)
    lab = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
    arrays = (xs, mask, idx.astype(np.int32), np.where(mask, lab[idx], -1).astype(np.int32))
    if mesh is None:
        return Batches(*map(jnp.asarray, arrays))
    sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    return Batches(*(jax.device_put(a, sh) for a in arrays))


def _views(x, ids, key, noise_std):
    """Two noisy views of the rows ``x`` (n, g), the noise keyed by cell id."""
    def noise(k):
        return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(ids)

    k1, k2 = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    return x + noise_std * noise(k1), x + noise_std * noise(k2)


def make_loss_fn(graphdef, *, loss: str = "simclr", temperature: float = 0.07, noise_std: float = 1.0):
    """``loss_fn(params, x, mask, ids, labels, key) -> scalar``: the contrastive loss of one batch.

    x : (b, g) log expression; mask : (b,) valid rows; ids : (b,) cell ids keying the noise;
    labels : (b,) ints (SupCon only).
    """

    def loss_fn(params, x, mask, ids, labels, key):
        model = nnx.merge(graphdef, params)
        v1, v2 = _views(x, ids, key, noise_std)
        _, z1 = model(v1)
        _, z2 = model(v2)
        if loss == "supcon":
            return supcon(z1, z2, labels, temperature=temperature, mask=mask)
        return ntxent(z1, z2, temperature=temperature, mask=mask)

    return loss_fn


def make_train_epochs(graphdef, tx: optax.GradientTransformation, cfg, *, n_epochs: int):
    """``run(params, opt_state, batches, key, epoch0) -> (params, opt_state, losses (n_epochs,))``.

    ``n_epochs`` epochs from epoch number ``epoch0`` in one jit-compiled call; each loss is the
    epoch's mean over its cells.
    """
    loss_fn = make_loss_fn(graphdef, loss=cfg.loss, temperature=cfg.temperature, noise_std=cfg.noise_std)
    grad_fn = jax.value_and_grad(loss_fn)

    @partial(jax.jit, donate_argnums=(0, 1))
    def run(params, opt_state, batches: Batches, key, epoch0):
        steps = batches.x.shape[0]

        def step(carry, inp):
            params, opt_state, ekey = carry
            s, x, mask, ids, labels = inp
            loss, grads = grad_fn(params, x, mask, ids, labels, jax.random.fold_in(ekey, s))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, ekey), loss * mask.sum()

        def epoch(carry, e):
            params, opt_state = carry
            (params, opt_state, _), weighted = jax.lax.scan(
                step, (params, opt_state, jax.random.fold_in(key, e)),
                (jnp.arange(steps), batches.x, batches.mask, batches.ids, batches.labels))
            return (params, opt_state), weighted.sum() / batches.mask.sum()

        (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), epoch0 + jnp.arange(n_epochs))
        return params, opt_state, losses

    return run


def make_encode(graphdef, chunk: int = 4096):
    """``encode(params, x) -> h`` (n, d) as a NumPy array, the representation of clean inputs."""

    @jax.jit
    def _encode(params, x):
        return nnx.merge(graphdef, params).encoder(x)

    def encode(params, x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(_encode(params, jnp.asarray(x[i:i + chunk])))
                               for i in range(0, max(len(x), 1), chunk)])

    return encode


class Trainer:
    """Trains GsRCL encoders of one configuration on one gene set, on ``cfg.devices`` devices.

    ``fit(x, labels, seed, callback)`` trains a fresh network for ``cfg.n_epochs`` epochs; every
    ``cfg.eval_every`` epochs (and at the end) it calls ``callback(epoch, params)``.
    """

    def __init__(self, n_genes: int, cfg):
        self.cfg = cfg
        self.n_genes = n_genes
        self.mesh = make_mesh(cfg.devices) if cfg.devices > 1 else None
        self.graphdef, _ = build_model(n_genes, cfg, 0)
        self.tx = adam_coupled_l2(cfg.lr, cfg.weight_decay)
        self.encode = make_encode(self.graphdef)
        self._runs: dict[int, object] = {}

    def _run(self, n_epochs: int):
        if n_epochs not in self._runs:
            self._runs[n_epochs] = make_train_epochs(self.graphdef, self.tx, self.cfg, n_epochs=n_epochs)
        return self._runs[n_epochs]

    def init(self, seed: int):
        _, params = build_model(self.n_genes, self.cfg, seed)
        if self.mesh is not None:
            params = jax.device_put(params, replicated(self.mesh))
        return params, self.tx.init(params)

    def fit(self, x: np.ndarray, labels: np.ndarray | None, seed: int, callback=None):
        """Returns (final params, list of per-epoch losses)."""
        cfg = self.cfg
        params, opt_state = self.init(seed)
        batches = make_batches(x, labels, cfg.batch_size, cfg.devices, self.mesh)
        key = jax.random.fold_in(jax.random.key(seed), 1)
        losses: list[float] = []
        done = 0
        while done < cfg.n_epochs:
            n = min(cfg.eval_every, cfg.n_epochs - done)
            params, opt_state, chunk = self._run(n)(params, opt_state, batches, key, jnp.int32(done))
            chunk = np.asarray(chunk)  # blocks: keeps forced CPU devices from queueing too much work
            losses.extend(chunk.tolist())
            done += n
            if not np.all(np.isfinite(chunk)):
                raise TrainingDiverged(f"the GsRCL loss became non-finite by epoch {done}; lower --lr.")
            if callback is not None:
                callback(done, params)
        return params, losses

