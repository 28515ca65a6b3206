"""GsRCL encoder training: two augmented views per cell, NT-Xent or SupCon on the global batch.

An epoch is the training cells in their given order, in batches of ``batch_size`` (full batch
when fewer cells), never shuffled.  Several epochs run as ONE compiled call (``lax.scan`` over
epochs around a scan over batches).  With a device mesh the parameters are replicated and every
batch is padded to a multiple of the device count (padding masked out of the loss and of the
BatchNorm statistics, no row dropped) and split over the "data" axis; the loss is written on the
global batch, so NT-Xent's negatives come from all devices and XLA inserts the collectives.

Views: ``augment = "gaussian"`` (GsRCL) adds N(0, noise_std^2) to every gene of the log
expression; ``augment = "dropout"`` (the random-gene-masking baseline) zeroes each input with
probability ``dropout`` and scales the rest by 1 / (1 - dropout), as a Dropout first layer would.
The draw for cell ``i`` at step ``s`` of epoch ``e`` is keyed by ``e``, ``s``, the view and ``i``
itself, so it does not depend on padding or on the number of devices.

BatchNorm after each hidden Dense is used when the training set has more than 8192 cells
(``batch_norm = "auto"``, the published rule) or when forced on/off; its running statistics are
part of the saved network state and are used (eval mode) when encoding.

``precision = "bf16"`` computes the Dense layers in bfloat16 (inputs and weights cast, products
accumulated by the backend in float32) while the parameters, the optimiser state, the
L2-normalised projections, the loss and the representation handed to the SVMs stay float32;
bfloat16 has float32's exponent range, so no loss scaling is needed.
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


BATCH_NORM_ABOVE = 8192  # the reference adds BatchNorm when a training set has more cells


def use_batch_norm(cfg, n_train: int) -> bool:
    """Whether a network trained on ``n_train`` cells has BatchNorm under ``cfg.batch_norm``."""
    if cfg.batch_norm == "auto":
        return n_train > BATCH_NORM_ABOVE
    return bool(cfg.batch_norm)


COMPUTE_DTYPES = {"f32": None, "bf16": jnp.bfloat16}


def build_model(cfg, n_genes: int, seed: int, *, batch_norm: bool = False):
    """(graphdef, state) of a freshly initialised GsRCL network in ``cfg.precision``; ``state``
    holds the (float32) parameters and, with BatchNorm, its running statistics."""
    model = GsRCLNet(n_genes, encoder=tuple(cfg.encoder), head=tuple(cfg.head), batch_norm=batch_norm,
                     dtype=COMPUTE_DTYPES[cfg.precision], rngs=nnx.Rngs(params=jax.random.key(seed)))
    return nnx.split(model)


def split_params(state):
    """(trainable parameters, everything else: BatchNorm statistics) of a network state."""
    return nnx.split_state(state, nnx.Param, ...)


def has_batch_norm(state) -> bool:
    """Whether the network state ``state`` is of a network with BatchNorm (holds its statistics)."""
    return bool(jax.tree.leaves(split_params(state)[1]))


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


def _views(x, ids, key, noise_std, augment="gaussian", dropout=0.9):
    """Two augmented views of the rows ``x`` (n, g), the randomness keyed by cell id."""
    g = x.shape[1:]
    if augment == "dropout":
        keep = 1.0 - dropout

        def view(k):
            kept = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(k, i), keep, g))(ids)
            return jnp.where(kept, x / keep, 0.0)
    else:
        def view(k):
            return x + noise_std * jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k, i), g, x.dtype))(ids)

    return view(jax.random.fold_in(key, 0)), view(jax.random.fold_in(key, 1))


def make_loss_fn(graphdef, *, loss: str = "simclr", temperature: float = 0.07, noise_std: float = 1.0,
                 augment: str = "gaussian", dropout: float = 0.9):
    """``loss_fn(params, stats, x, mask, ids, labels, key) -> (scalar, new stats)``: the
    contrastive loss of one batch (``stats``: BatchNorm statistics, empty without BatchNorm).

    x : (b, g) log expression; mask : (b,) valid rows; ids : (b,) cell ids keying the views;
    labels : (b,) ints (SupCon only).
    """

    def loss_fn(params, stats, x, mask, ids, labels, key):
        model = nnx.merge(graphdef, params, stats, copy=True)
        model.train()
        v1, v2 = _views(x, ids, key, noise_std, augment, dropout)
        z1 = model(v1, mask=mask)[1].astype(jnp.float32)
        z2 = model(v2, mask=mask)[1].astype(jnp.float32)
        if loss == "supcon":
            value = supcon(z1, z2, labels, temperature=temperature, mask=mask)
        else:
            value = ntxent(z1, z2, temperature=temperature, mask=mask)
        return value, nnx.state(model, nnx.BatchStat)

    return loss_fn


def make_train_epochs(graphdef, tx: optax.GradientTransformation, cfg, *, n_epochs: int):
    """``run(state, opt_state, batches, key, epoch0) -> (state, opt_state, losses (n_epochs,))``.

    ``n_epochs`` epochs from epoch number ``epoch0`` in one jit-compiled call; ``state`` is the
    network state (parameters and BatchNorm statistics); each loss is the epoch's mean over its
    cells.
    """
    loss_fn = make_loss_fn(graphdef, loss=cfg.loss, temperature=cfg.temperature, noise_std=cfg.noise_std,
                           augment=cfg.augment, dropout=cfg.dropout)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @partial(jax.jit, donate_argnums=(0, 1))
    def run(state, opt_state, batches: Batches, key, epoch0):
        steps = batches.x.shape[0]
        params, stats = split_params(state)

        def step(carry, inp):
            params, stats, opt_state, ekey = carry
            s, x, mask, ids, labels = inp
            (loss, stats), grads = grad_fn(params, stats, x, mask, ids, labels, jax.random.fold_in(ekey, s))
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), stats, opt_state, ekey), loss * mask.sum()

        def epoch(carry, e):
            params, stats, opt_state = carry
            (params, stats, opt_state, _), weighted = jax.lax.scan(
                step, (params, stats, opt_state, jax.random.fold_in(key, e)),
                (jnp.arange(steps), batches.x, batches.mask, batches.ids, batches.labels))
            return (params, stats, opt_state), weighted.sum() / batches.mask.sum()

        (params, stats, opt_state), losses = jax.lax.scan(epoch, (params, stats, opt_state),
                                                          epoch0 + jnp.arange(n_epochs))
        return nnx.merge_state(params, stats), opt_state, losses

    return run


def make_encode(graphdef, chunk: int = 4096):
    """``encode(state, x) -> h`` (n, d) as a NumPy array, the representation of clean inputs
    (BatchNorm, if any, uses its running statistics)."""

    @jax.jit
    def _encode(state, x):
        model = nnx.merge(graphdef, state)
        model.eval()
        return model.encoder(x).astype(jnp.float32)

    def encode(params, x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(_encode(params, jnp.asarray(x[i:i + chunk])))
                               for i in range(0, max(len(x), 1), chunk)])

    return encode


class Trainer:
    """Trains GsRCL encoders of one configuration on one gene set, on ``cfg.devices`` devices.

    ``fit(x, labels, seed, callback)`` trains a fresh network for ``cfg.n_epochs`` epochs; before
    the first epoch, every ``cfg.eval_every`` epochs and at the end it calls ``callback(epoch,
    state)`` (epoch 0: the untrained network, a selection point of the reference).  With
    ``ckpt_dir`` a checkpoint is written there after every such call, and a later ``fit`` with the
    same arguments continues from the latest one.
    """

    def __init__(self, n_genes: int, cfg):
        self.cfg = cfg
        self.n_genes = n_genes
        self.mesh = make_mesh(cfg.devices) if cfg.devices > 1 else None
        self.tx = adam_coupled_l2(cfg.lr, cfg.weight_decay)
        self._graphs: dict[bool, tuple] = {}
        self._runs: dict[tuple, object] = {}

    def _graph(self, batch_norm: bool):
        if batch_norm not in self._graphs:
            graphdef, _ = build_model(self.cfg, self.n_genes, 0, batch_norm=batch_norm)
            self._graphs[batch_norm] = (graphdef, make_encode(graphdef))
        return self._graphs[batch_norm]

    def encode(self, state, x: np.ndarray) -> np.ndarray:
        """The representation (n, d) of ``x`` under the network state ``state`` (with or without
        BatchNorm, as the state says)."""
        return self._graph(has_batch_norm(state))[1](state, x)

    def _run(self, batch_norm: bool, n_epochs: int):
        key = (batch_norm, n_epochs)
        if key not in self._runs:
            self._runs[key] = make_train_epochs(self._graph(batch_norm)[0], self.tx, self.cfg, n_epochs=n_epochs)
        return self._runs[key]

    def init(self, seed: int, batch_norm: bool):
        _, state = build_model(self.cfg, self.n_genes, seed, batch_norm=batch_norm)
        if self.mesh is not None:
            state = jax.device_put(state, replicated(self.mesh))
        return state, self.tx.init(split_params(state)[0])

    def _save(self, ckpt_dir: str, epoch: int, state, opt_state, losses: list, seed: int, callback) -> None:
        from .. import checkpoint

        extra, extra_meta = callback.checkpoint() if callback is not None else ({}, {})
        shapes = {k: [list(np.shape(a)), str(np.asarray(a).dtype)] for k, a in extra.items()}
        checkpoint.save(ckpt_dir, epoch, checkpoint.to_host({"state": state, "opt": opt_state, "extra": extra}),
                        {"losses": losses, "seed": seed, "extra_shapes": shapes, "callback": extra_meta},
                        max_to_keep=1)

    def _restore(self, ckpt_dir: str, state, opt_state, callback):
        from .. import checkpoint

        step = checkpoint.latest_step(ckpt_dir)
        if step is None:
            return state, opt_state, []
        shapes = checkpoint.read_meta(ckpt_dir, step)["extra_shapes"]
        template = {"state": state, "opt": opt_state,
                    "extra": {k: np.empty(shape, dtype) for k, (shape, dtype) in shapes.items()}}
        saved, meta = checkpoint.restore(ckpt_dir, checkpoint.to_host(template), step)
        if callback is not None:
            callback.restore(saved["extra"], meta["callback"])
        sharding = replicated(self.mesh) if self.mesh is not None else None
        put = (lambda t: jax.device_put(t, sharding)) if sharding is not None else jax.device_put
        return put(saved["state"]), put(saved["opt"]), list(meta["losses"])

    def fit(self, x: np.ndarray, labels: np.ndarray | None, seed: int, callback=None,
            ckpt_dir: str | None = None):
        """Returns (final network state, list of per-epoch losses).

        A checkpoint in ``ckpt_dir`` holds the network, the optimiser state, the epoch, the losses
        and, when there is a callback, what its ``checkpoint()`` returns (a dict of arrays and a
        JSON-serialisable dict); continuing hands them back to ``callback.restore(arrays, meta)``.
        An epoch's keys depend only on ``seed`` and the epoch number and the epochs run in the same
        blocks, so a continued run is the uninterrupted one.
        """
        cfg = self.cfg
        batch_norm = use_batch_norm(cfg, len(x))
        state, opt_state = self.init(seed, batch_norm)
        losses: list[float] = []
        if ckpt_dir is not None:
            state, opt_state, losses = self._restore(ckpt_dir, state, opt_state, callback)
        batches = make_batches(x, labels, cfg.batch_size, cfg.devices, self.mesh)
        key = jax.random.fold_in(jax.random.key(seed), 1)
        done = len(losses)
        if callback is not None and done == 0:
            callback(0, state)
        while done < cfg.n_epochs:
            n = min(cfg.eval_every - done % cfg.eval_every, cfg.n_epochs - done)
            state, opt_state, chunk = self._run(batch_norm, n)(state, opt_state, batches, key, jnp.int32(done))
            chunk = np.asarray(chunk)  # blocks: keeps forced CPU devices from queueing too much work
            losses.extend(chunk.tolist())
            done += n
            if not np.all(np.isfinite(chunk)):
                where = f"; the last good checkpoint is in {ckpt_dir}" if ckpt_dir else ""
                raise TrainingDiverged(f"the GsRCL loss became non-finite in contrastive training by epoch "
                                       f"{done}{where}; lower --lr.")
            if callback is not None:
                callback(done, state)
            if ckpt_dir is not None:
                self._save(ckpt_dir, done, state, opt_state, losses, seed, callback)
        return state, losses
