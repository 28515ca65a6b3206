"""GsRCL encoder training: two augmented views per cell, NT-Xent or SupCon on the global batch.

An epoch is the training cells in their given order, in batches of ``batch_size`` (full batch
when fewer cells), never shuffled.  Several epochs run as ONE compiled call (``lax.scan`` over
epochs around a scan over batches).  With a device mesh the parameters are replicated and every
batch is padded to a multiple of the device count (padding masked out of the loss and of the
BatchNorm statistics, no row dropped) and split over the "data" axis; the loss is written on the
global batch, so NT-Xent's negatives come from all devices and XLA inserts the collectives.  The
mesh may span several processes (:mod:`scdc_jax.distributed`): every process then holds the whole
training set, places it on the global mesh, and gets the whole representation back from encoding.
``Trainer.fit_folds`` trains several outer folds' networks as one program: their states stacked
on a leading fold axis, their batches padded to one shape, the epochs vmapped over the folds (with
a mesh too: the folds vmapped, each step's cells split on "data").

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
import shutil
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from .. import distributed
from ..checkpoint import to_host
from ..errors import TrainingDiverged
from ..losses import ntxent, supcon
from ..nn import GsRCLNet
from ..optim import adam_coupled_l2
from ..parallel import data_sharded, make_mesh, padded_size, replicated


BATCH_NORM_ABOVE = 8192  # the reference adds BatchNorm when a training set has more cells


def use_batch_norm(cfg, n_train: int) -> bool:
    """Whether a network trained on ``n_train`` cells has BatchNorm under ``cfg.batch_norm``."""
    if cfg.batch_norm == "auto":
        return n_train > BATCH_NORM_ABOVE
    return bool(cfg.batch_norm)


FOLD_BATCH_MEMORY_FRACTION = 0.5  # of a device's memory, that an automatic fold batch may take


def fold_batch_bytes(cfg, n_genes: int, sizes: list[int]) -> int:
    """An estimate (from the shapes, not measured on a GPU) of the memory one device needs to train
    the folds of ``sizes`` training cells as one fold batch: per fold the float32 parameters with
    their gradients, Adam moments and donated copies (6 of each), the batches, one step's two views
    kept for the backward pass (inputs, noise, each layer's pre-activations, activations and
    gradients) and the NT-Xent/SupCon similarity matrices; a step's cells are split over
    ``cfg.devices``.  The published network on 5 folds of 8192 cells x 14878 genes: about 55 GB."""
    widths = [n_genes, *cfg.encoder, *cfg.head]
    n_params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    slots = padded_size(min(cfg.batch_size, max(sizes)), cfg.devices)
    steps = max(math.ceil(n / min(cfg.batch_size, n)) for n in sizes)
    rows = slots // cfg.devices
    batches = steps * rows * (n_genes + 3) * 4
    activations = 2 * rows * (2 * n_genes + 3 * sum(widths[1:])) * 4
    similarities = 3 * rows * 2 * slots * 2 * 4
    return len(sizes) * (6 * n_params * 4 + batches + activations + similarities)


def use_fold_batch(cfg, n_genes: int, sizes: list[int]) -> bool:
    """Whether the outer folds of ``sizes`` training cells train together (``Trainer.fit_folds``)
    under ``cfg.fold_batch``: "on" always, "off" never, "auto" on a GPU or TPU when
    :func:`fold_batch_bytes` fits in FOLD_BATCH_MEMORY_FRACTION of the first device's memory, never
    on a CPU (where batching was measured to gain nothing:
    benchmarks/results/gsrcl_protocol_fold_batch.md).  Fewer than two folds, or folds that
    disagree on BatchNorm, train one by one."""
    if len(sizes) < 2 or len({use_batch_norm(cfg, n) for n in sizes}) > 1:
        return False
    if cfg.fold_batch != "auto":
        return cfg.fold_batch == "on"
    device = jax.local_devices()[0]  # one of this process's: another process's device has no memory stats here
    if device.platform == "cpu":
        return False
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return limit is not None and fold_batch_bytes(cfg, n_genes, sizes) <= FOLD_BATCH_MEMORY_FRACTION * limit


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


def _batch_arrays(x: np.ndarray, labels: np.ndarray | None, batch_size: int, n_devices: int) -> tuple:
    """NumPy (x, mask, ids, labels) of :func:`make_batches`."""
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
    return xs, mask, idx.astype(np.int32), np.where(mask, lab[idx], -1).astype(np.int32)


def _to_device(arrays, mesh, spec) -> Batches:
    if mesh is None:
        return Batches(*map(jnp.asarray, arrays))
    sh = jax.sharding.NamedSharding(mesh, spec)
    return Batches(*(jax.device_put(a, sh) for a in arrays))


def make_batches(x: np.ndarray, labels: np.ndarray | None, batch_size: int, n_devices: int = 1,
                 mesh=None) -> Batches:
    """Cut ``x`` (n, g) in order into ``ceil(n / batch_size)`` batches padded to a multiple of the
    device count; padding rows are zeros with mask False.  With ``mesh`` the slots are split on
    "data"."""
    return _to_device(_batch_arrays(x, labels, batch_size, n_devices), mesh, P(None, "data"))


def make_fold_batches(xs: list[np.ndarray], labels: list[np.ndarray | None], batch_size: int,
                      n_devices: int = 1, mesh=None) -> Batches:
    """The batches of several folds stacked on a leading fold axis: x (F, steps, slots, g),
    mask/ids/labels (F, steps, slots).  Fold ``k`` holds its :func:`make_batches` batches, padded
    to the folds' largest (steps, slots) with masked rows, and steps of padding only at the end."""
    parts = [_batch_arrays(x, lab, batch_size, n_devices) for x, lab in zip(xs, labels)]
    steps = max(p[0].shape[0] for p in parts)
    slots = max(p[0].shape[1] for p in parts)
    stacked = []
    for i, fill in enumerate((0.0, False, 0, -1)):
        pad = [[(0, steps - p[i].shape[0]), (0, slots - p[i].shape[1])] + [(0, 0)] * (p[i].ndim - 2) for p in parts]
        stacked.append(np.stack([np.pad(p[i], w, constant_values=fill) for p, w in zip(parts, pad)]))
    return _to_device(stacked, mesh, P(None, None, "data"))


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


