"""Counts read from disk a block of cells at a time, for inputs larger than memory.

:class:`CellStore` opens an AnnData ``.h5ad`` file (through h5py) or ``.zarr`` store (through
zarr), or a scDeepCluster ``.h5``, and reads contiguous rows of its count matrix (CSR or dense)
without loading the rest; the annotations (labels, batches, names) are read whole, as they are
small.  :func:`stream_prepare` computes in passes over the blocks what
:func:`scdc_jax.preprocess.prepare` computes in memory (gene selection, the kept genes and cells,
size factors, the normalisation statistics), so a streamed run trains on the same inputs; in a
run of several processes each pass reads the process's share of the blocks and the sums are added
up across processes (:mod:`scdc_jax.distributed`).  :class:`Prefetch` reads the next blocks on a background thread while the device trains.
"""
from __future__ import annotations

import functools
import os
import queue
import threading
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from . import distributed
from .errors import InputError, option
from .io import CountData, check_counts, check_one_hot, encode_labels, obs_annotations, one_hot_from_labels, sniff_format
from .preprocess import LogStats, detection_stats, select_genes_from_stats

BLOCK_CELLS = 65536  # cells a block; a multiple of 4096, the chunk of the in-memory statistics


class CellStore:
    """Row blocks of the counts in ``path`` (.h5ad, .zarr or scDeepCluster .h5), read on demand.

    ``layer`` (AnnData: a layer's name, or ``"raw"`` for ``.raw.X``), ``label_key`` and
    ``batch_key`` as for :func:`scdc_jax.io.read_counts`.  ``annotations`` is a
    :class:`~scdc_jax.io.CountData` without counts (``X`` is an empty (n, 0) array) holding the
    labels, batches and names.
    """

    def __init__(self, path: str, *, layer: str | None = None, label_key: str | None = None,
                 batch_key: str | None = None):
        self.path = self.source = path
        fmt = sniff_format(path)
        if fmt not in ("h5ad", "zarr", "h5"):
            raise InputError(f"{option('stream', True)} reads .h5ad files, .zarr stores and scDeepCluster .h5 "
                             f"files; {path} is none of them (convert it to .h5ad, or run without "
                             f"{option('stream', True)}).")
        if layer is not None and fmt == "h5":
            raise InputError(f"{option('layer')} applies to .h5ad files and .zarr stores only.")
        if fmt == "zarr":
            import zarr

            self._root = zarr.open_group(path, mode="r")
        else:
            import h5py

            try:
                self._root = h5py.File(path, "r")
            except OSError as exc:
                raise InputError(f"{path} could not be read as HDF5 ({exc}).") from None
        self.format = fmt
        node = self._matrix_node(layer)
        if hasattr(node, "keys"):  # a sparse group
            enc = node.attrs.get("encoding-type", "csr_matrix")
            enc = enc.decode() if isinstance(enc, bytes) else str(enc)
            if enc != "csr_matrix":
                raise InputError(f"the counts in {path} are stored as {enc}; streaming reads cells by rows, so "
                                 "store them as CSR (anndata: adata.X = scipy.sparse.csr_matrix(adata.X)).")
            self._indptr = np.asarray(node["indptr"][()], np.int64)
            self._data, self._indices = node["data"], node["indices"]
            shape = node.attrs.get("shape", None)
            if shape is None and "shape" in node:
                shape = node["shape"][()]
            self.shape = tuple(int(v) for v in shape)
            self.sparse = True
        else:
            self._dense = node
            self.shape = tuple(int(v) for v in node.shape)
            self.sparse = False
        if len(self.shape) != 2:
            raise InputError(f"the counts in {path} must be a 2-D cells x genes matrix, got shape {self.shape}.")
        self._keys = (label_key, batch_key, layer)

    @functools.cached_property
    def annotations(self) -> CountData:
        """The labels, batches and names (read on first use: deciding whether to stream needs only
        the matrix's size)."""
        return self._annotations(*self._keys)

    @property
    def n_cells(self) -> int:
        return self.shape[0]

    @property
    def n_genes(self) -> int:
        return self.shape[1]

    def nbytes_in_memory(self) -> int:
        """Bytes the counts would take read whole (CSR: 8 a non-zero; dense: 4 a value)."""
        return 8 * int(self._indptr[-1]) if self.sparse else 4 * self.n_cells * self.n_genes

    def _matrix_node(self, layer):
        root = self._root
        if self.format == "h5":
            if "X" not in root:
                raise InputError(f"{self.path} has no dataset 'X'.")
            return root["X"]
        if layer is None:
            key = "X"
        elif layer == "raw":
            key = "raw/X"
        else:
            key = f"layers/{layer}"
        try:
            return root[key]
        except KeyError:
            raise InputError(f"{self.path} has no {key!r} for {option('layer', layer)}.") from None

    def _annotations(self, label_key, batch_key, layer) -> CountData:
        n = self.n_cells
        empty = np.zeros((n, 0), np.float32)
        if self.format == "h5":
            return self._h5_annotations(empty, label_key, batch_key)
        from anndata.io import read_elem

        obs = read_elem(self._root["obs"])
        var = read_elem(self._root["raw/var" if layer == "raw" else "var"])
        if len(obs) != n or len(var) != self.shape[1]:
            raise InputError(f"{self.path}: .obs has {len(obs)} rows and .var {len(var)}, but the counts are "
                             f"{n} x {self.shape[1]}.")
        return CountData(X=empty, **obs_annotations(obs, label_key, batch_key, self.path),
                         gene_names=np.asarray(var.index.astype(str)), cell_names=np.asarray(obs.index.astype(str)),
                         source=self.path)

    def _h5_annotations(self, empty, label_key, batch_key) -> CountData:
        f = self._root
        labels = names = batch = batch_names = None
        y = self._per_cell(label_key or ("Y" if "Y" in f else None), "labels")
        if y is not None:
            labels, names = encode_labels(y, f["cell_types"][()] if "cell_types" in f else None,
                                          what=f"labels '{label_key or 'Y'}'")
        bkey = batch_key or ("B" if "B" in f else None)
        b = self._per_cell(bkey, "batches")
        if b is not None:
            if np.ndim(b) == 2:
                batch, batch_names = check_one_hot(b), [str(i) for i in range(b.shape[1])]
            else:
                batch, batch_names = one_hot_from_labels(b, what=f"batch '{bkey}'")
        return CountData(X=empty, labels=labels, label_names=names, batch=batch, batch_names=batch_names,
                         source=self.path)

    def _per_cell(self, key: str | None, what: str):
        """The .h5 dataset ``key`` (one entry a cell), or None without a key."""
        if key is None:
            return None
        if key not in self._root:
            raise InputError(f"{self.path} has no dataset '{key}' to use as {what}.")
        v = self._root[key][()]
        if len(v) != self.n_cells:
            raise InputError(f"{what} '{key}' in {self.path} have {len(v)} entries for {self.n_cells} cells.")
        return v

    def rows(self, start: int, stop: int):
        """The counts of cells ``start .. stop - 1``: CSR float32 (sparse store) or dense float32."""
        if self.sparse:
            a, b = int(self._indptr[start]), int(self._indptr[stop])
            indptr = self._indptr[start:stop + 1] - a
            return sp.csr_matrix((np.asarray(self._data[a:b], np.float32), np.asarray(self._indices[a:b], np.int32),
                                  indptr), shape=(stop - start, self.shape[1]))
        return np.asarray(self._dense[start:stop], np.float32)

    def blocks(self, block: int = BLOCK_CELLS):
        """``(start, stop)`` of the row blocks in file order."""
        return [(s, min(s + block, self.n_cells)) for s in range(0, self.n_cells, block)]

    def close(self) -> None:
        if hasattr(self._root, "close"):
            self._root.close()


