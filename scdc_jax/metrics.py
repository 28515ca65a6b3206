"""Clustering and classification metrics with the conventions of the references."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm


def contingency(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true classes (t,), clusters (c,), counts (t, c)): cell ``[i, j]`` counts the cells of
    class ``i`` put in cluster ``j``."""
    classes, t = np.unique(np.asarray(y_true), return_inverse=True)
    clusters, p = np.unique(np.asarray(y_pred), return_inverse=True)
    table = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    return classes, clusters, table


def match_clusters(y_true, y_pred) -> dict:
    """The one-to-one matching of classes to clusters sharing the most cells (Hungarian, on the
    contingency table): ``{class: cluster}``.  With more classes than clusters (or the reverse)
    the classes (clusters) left over are absent from the matching.

    >>> match_clusters(["a", "a", "b", "c"], [1, 1, 0, 0])
    {'a': 1, 'b': 0}
    """
    classes, clusters, table = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    return {classes[i].item(): clusters[j].item() for i, j in zip(rows, cols)}


def cluster_acc(y_true, y_pred) -> float:
    """Accuracy after the best one-to-one matching of clusters to labels (Hungarian)."""
    _, _, table = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def clustering_scores(y_true, y_pred) -> dict[str, float]:
    """ARI, NMI (arithmetic averaging) and ACC."""
    return {
        "ari": float(skm.adjusted_rand_score(y_true, y_pred)),
        "nmi": float(skm.normalized_mutual_info_score(y_true, y_pred, average_method="arithmetic")),
        "acc": cluster_acc(y_true, y_pred),
    }


def binary_scores(y_true, y_pred, y_score) -> dict[str, float]:
    """MCC and F1 from predictions, average precision from scores (positive class 1)."""
    return {
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0)),
        "ap": float(skm.average_precision_score(y_true, y_score)),
    }


# ---- batch mixing ---------------------------------------------------------------------------------

def _neighbours(latent, k: int):
    """(n, k) indices and squared distances of each row's k nearest other rows (Euclidean)."""
    from sklearn.neighbors import NearestNeighbors

    latent = np.asarray(latent, np.float64)
    k = min(k, len(latent) - 1)
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)
    return idx[:, 1:], dist[:, 1:] ** 2  # the first neighbour of a row is itself


def knn_mixing(latent, batch, *, k: int = 30, groups=None, neighbours=None) -> dict[str, float]:
    """How well batches mix among each cell's ``k`` nearest neighbours in ``latent``.

    ``observed``: the mean fraction of a cell's neighbours from another batch.  ``expected``: that
    fraction were the neighbours drawn at random from the other cells (of the cell's group, when
    ``groups`` such as clusters or cell types are given, so that batches holding different cell
    types are not asked to mix).  ``ratio``: observed / expected, about 1 when fully mixed and 0
    when the batches lie apart (None when no cell has another batch to mix with).  ``neighbours``:
    the (indices, squared distances) of :func:`_neighbours` for at least ``k``, if known.
    """
    batch = np.asarray(batch)
    idx = (neighbours or _neighbours(latent, k))[0][:, :k]
    observed = float(np.mean(batch[idx] != batch[:, None]))
    groups = np.zeros(len(batch), np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    _, pair = np.unique(np.stack([groups, np.unique(batch, return_inverse=True)[1]]), axis=1, return_inverse=True)
    n_group = np.bincount(groups)[groups]
    n_same = np.bincount(pair.ravel())[pair.ravel()]
    other = np.where(n_group > 1, (n_group - n_same) / np.maximum(n_group - 1, 1), 0.0)
    expected = float(other.mean())
    return {"observed": observed, "expected": expected, "ratio": observed / expected if expected > 0 else None,
            "k": int(idx.shape[1])}


def ilisi(latent, batch, *, perplexity: float = 30.0, neighbours=None) -> float:
    """Mean integration LISI (Korsunsky et al. 2019) of ``batch`` in ``latent``: the effective
    number of batches around a cell, the inverse Simpson index of the batches among its
    ``3 * perplexity`` nearest neighbours weighted by a Gaussian whose width gives that
    perplexity.  1 when every neighbourhood holds one batch, up to the number of batches.
    ``neighbours`` as for :func:`knn_mixing`."""
    batch = np.unique(np.asarray(batch), return_inverse=True)[1]
    k = int(3 * perplexity)
    idx, d2 = neighbours or _neighbours(latent, k)
    idx, d2 = idx[:, :k], d2[:, :k]
    target = np.log(min(perplexity, idx.shape[1]))
    beta = np.ones(len(idx))
    lo, hi = np.zeros(len(idx)), np.full(len(idx), np.inf)
    d2 = d2 - d2[:, :1]  # shift by the nearest distance: the weights are unchanged and exp() cannot underflow
    for _ in range(60):  # bisection on beta per cell, as the published LISI does
        w = np.exp(-d2 * beta[:, None])
        total = w.sum(1)
        p = w / total[:, None]
        entropy = np.log(total) + beta * (d2 * p).sum(1)
        high = entropy > target  # too flat: sharpen
        lo = np.where(high, beta, lo)
        hi = np.where(high, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    share = np.zeros((len(idx), batch.max() + 1))
    np.add.at(share, (np.repeat(np.arange(len(idx)), idx.shape[1]), batch[idx].ravel()), p.ravel())
    return float(np.mean(1.0 / (share ** 2).sum(1)))


def batch_mixing(latent, batch, *, groups=None, k: int = 30, perplexity: float = 30.0, max_cells: int = 20000,
                 seed: int = 0) -> dict:
    """kNN mixing (:func:`knn_mixing`, within ``groups`` when given) and iLISI (:func:`ilisi`) of
    ``batch`` in ``latent``, on at most ``max_cells`` cells drawn at random (``seed``)."""
    latent, batch = np.asarray(latent), np.asarray(batch)
    n = len(batch)
    keep = np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False)) if n > max_cells else np.arange(n)
    g = None if groups is None else np.asarray(groups)[keep]
    near = _neighbours(latent[keep], max(k, int(3 * perplexity)))  # one search for both
    return {"knn_mixing": knn_mixing(latent[keep], batch[keep], k=k, groups=g, neighbours=near),
            "ilisi": ilisi(latent[keep], batch[keep], perplexity=perplexity, neighbours=near),
            "n_batches": int(len(np.unique(batch))), "cells": int(len(keep))}
