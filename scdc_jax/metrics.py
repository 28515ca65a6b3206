"""Clustering and classification metrics with the conventions of the references."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm


def cluster_acc(y_true, y_pred) -> float:
    """Accuracy after the best one-to-one matching of clusters to labels (Hungarian)."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = np.asarray(y_pred).astype(np.int64)
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    w = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(w, (p, t), 1)
    rows, cols = linear_sum_assignment(-w)
    return float(w[rows, cols].sum() / len(y_true))


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
