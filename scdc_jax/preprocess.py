"""Preprocessing of counts for both methods.

scDeepCluster (REFERENCE.md order): optional gene selection on raw counts, drop zero genes then
zero cells (labels and batches follow the cells), keep raw counts as the loss target, size
factors ``total / median(total)``, and the encoder input ``zscore(log1p(x * median / total))``.

GsRCL: :func:`log_transform` (``log(1 + x)``, its only preprocessing) and
:func:`masking_input` (scanpy's preprocessing for the random-gene-masking baseline).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import InputError, option
from .io import CountData, check_counts


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def detection_stats(X) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: the number of cells with a non-zero count and the sum of log2 of those counts
    (two (n_genes,) float64 arrays; sums over row blocks add up to the whole matrix's)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        X.eliminate_zeros()
        g = X.shape[1]
        return (np.bincount(X.indices, minlength=g).astype(np.float64),
                np.bincount(X.indices, weights=np.log2(X.data.astype(np.float64)), minlength=g))
    detected, logsum = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for rows in _row_chunks(X.shape[0], 4096):
        block = np.asarray(X[rows], dtype=np.float64)
        nz = block > 0
        detected += nz.sum(0)
        logsum += np.log2(np.where(nz, block, 1.0)).sum(0)
    return detected, logsum


def gene_selection_stats(X, *, min_cells: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: fraction of zero cells and mean log2 of the non-zero counts.

    Genes detected in fewer than ``min_cells`` cells get NaN for both (never selected).
    Returns two (n_genes,) float64 arrays.
    """
    return _selection_stats(*detection_stats(X), X.shape[0], min_cells)


def _selection_stats(detected, logsum, n_cells: int, min_cells: int = 10):
    zero_rate = 1.0 - detected / n_cells
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_log2 = logsum / detected
    low = detected < min_cells
    zero_rate[low] = np.nan
    mean_log2[low] = np.nan
    return zero_rate, mean_log2


def select_genes(X, n_genes: int, **rule) -> np.ndarray:
    """Boolean mask of ``n_genes`` genes chosen by the zero-rate / mean-expression rule
    (:func:`select_genes_from_stats`)."""
    if n_genes > X.shape[1]:
        raise InputError(f"{option('select_genes', n_genes)} is larger than the number of genes ({X.shape[1]}).")
    return select_genes_from_stats(*detection_stats(X), X.shape[0], n_genes, **rule)


def select_genes_from_stats(detected: np.ndarray, logsum: np.ndarray, n_cells: int, n_genes: int, *,
                            decay: float = 1.5, y_offset: float = 0.02, max_steps: int = 100) -> np.ndarray:
    """Boolean mask of ``n_genes`` genes from :func:`detection_stats` of ``n_cells`` cells.

    A gene is selected when ``zero_rate > exp(-decay * (mean_log2_nonzero - x0)) + y_offset``;
    ``x0`` is bisected on [0, 10] from 5 (at most ``max_steps`` steps) until exactly ``n_genes``
    are selected (the closest count reached otherwise).
    """
    zero_rate, mean_log2 = _selection_stats(np.asarray(detected, np.float64), np.asarray(logsum, np.float64),
                                            n_cells)
    valid = np.isfinite(zero_rate)
    if valid.sum() < n_genes:
        raise InputError(f"only {int(valid.sum())} genes are detected in at least 10 cells, fewer than "
                         f"{option('select_genes', n_genes)}; ask for fewer genes.")
    low, high, x0 = 0.0, 10.0, 5.0
    for _ in range(max_steps):
        sel = np.zeros(len(zero_rate), bool)
        sel[valid] = zero_rate[valid] > np.exp(-decay * (mean_log2[valid] - x0)) + y_offset
        count = int(sel.sum())
        if count == n_genes:
            break
        if count < n_genes:
            high, x0 = x0, (x0 + low) / 2
        else:
            low, x0 = x0, (x0 + high) / 2
    return sel


