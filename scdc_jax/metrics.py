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
