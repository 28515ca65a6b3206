"""scDeepCluster preprocessing: gene selection, filtering, size factors, normalise/log/z-score.

Order (REFERENCE.md): optional gene selection on raw counts, drop zero genes then zero cells
(labels and batches follow the cells), keep raw counts as the loss target, size factors
``total / median(total)``, and the encoder input ``zscore(log1p(x * median / total))``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import InputError
from .io import CountData, check_counts


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def gene_selection_stats(X, *, min_cells: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: fraction of zero cells and mean log2 of the non-zero counts.

    Genes detected in fewer than ``min_cells`` cells get NaN for both (never selected).
    Returns two (n_genes,) float64 arrays.
    """
    n = X.shape[0]
    if sp.issparse(X):
        Xc = sp.csc_matrix(X)
        Xc.eliminate_zeros()
        detected = np.diff(Xc.indptr).astype(np.float64)
        logsum = np.asarray(sp.csc_matrix((np.log2(Xc.data.astype(np.float64)), Xc.indices, Xc.indptr),
                                          shape=Xc.shape).sum(0)).ravel()
    else:
        Xd = np.asarray(X, dtype=np.float64)
        nz = Xd > 0
        detected = nz.sum(0).astype(np.float64)
        logsum = np.where(nz, np.log2(np.where(nz, Xd, 1.0)), 0.0).sum(0)
    zero_rate = 1.0 - detected / n
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_log2 = logsum / detected
    low = detected < min_cells
    zero_rate[low] = np.nan
    mean_log2[low] = np.nan
    return zero_rate, mean_log2


def select_genes(X, n_genes: int, *, decay: float = 1.5, y_offset: float = 0.02,
                 max_steps: int = 100) -> np.ndarray:
    """Boolean mask of ``n_genes`` genes chosen by the zero-rate / mean-expression rule.

    A gene is selected when ``zero_rate > exp(-decay * (mean_log2_nonzero - x0)) + y_offset``;
    ``x0`` is bisected on [0, 10] from 5 (at most ``max_steps`` steps) until exactly ``n_genes``
    are selected (the closest count reached otherwise).
    """
    if n_genes > X.shape[1]:
        raise InputError(f"--select-genes {n_genes} is larger than the number of genes ({X.shape[1]}).")
    zero_rate, mean_log2 = gene_selection_stats(X)
    valid = np.isfinite(zero_rate)
    if valid.sum() < n_genes:
        raise InputError(f"only {int(valid.sum())} genes are detected in at least 10 cells, fewer than "
                         f"--select-genes {n_genes}; ask for fewer genes.")
    low, high, x0 = 0.0, 10.0, 5.0
    for _ in range(max_steps):
        sel = np.zeros(X.shape[1], bool)
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
    """Model-ready arrays for scDeepCluster (all float32, cells x genes unless noted).

    x : z-scored log-normalised expression (encoder input).
    raw : filtered raw counts (loss target).
    size_factors : (n_cells,) ``total / median(total)``.
    data : the filtered :class:`CountData` (labels, batches, names aligned with the rows).
    cells, genes : integer indices of the kept cells and genes in the input.
    norm : the normalisation statistics ``{"median_total", "mean", "std"}`` (to encode new cells
        exactly as the training cells).
    """

    x: np.ndarray
    raw: np.ndarray
    size_factors: np.ndarray
    data: CountData
    cells: np.ndarray
    genes: np.ndarray
    norm: dict


def normalise_log_scale(raw: np.ndarray, totals: np.ndarray, norm: dict | None = None):
    """``zscore(log1p(raw * median(totals) / totals))`` per gene, ddof=1, zero spread -> divisor 1.

    With ``norm`` (a previous call's statistics) the median total and the gene means and spreads
    are reused instead of computed.  Returns (x float32, norm).
    """
    median = float(np.median(totals)) if norm is None else float(norm["median_total"])
    x = np.log1p(raw * (median / totals)[:, None])
    if norm is None:
        mean = x.mean(0)
        std = x.std(0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])
        std[std == 0] = 1.0
        norm = {"median_total": median, "mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    return ((x - norm["mean"]) / norm["std"]).astype(np.float32), norm


def prepare(data: CountData, *, select_genes_n: int = 0) -> Prepared:
    """Run the full preprocessing on validated raw counts."""
    check_counts(data.X, require_integer=True)
    genes = np.arange(data.n_genes)
    if select_genes_n:
        genes = np.flatnonzero(select_genes(data.X, select_genes_n))
        data = data.subset(genes=genes)
    X = data.X
    gene_tot = np.asarray(X.sum(0)).ravel()
    keep_g = np.flatnonzero(gene_tot > 0)
    genes = genes[keep_g]
    X = X[:, keep_g]
    cell_tot = np.asarray(X.sum(1)).ravel()
    keep_c = np.flatnonzero(cell_tot > 0)
    data = data.subset(cells=keep_c, genes=keep_g)
    raw = _dense(data.X).astype(np.float32)
    totals = cell_tot[keep_c].astype(np.float64)
    sf = (totals / np.median(totals)).astype(np.float32)
    x, norm = normalise_log_scale(raw, totals)
    return Prepared(x=x, raw=raw, size_factors=sf, data=data, cells=keep_c, genes=genes, norm=norm)