@dataclass
class Prepared:
    """Model-ready data for scDeepCluster (cells x genes unless noted).

    raw : filtered raw counts (loss target), float32, dense or CSR as the input was; never
        densified whole here (the encoder input is computed from it per minibatch on the device).
    totals : (n_cells,) float64 cell totals.
    data : the filtered :class:`CountData` (labels, batches, names aligned with the rows).
    cells, genes : integer indices of the kept cells and genes in the input.
    norm : the normalisation statistics ``{"median_total", "mean", "std"}`` (to encode new cells
        exactly as the training cells).
    """

    raw: np.ndarray | sp.csr_matrix
    totals: np.ndarray
    data: CountData
    cells: np.ndarray
    genes: np.ndarray
    norm: dict

    @property
    def shape(self) -> tuple[int, int]:
        return self.raw.shape

    @functools.cached_property
    def size_factors(self) -> np.ndarray:
        """(n_cells,) float32 ``total / median_total`` (see :func:`library_size`)."""
        return library_size(self.totals, self.norm["median_total"])[1]

    @functools.cached_property
    def scale(self) -> np.ndarray:
        """(n_cells,) float32 ``median_total / total`` (see :func:`library_size`)."""
        return library_size(self.totals, self.norm["median_total"])[0]

    @functools.cached_property
    def x(self) -> np.ndarray:
        """The encoder input as one dense float32 host array (for small data and comparisons;
        training computes it per minibatch on the device instead)."""
        return normalise_log_scale(self.raw, self.totals, self.norm)[0]


def library_size(totals: np.ndarray, median_total: float) -> tuple[np.ndarray, np.ndarray]:
    """The library-size normalisation of cells with these ``totals`` (n,), each (n,) float32:
    ``median_total / total``, which scales the encoder input's counts, and the size factors
    ``total / median_total``, which scale the ZINB mean."""
    totals, median = np.asarray(totals, np.float64), float(median_total)
    return (median / totals).astype(np.float32), (totals / median).astype(np.float32)


def _row_totals(raw) -> np.ndarray:
    return np.asarray(raw.sum(1), np.float64).ravel()


def _float32_counts(X):
    """The counts as the loss target: float32, CSR (duplicates summed, zeros dropped; a copy, so
    the caller's matrix is left as it was) or dense as given."""
    if sp.issparse(X):
        raw = X.tocsr().astype(np.float32)
        raw.sum_duplicates()
        raw.eliminate_zeros()
        return raw
    return np.asarray(X, dtype=np.float32)


def _row_chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