def make_train_epochs(graphdef, tx: optax.GradientTransformation, cfg, *, n_epochs: int, folds: bool = False):
    """``run(state, opt_state, batches, key, epoch0) -> (state, opt_state, losses (n_epochs,))``.

    ``n_epochs`` epochs from epoch number ``epoch0`` in one jit-compiled call; ``state`` is the
    network state (parameters and BatchNorm statistics); each loss is the epoch's mean over its
    cells.  With ``folds`` the state, optimiser state, batches (:func:`make_fold_batches`) and key
    carry a leading fold axis and the losses are (F, n_epochs): the F folds' runs are vmapped into
    one program, each fold's the run it has alone (a step of padding only changes nothing).
    """
    loss_fn = make_loss_fn(graphdef, loss=cfg.loss, temperature=cfg.temperature, noise_std=cfg.noise_std,
                           augment=cfg.augment, dropout=cfg.dropout)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def run(state, opt_state, batches: Batches, key, epoch0):
        steps = batches.x.shape[0]
        params, stats = split_params(state)

        def step(carry, inp):
            params, stats, opt_state, ekey = carry
            s, x, mask, ids, labels = inp
            (loss, new_stats), grads = grad_fn(params, stats, x, mask, ids, labels, jax.random.fold_in(ekey, s))
            updates, new_opt = tx.update(grads, opt_state, params)
            live = mask.any()  # False only for the steps that pad a shorter fold in a fold batch
            params, stats, opt_state = jax.tree.map(lambda new, old: jnp.where(live, new, old),
                                                    (optax.apply_updates(params, updates), new_stats, new_opt),
                                                    (params, stats, opt_state))
            return (params, stats, opt_state, ekey), jnp.where(live, loss * mask.sum(), 0.0)

        def epoch(carry, e):
            params, stats, opt_state = carry
            (params, stats, opt_state, _), weighted = jax.lax.scan(
                step, (params, stats, opt_state, jax.random.fold_in(key, e)),
                (jnp.arange(steps), batches.x, batches.mask, batches.ids, batches.labels))
            return (params, stats, opt_state), weighted.sum() / batches.mask.sum()

        (params, stats, opt_state), losses = jax.lax.scan(epoch, (params, stats, opt_state),
                                                          epoch0 + jnp.arange(n_epochs))
        return nnx.merge_state(params, stats), opt_state, losses

    if folds:
        run = jax.vmap(run, in_axes=(0, 0, 0, 0, None))
    return jax.jit(run, donate_argnums=(0, 1))


def make_encode(graphdef, chunk: int = 4096, mesh=None):
    """``encode(state, x) -> h`` (n, d) as a NumPy array, the representation of clean inputs
    (BatchNorm, if any, uses its running statistics).

    With ``mesh`` (``state`` replicated on it) each chunk's rows are padded to a multiple of its
    devices, split over them and gathered back: the mesh may span several processes, whose jitted
    calls take only arrays of the global mesh, and every process then gets the whole ``h``."""

    @jax.jit
    def _encode(state, x):
        model = nnx.merge(graphdef, state)
        model.eval()
        return model.encoder(x).astype(jnp.float32)

    def one(params, x: np.ndarray) -> np.ndarray:
        if mesh is None:
            return np.asarray(_encode(params, jnp.asarray(x)))
        rows = np.zeros((padded_size(len(x), mesh.size), x.shape[1]), np.float32)
        rows[: len(x)] = x
        return to_host(_encode(params, jax.device_put(rows, data_sharded(mesh))))[: len(x)]

    def encode(params, x: np.ndarray) -> np.ndarray:
        return np.concatenate([one(params, x[i:i + chunk]) for i in range(0, max(len(x), 1), chunk)])

    return encode


