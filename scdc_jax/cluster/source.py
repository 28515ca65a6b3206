"""Where a run's cells come from: all on the device at once, or streamed from disk in blocks.

The pipeline's stages ask a source for three things, the same way whichever it is: a compiled
``epoch`` (one pass of optimiser steps over all cells), ``encode`` (the clean latent of all
cells, on the host) and ``assign`` (latent, soft assignments, DEC target and labels).

:class:`InMemory` holds one :class:`~scdc_jax.cluster.train.ClusterData` and calls the compiled
epoch once.  :class:`Streamed` holds only the statistics of the preprocessing; an epoch visits the
file's blocks of contiguous cells (in a random block order when the epoch shuffles, in file
order otherwise), reading the next blocks on a background thread while the device runs the
current block's compiled epoch, so host and device memory hold a few blocks, not the data.
Within a block cells are shuffled (or not) as in memory; of an epoch's key, ``fold_in(key, 0)``
draws the block order and block ``i`` trains with ``fold_in(fold_in(key, 1), i)``.  The per-cell outputs (latent, soft assignments, target, labels) are
small and kept whole; the DEC target uses cluster frequencies summed over all blocks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .. import checkpoint
from ..io import CountData
from ..losses import log_soft_assign, target_distribution
from ..parallel import padded_size, process_rows, put_local_copies, put_process_rows
from ..preprocess import Prepared
from ..store import BLOCK_CELLS, CellStore, Prefetch, StreamPrepared, kept_rows
from .train import ClusterData, device_data, make_assign, make_encoder, make_epoch


class InMemory:
    """All cells on the device(s) as one :class:`ClusterData`: replicated on every device, or (of
    a run over several processes, :meth:`process_rows`) split by rows over all devices, each
    process holding its devices' rows and padding rows after the last cell."""

    def __init__(self, data: ClusterData, *, batch_size: int, batch_sharding=None, n_cells: int | None = None):
        self.data, self.batch_size, self.batch_sharding = data, batch_size, batch_sharding
        self.n_cells = data.n_cells if n_cells is None else n_cells  # without the padding rows

    @classmethod
    def process_rows(cls, store: CellStore, prep: StreamPrepared, *, batch_size: int, sharding=None,
                     batch_sharding=None) -> "InMemory":
        """The cells of ``store`` held in memory for a whole run, each process reading only its
        devices' rows of them, once (one process reads them all)."""
        whole = Streamed(store, prep, batch_size=batch_size, block=max(prep.shape[0], 1), sharding=sharding,
                         batch_sharding=batch_sharding)
        return cls(whole.block_data(0), batch_size=batch_size, batch_sharding=batch_sharding, n_cells=prep.shape[0])

    def _cells(self, a, members: bool):
        """``a`` (cells first, or members then cells) without the padding rows."""
        return a[:, : self.n_cells] if members else a[: self.n_cells]

    def epoch(self, loss_fn, tx, *, shuffle: bool, members: bool = False):
        """``epoch(params, opt_state, key, per_cell=None) -> (params, opt_state, means)``;
        ``members``: of stacked ensemble members (:func:`~scdc_jax.cluster.train.make_epoch`)."""
        fn = make_epoch(loss_fn, tx, n=self.n_cells, batch_size=self.batch_size, shuffle=shuffle,
                        batch_sharding=self.batch_sharding, members=members)
        return lambda params, opt_state, key, per_cell=None: fn(params, opt_state, self.data, key, per_cell)

    def encoder(self, graphdef, *, members: bool = False):
        """``encode(ae) -> z0`` (n, latent) NumPy ((members, n, latent) with ``members``)."""
        fn = make_encoder(graphdef, members=members)
        return lambda ae: self._cells(checkpoint.to_host(fn(ae, self.data)), members)

    def assigner(self, graphdef, alpha: float, *, members: bool = False):
        """``assign(params) -> (z0, q, p, labels)``: z0, q host arrays, p on the device, labels host
        (each with a leading members axis with ``members``)."""
        fn = make_assign(graphdef, alpha, members=members, n_cells=self.n_cells)

        def assign(params):
            z0, q, p, labels = fn(params, self.data)
            z0, q, labels = checkpoint.to_host((z0, q, labels))
            return z0, q, p, labels

        return assign