class LogStats:
    """Per-gene mean and spread (ddof=1, zero spread -> 1) of ``log1p(raw * scale[:, None])``,
    accumulated over row blocks: each ``chunk`` rows are densified (float64) and merged into the
    running means and squared deviations exactly (Chan et al.), so memory stays at one chunk."""

    def __init__(self, n_genes: int, chunk: int = 4096):
        self.count, self.mean, self.m2, self.chunk = 0, np.zeros(n_genes), np.zeros(n_genes), chunk

    def add(self, raw, scale: np.ndarray) -> None:
        for rows in _row_chunks(raw.shape[0], self.chunk):
            block = np.log1p(_dense(raw[rows]).astype(np.float64) * scale[rows, None])
            mb = block.mean(0)
            self.merge(block.shape[0], mb, ((block - mb) ** 2).sum(0))

    def merge(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Add the statistics of other rows (another accumulator's ``count``, ``mean``, ``m2``)."""
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * count / total)
        self.count = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        std = np.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else np.zeros_like(self.mean)
        std[std == 0] = 1.0
        return self.mean, std


def gene_log_stats(raw, scale: np.ndarray, *, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and spread (ddof=1, zero spread -> 1) of ``log1p(raw * scale[:, None])``,
    ``raw`` dense or CSR, ``chunk`` rows at a time (:class:`LogStats`)."""
    stats = LogStats(raw.shape[1], chunk)
    stats.add(raw, np.asarray(scale, np.float64))
    return stats.result()


def norm_stats(raw, totals: np.ndarray, *, chunk: int = 4096) -> dict:
    """The median row total and the per-gene mean and spread (ddof=1) of the size-normalised log counts."""
    median = float(np.median(totals))
    mean, std = gene_log_stats(raw, median / np.asarray(totals, np.float64), chunk=chunk)
    return {"median_total": median, "mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def normalise_log_scale(raw, totals: np.ndarray, norm: dict | None = None, *, chunk: int = 4096):
    """``zscore(log1p(raw * median(totals) / totals))`` per gene, ddof=1, zero spread -> divisor 1.

    With ``norm`` (a previous call's statistics) the median total and the gene means and spreads
    are reused instead of computed.  ``raw`` is dense or CSR; the float64 work runs ``chunk`` rows
    at a time into the float32 result.  Returns (dense x float32, norm).
    """
    if norm is None:
        norm = norm_stats(raw, totals, chunk=chunk)
    scale = float(norm["median_total"]) / np.asarray(totals, np.float64)
    x = np.empty(raw.shape, np.float32)
    for rows in _row_chunks(raw.shape[0], chunk):
        block = np.log1p(_dense(raw[rows]).astype(np.float64) * scale[rows, None])
        x[rows] = (block - norm["mean"]) / norm["std"]
    return x, norm


def prepare(data: CountData, *, select_genes_n: int = 0) -> Prepared:
    """Run the full preprocessing on validated raw counts (sparse input stays sparse)."""
    check_counts(data.X, require_integer=True)
    genes = np.arange(data.n_genes)
    if select_genes_n:
        genes = np.flatnonzero(select_genes(data.X, select_genes_n))
        data = data.subset(genes=genes)
    gene_tot = np.asarray(data.X.sum(0)).ravel()
    keep_g = np.flatnonzero(gene_tot > 0)
    genes = genes[keep_g]
    # row totals over the kept genes equal those over all genes (the dropped genes hold no counts)
    cell_tot = _row_totals(data.X)
    keep_c = np.flatnonzero(cell_tot > 0)
    if len(keep_g) < data.n_genes or len(keep_c) < data.n_cells:  # copies only when something goes
        data = data.subset(cells=keep_c, genes=keep_g)
    raw = _float32_counts(data.X)
    totals = cell_tot[keep_c]
    return Prepared(raw=raw, totals=totals, data=data, cells=keep_c, genes=genes, norm=norm_stats(raw, totals))


def prepare_query(data: CountData, norm: dict) -> Prepared:
    """New cells (their genes already the model's) prepared as the training cells were: cells
    without counts dropped (``cells`` lists the others), counts as the loss target, and the
    training statistics ``norm`` (of :func:`prepare`) for the library size and the gene scaling."""
    totals = _row_totals(data.X)
    keep = np.flatnonzero(totals > 0)
    if len(keep) < data.n_cells:
        data = data.subset(cells=keep)
    return Prepared(raw=_float32_counts(data.X), totals=totals[keep], data=data, cells=keep,
                    genes=np.arange(data.n_genes), norm=norm)


def log_transform(X) -> np.ndarray:
    """Dense float32 ``log(x + 1)`` of a (cells, genes) count matrix (dense or sparse)."""
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    return np.log1p(X.astype(np.float32))


def masking_input(X, n_top_genes: int) -> np.ndarray:
    """The masking baseline's input: scanpy's preprocessing (genes seen in no cell dropped,
    per-cell normalisation to the median total, log1p, the ``n_top_genes`` most variable genes,
    scaling to unit variance without clipping, as the reference) of the counts ``X`` (cells,
    genes).  Every cell is kept, so the splits stay those of the task.  With ``n_top_genes = 0``:
    ``log(1 + x)``."""
    if not n_top_genes:
        return log_transform(X)
    import anndata
    import scanpy as sc

    ad = anndata.AnnData(X.astype(np.float32) if sp.issparse(X) else np.asarray(X, np.float32))
    sc.pp.filter_genes(ad, min_cells=1)
    if n_top_genes >= ad.n_vars:
        raise InputError(f"{option('n_top_genes', n_top_genes)} is not below the {ad.n_vars} expressed genes; "
                         "choose fewer.")
    sc.pp.normalize_total(ad)
    sc.pp.log1p(ad)
    sc.pp.highly_variable_genes(ad, n_top_genes=n_top_genes, subset=True)
    sc.pp.scale(ad)
    return np.asarray(ad.X, np.float32)