@dataclass
class StreamPrepared:
    """What :func:`scdc_jax.preprocess.prepare` gives, without the counts (read again per block).

    cells, genes : kept cells / genes (indices into the store); totals : (n_kept,) row totals over
    the kept genes; size_factors, norm : as in ``Prepared``; max_row_nnz : most non-zero kept genes
    of any kept cell (the width of padded sparse rows); data : the kept cells' labels, batches and
    names, and the kept genes' names (a :class:`~scdc_jax.io.CountData` without counts).
    """

    cells: np.ndarray
    genes: np.ndarray
    totals: np.ndarray
    size_factors: np.ndarray
    norm: dict
    max_row_nnz: int
    data: CountData

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.cells), len(self.genes)


def _clean(block):
    """A block's counts as read for training: CSR with duplicates summed and explicit zeros dropped."""
    if sp.issparse(block):
        block = block.tocsr()
        block.sum_duplicates()
        block.eliminate_zeros()
    return block


def stream_prepare(store: CellStore, *, select_genes_n: int = 0, block: int = BLOCK_CELLS,
                   progress=None) -> StreamPrepared:
    """The preprocessing of :func:`scdc_jax.preprocess.prepare`, in passes over ``store``'s blocks.

    Pass 1 (only with gene selection): per-gene detection and mean log2 of the non-zero counts,
    for the zero-rate rule.  Pass 2: validation (non-negative, finite, integer counts) and the
    gene and cell totals over the selected genes.  Pass 3: per-gene mean and spread of the
    size-normalised log counts of the kept cells, and the longest kept row.  ``progress(msg)``
    (optional) is told when each pass starts.
    """
    say = progress or (lambda msg: None)
    store.annotations  # a wrong label or batch key is refused before the passes
    n, g = store.shape
    spans = store.blocks(block)
    mine = distributed.my_share(spans)  # with several processes each reads its share of the blocks
    genes = np.arange(g)
    if select_genes_n:
        if select_genes_n > g:
            raise InputError(f"{option('select_genes', select_genes_n)} is larger than the number of genes ({g}).")
        say(f"streaming pass 1/3 over {n} cells: gene selection statistics")
        detected, logsum = np.zeros(g), np.zeros(g)
        for a, b in mine:
            d, s = detection_stats(_clean(store.rows(a, b)))
            detected += d
            logsum += s
        detected, logsum = distributed.sum_over_processes(np.stack([detected, logsum]))
        genes = np.flatnonzero(select_genes_from_stats(detected, logsum, n, select_genes_n))
    say(f"streaming pass 2/3 over {n} cells: validation and totals")
    gene_tot = np.zeros(len(genes))
    cell_tot = np.zeros(n)

    def totals_pass():
        for a, b in mine:
            x = store.rows(a, b)
            check_counts(x, require_integer=True, what=f"the counts in {store.path}")
            x = x[:, genes] if len(genes) < g else x
            gene_tot[:] += np.asarray(x.sum(0), np.float64).ravel()
            cell_tot[a:b] = np.asarray(x.sum(1), np.float64).ravel()

    distributed.agree(totals_pass)  # bad counts in one process's share stop every process
    gene_tot = distributed.sum_over_processes(gene_tot)
    cell_tot = distributed.sum_over_processes(cell_tot)  # each cell's total comes from one process
    if not np.any(cell_tot > 0):
        raise InputError(f"the counts in {store.path} are all zeros.")
    keep_g = np.flatnonzero(gene_tot > 0)
    genes = genes[keep_g]
    cells = np.flatnonzero(cell_tot > 0)
    totals = cell_tot[cells]
    median = float(np.median(totals))
    say(f"streaming pass 3/3 over {len(cells)} cells: normalisation statistics")
    stats, widest = LogStats(len(genes)), 0
    for a, b in mine:
        keep = cells[(cells >= a) & (cells < b)]
        if not len(keep):
            continue
        x = _clean(store.rows(a, b)[keep - a][:, genes])
        stats.add(x, median / cell_tot[keep])
        if sp.issparse(x):
            widest = max(widest, int(np.diff(x.indptr).max()))
    parts = distributed.gather(np.concatenate([[stats.count, widest], stats.mean, stats.m2]))
    if len(parts) > 1:  # the processes' statistics merged in process order
        stats = LogStats(len(genes))
        for p in parts:
            stats.merge(int(p[0]), p[2:2 + len(genes)], p[2 + len(genes):])
        widest = int(parts[:, 1].max())
    mean, std = stats.result()
    if not store.sparse:
        widest = len(genes)
    ann = store.annotations.subset(cells=cells)  # holds no counts: its gene names follow by hand
    ann = replace(ann, gene_names=None if ann.gene_names is None else ann.gene_names[genes])
    return StreamPrepared(cells=cells, genes=genes, totals=totals, size_factors=(totals / median).astype(np.float32),
                          norm={"median_total": median, "mean": mean.astype(np.float32),
                                "std": std.astype(np.float32)}, max_row_nnz=max(widest, 1), data=ann)