class Streamed:
    """The cells of ``store`` read ``block`` at a time (see the module docstring)."""

    def __init__(self, store: CellStore, prep: StreamPrepared, *, batch_size: int, block: int = BLOCK_CELLS,
                 sharding=None, batch_sharding=None, sparse: bool | None = None, prefetch: int = 2):
        self.store, self.prep, self.batch_size = store, prep, batch_size
        self.sharding, self.batch_sharding, self.prefetch = sharding, batch_sharding, prefetch
        self.n_cells = prep.shape[0]
        self.spans = [(a, min(a + block, self.n_cells)) for a in range(0, self.n_cells, block)]
        n_genes = prep.shape[1]
        self.sparse = store.sparse and 2 * prep.max_row_nnz < n_genes if sparse is None else sparse
        # several processes: a block's cells are split by rows over the mesh, each process reading
        # only its devices' rows (one process keeps the block whole on every device)
        self.split = batch_sharding if batch_sharding is not None and jax.process_count() > 1 else None
        self._epochs: dict = {}

    def block_data(self, i: int) -> ClusterData:
        """Block ``i`` on the device(s), normalised with the whole data's statistics.  Split by
        rows over several processes, it is padded to a multiple of the devices (rows past the
        block's cells hold no counts and are never drawn into a minibatch)."""
        a, b = self.spans[i]
        lo = hi = n_rows = None
        if self.split is not None:
            n_rows = padded_size(b - a, self.split.mesh.size)
            lo, hi = process_rows(self.split, n_rows)
            a, b = a + min(lo, b - a), a + min(hi, b - a)  # this process's cells of the block
        raw = kept_rows(self.store, self.prep, a, b)
        totals = self.prep.totals[a:b]
        batch = None if self.prep.data.batch is None else self.prep.data.batch[a:b]
        put_rows = None
        if self.split is not None:
            pad = (hi - lo) - (b - a)
            raw = sp.vstack([raw, sp.csr_matrix((pad, raw.shape[1]), dtype=raw.dtype)]).tocsr() if sp.issparse(raw) \
                else np.concatenate([raw, np.zeros((pad, raw.shape[1]), raw.dtype)])
            totals = np.concatenate([totals, np.full(pad, self.prep.norm["median_total"])])
            batch = None if batch is None else np.concatenate([batch, np.zeros((pad, batch.shape[1]), batch.dtype)])
            put_rows = lambda x: put_process_rows(x, lo, n_rows, self.split)  # noqa: E731
        part = Prepared(raw=raw, totals=totals, data=CountData(X=raw, batch=batch),
                        cells=self.prep.cells[a:b], genes=self.prep.genes, norm=self.prep.norm)
        # split: the gene statistics too are placed from this process's own copies (no step taken
        # with the other processes, as this runs on the prefetch thread)
        put_genes = None if self.split is None else (lambda x: put_local_copies(x, self.sharding))
        return device_data(part, sharding=self.sharding, sparse=self.sparse,
                           width=self.prep.max_row_nnz if self.sparse else None, put_rows=put_rows,
                           put_genes=put_genes)

    def _size(self, i: int) -> int:
        """Cells of block ``i`` (its arrays may hold padding rows after them)."""
        return self.spans[i][1] - self.spans[i][0]

    def _blocks(self, order):
        """``(i, ClusterData)`` of the blocks in ``order``, read ahead on a thread."""
        return Prefetch(lambda i: (i, self.block_data(i)), order, depth=self.prefetch)

    def epoch(self, loss_fn, tx, *, shuffle: bool):
        def compiled(n):
            key = (loss_fn, shuffle, n)  # the cache keeps the loss alive: its identity stays its own
            if key not in self._epochs:
                self._epochs[key] = make_epoch(loss_fn, tx, n=n, batch_size=self.batch_size, shuffle=shuffle,
                                               batch_sharding=self.batch_sharding)
            return self._epochs[key]

        def epoch(params, opt_state, key, per_cell=None):
            order = np.arange(len(self.spans))
            if shuffle:
                order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), order))
            block_key = jax.random.fold_in(key, 1)
            sums = previous = None
            for i, data in self._blocks(order.tolist()):
                a, b = self.spans[i]
                extra = None if per_cell is None else {k: v[a:b] for k, v in per_cell.items()}
                params, opt_state, means = compiled(b - a)(params, opt_state, data,
                                                           jax.random.fold_in(block_key, i), extra)
                # Dispatch is asynchronous: without waiting, the loop would queue every block of the
                # epoch (and hold them all in memory); waiting for the block before this one keeps
                # one block training while the next is read.
                jax.block_until_ready(previous)
                previous = means
                weighted = {k: v * (b - a) for k, v in means.items()}
                sums = weighted if sums is None else {k: sums[k] + weighted[k] for k in sums}
            return params, opt_state, {k: v / self.n_cells for k, v in sums.items()}

        return epoch

    def encoder(self, graphdef):
        fn = make_encoder(graphdef)

        def encode(ae):
            return np.concatenate([checkpoint.to_host(fn(ae, data))[: self._size(i)]
                                   for i, data in self._blocks(range(len(self.spans)))])

        return encode

    def assigner(self, graphdef, alpha: float):
        encode = make_encoder(graphdef)

        @jax.jit
        def soft(params, data):
            z0 = encode(params["ae"], data)
            return z0, jnp.exp(log_soft_assign(z0, params["mu"], alpha))

        target = jax.jit(target_distribution)

        def assign(params):
            blocks = [(self._size(i), checkpoint.to_host(soft(params, data)))
                      for i, data in self._blocks(range(len(self.spans)))]
            z0 = np.concatenate([z[:n] for n, (z, _) in blocks])  # padding rows dropped
            q = np.concatenate([qq[:n] for n, (_, qq) in blocks])
            p = target(jax.device_put(q, self.sharding) if self.sharding is not None else jnp.asarray(q))
            return z0, q, p, np.argmax(q, axis=1)

        return assign