class Trainer:
    """Trains GsRCL encoders of one configuration on one gene set, on ``cfg.devices`` devices.

    ``fit(x, labels, seed, callback)`` trains a fresh network for ``cfg.n_epochs`` epochs; before
    the first epoch, every ``cfg.eval_every`` epochs and at the end it calls ``callback(epoch,
    state)`` (epoch 0: the untrained network, a selection point of the reference).  With
    ``ckpt_dir`` a checkpoint is written there after every such call, and a later ``fit`` with the
    same arguments continues from the latest one.  ``fit_folds`` trains several such networks (the
    outer folds) at once as one vmapped program, each with its own seed, data and callback.
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
            self._graphs[batch_norm] = (graphdef, make_encode(graphdef, mesh=self.mesh))
        return self._graphs[batch_norm]

    def encode(self, state, x: np.ndarray) -> np.ndarray:
        """The representation (n, d) of ``x`` under the network state ``state`` (with or without
        BatchNorm, as the state says)."""
        return self._graph(has_batch_norm(state))[1](state, x)

    def _run(self, batch_norm: bool, n_epochs: int, folds: bool = False):
        key = (batch_norm, n_epochs, folds)
        if key not in self._runs:
            self._runs[key] = make_train_epochs(self._graph(batch_norm)[0], self.tx, self.cfg, n_epochs=n_epochs,
                                                folds=folds)
        return self._runs[key]

    def init(self, seed: int, batch_norm: bool):
        _, state = build_model(self.cfg, self.n_genes, seed, batch_norm=batch_norm)
        if self.mesh is not None:
            state = jax.device_put(state, replicated(self.mesh))
        return state, self.tx.init(split_params(state)[0])

    def init_folds(self, seeds: list[int], batch_norm: bool):
        """(network states, optimiser states) of fresh networks, one per seed, stacked on a leading
        fold axis; fold ``k`` is ``init(seeds[k], batch_norm)``."""
        states = [build_model(self.cfg, self.n_genes, seed, batch_norm=batch_norm)[1] for seed in seeds]
        opts = [self.tx.init(split_params(state)[0]) for state in states]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *zip(states, opts))
        if self.mesh is not None:
            stacked = jax.device_put(stacked, replicated(self.mesh))
        return stacked

    def _save(self, ckpt_dir: str, epoch: int, state, opt_state, losses: list, seed, callback) -> None:
        from .. import checkpoint

        extra, extra_meta = callback.checkpoint() if callback is not None else ({}, {})
        shapes = {k: [list(np.shape(a)), str(np.asarray(a).dtype)] for k, a in extra.items()}
        checkpoint.save(ckpt_dir, epoch, checkpoint.to_host({"state": state, "opt": opt_state, "extra": extra}),
                        {"losses": losses, "seed": seed, "extra_shapes": shapes, "callback": extra_meta},
                        max_to_keep=1)

    def _restore(self, ckpt_dir: str, state, opt_state, seed, callback):
        from .. import checkpoint

        step = checkpoint.latest_step(ckpt_dir)
        if step is None:
            return state, opt_state, []
        meta = checkpoint.read_meta(ckpt_dir, step)
        if meta["seed"] != seed:  # of other folds: a fold batch killed after some of its folds were stored
            if distributed.is_primary():
                shutil.rmtree(ckpt_dir)
            distributed.barrier("stale fold batch checkpoint removed")
            return state, opt_state, []
        shapes = meta["extra_shapes"]
        template = {"state": state, "opt": opt_state,
                    "extra": {k: np.empty(shape, dtype) for k, (shape, dtype) in shapes.items()}}
        saved, meta = checkpoint.restore(ckpt_dir, checkpoint.to_host(template), step)
        saved = checkpoint.to_host(saved)  # NumPy, which device_put places on a mesh of several processes too
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
            state, opt_state, losses = self._restore(ckpt_dir, state, opt_state, seed, callback)
        batches = make_batches(x, labels, cfg.batch_size, cfg.devices, self.mesh)
        key = jax.random.fold_in(jax.random.key(seed), 1)
        done = len(losses)
        if callback is not None and done == 0:
            callback(0, state)
        while done < cfg.n_epochs:
            n = min(cfg.eval_every - done % cfg.eval_every, cfg.n_epochs - done)
            state, opt_state, chunk = self._run(batch_norm, n)(state, opt_state, batches, key, jnp.int32(done))
            chunk = to_host(chunk)  # blocks: keeps forced CPU devices from queueing too much work
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

    def fit_folds(self, xs: list[np.ndarray], labels: list[np.ndarray | None], seeds: list[int],
                  callbacks: list | None = None, ckpt_dir: str | None = None):
        """``fit`` of F folds at once: returns [(final network state, per-epoch losses)] per fold.

        The folds' networks and optimiser states are stacked on a leading axis, their batches
        padded to common (steps, slots) with masked rows (:func:`make_fold_batches`) and the
        epochs of all folds run as one vmapped program; fold ``k`` uses ``seeds[k]`` as ``fit``
        would, so its losses and states are those of ``fit(xs[k], labels[k], seeds[k])`` up to
        float32 rounding.  ``callbacks[k](epoch, state)`` gets fold ``k``'s state at each selection
        point.  With ``ckpt_dir`` ONE checkpoint holds the stacked states and every callback's
        ``checkpoint()``; a later call with the same arguments continues from it (a checkpoint of
        other seeds is discarded).  All folds must agree on BatchNorm (:func:`use_batch_norm`).
        """
        cfg = self.cfg
        batch_norm = use_batch_norm(cfg, len(xs[0]))
        if any(use_batch_norm(cfg, len(x)) != batch_norm for x in xs):
            raise ValueError("the folds of a fold batch must all have BatchNorm or all not")
        callbacks = list(callbacks) if callbacks is not None else [None] * len(xs)
        state, opt_state = self.init_folds(seeds, batch_norm)
        losses: list[list[float]] = [[] for _ in xs]
        both = _FoldCallbacks(callbacks)
        if ckpt_dir is not None:
            state, opt_state, saved = self._restore(ckpt_dir, state, opt_state, list(seeds), both)
            losses = [list(f) for f in saved] or losses
        batches = make_fold_batches(xs, labels, cfg.batch_size, cfg.devices, self.mesh)
        keys = jnp.stack([jax.random.fold_in(jax.random.key(seed), 1) for seed in seeds])
        done = len(losses[0])
        if done == 0:
            both(0, state)
        while done < cfg.n_epochs:
            n = min(cfg.eval_every - done % cfg.eval_every, cfg.n_epochs - done)
            state, opt_state, chunk = self._run(batch_norm, n, folds=True)(state, opt_state, batches, keys,
                                                                           jnp.int32(done))
            chunk = to_host(chunk)  # (F, n); blocks, as in fit
            for f, c in zip(losses, chunk):
                f.extend(c.tolist())
            done += n
            if not np.all(np.isfinite(chunk)):
                bad = [k for k, c in enumerate(chunk) if not np.all(np.isfinite(c))]
                where = f"; the last good checkpoint is in {ckpt_dir}" if ckpt_dir else ""
                raise TrainingDiverged(f"the GsRCL loss of outer fold(s) {bad} became non-finite in contrastive "
                                       f"training by epoch {done}{where}; lower --lr.")
            both(done, state)
            if ckpt_dir is not None:
                self._save(ckpt_dir, done, state, opt_state, losses, list(seeds), both)
        return [(fold_state(state, k), f) for k, f in enumerate(losses)]


def fold_state(stacked, k: int):
    """Fold ``k``'s part of a pytree stacked on a leading fold axis."""
    return jax.tree.map(lambda a: a[k], stacked)


class _FoldCallbacks:
    """A fold batch's callbacks as one: called with the stacked state, each gets its fold's; for
    checkpoints, fold ``k``'s arrays are named ``f{k}_...`` and the metadata is a list by fold."""

    def __init__(self, callbacks: list):
        self.callbacks = callbacks

    def __call__(self, epoch: int, stacked) -> None:
        for k, cb in enumerate(self.callbacks):
            if cb is not None:
                cb(epoch, fold_state(stacked, k))

    def checkpoint(self) -> tuple[dict, list]:
        arrays, metas = {}, []
        for k, cb in enumerate(self.callbacks):
            a, m = cb.checkpoint() if cb is not None else ({}, {})
            arrays.update({f"f{k}_{name}": v for name, v in a.items()})
            metas.append(m)
        return arrays, metas

    def restore(self, arrays: dict, metas: list) -> None:
        for k, (cb, m) in enumerate(zip(self.callbacks, metas)):
            if cb is not None:
                prefix = f"f{k}_"
                cb.restore({name[len(prefix):]: v for name, v in arrays.items() if name.startswith(prefix)}, m)