def kept_rows(store: CellStore, prep: StreamPrepared, first: int, last: int):
    """Counts of the kept cells ``first .. last - 1`` (positions among the kept cells) over the
    kept genes, read as one contiguous span of the file."""
    idx = prep.cells[first:last]
    if not len(idx):  # none (a process's share of a short last block): no rows, the right kind
        x = store.rows(0, 1)[:0]
    else:
        a, b = int(idx[0]), int(idx[-1]) + 1
        x = store.rows(a, b)[idx - a]
    return _clean(x[:, prep.genes] if len(prep.genes) < store.shape[1] else x)


class Prefetch:
    """Iterate ``fn(item)`` over ``items``, computing up to ``depth`` results ahead on a thread.

    An exception in ``fn`` is raised in the consumer at the item it failed on; leaving the
    iteration early stops the thread.
    """

    _END = object()

    def __init__(self, fn, items, depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(fn, list(items)), daemon=True)
        self._thread.start()

    def _work(self, fn, items):
        for item in items:
            if self._stop.is_set():
                return
            try:
                out = (True, fn(item))
            except BaseException as exc:  # handed to the consumer
                out = (False, exc)
            while not self._stop.is_set():
                try:
                    self._q.put(out, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not out[0]:
                return
        self._q.put((True, self._END))

    def __iter__(self):
        try:
            while True:
                ok, value = self._q.get()
                if not ok:
                    raise value
                if value is self._END:
                    return
                yield value
        finally:
            self._stop.set()


def memory_budget_bytes() -> int:
    """Host memory a run may fill with counts before streaming is chosen: half the physical memory
    (``SCDC_MEMORY_BUDGET_GB`` overrides)."""
    env = os.environ.get("SCDC_MEMORY_BUDGET_GB")
    if env:
        return int(float(env) * 2 ** 30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError):
        return 8 * 2 ** 30
