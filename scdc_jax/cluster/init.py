"""Initial clusters on the pretrained latent space: k-means, or Louvain/Leiden on a kNN graph."""
from __future__ import annotations

import random

import numpy as np

from ..errors import InputError, option


def kmeans(z: np.ndarray, n_clusters: int, *, n_init: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means with ``n_init`` restarts; returns (centres (k, d), labels (n,))."""
    from sklearn.cluster import KMeans

    if n_clusters > z.shape[0]:
        raise InputError(f"{option('n_clusters', n_clusters)} is more than the {z.shape[0]} cells left after filtering.")
    km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(np.asarray(z, np.float64))
    return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)


def kmeans_some(z: np.ndarray, n_clusters: int, some: np.ndarray, *, n_init: int = 20, seed: int = 0):
    """:func:`kmeans` on the rows ``some`` of ``z`` (from :func:`subsample`); when they are not all
    rows, every row then takes its nearest centre.  Returns (centres (k, d), labels of all rows (n,))."""
    c, labels = kmeans(z[some], n_clusters, n_init=n_init, seed=seed)
    return c, (nearest_centre(z, c) if len(some) < z.shape[0] else labels)


def knn_connectivities(z: np.ndarray, knn: int, *, seed: int = 0):
    """Symmetric (n, n) sparse UMAP connectivities of the ``knn`` nearest neighbours (scanpy's)."""
    import anndata
    import scanpy as sc

    if knn >= z.shape[0]:
        raise InputError(f"{option('knn', knn)} must be smaller than the number of cells ({z.shape[0]}).")
    ad = anndata.AnnData(np.asarray(z, np.float32))
    sc.pp.neighbors(ad, n_neighbors=knn, use_rep="X", random_state=seed)
    return ad.obsp["connectivities"]


def knn_graph(z: np.ndarray, knn: int, *, seed: int = 0):
    """The weighted igraph ``Graph`` of :func:`knn_connectivities` (one undirected edge per pair)."""
    import igraph as ig

    conn = knn_connectivities(z, knn, seed=seed).tocoo()
    upper = conn.row < conn.col
    g = ig.Graph(n=z.shape[0], edges=list(zip(conn.row[upper].tolist(), conn.col[upper].tolist())))
    g.es["weight"] = conn.data[upper].tolist()
    return g


def communities(g, *, resolution: float = 0.8, method: str = "louvain", seed: int = 0) -> np.ndarray:
    """Louvain (igraph multilevel) or Leiden (leidenalg) communities of the weighted graph ``g``,
    relabelled 0..k-1 by decreasing size."""
    if method == "leiden":
        import leidenalg

        part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights="weight",
                                        resolution_parameter=resolution, seed=seed)
        membership = np.asarray(part.membership)
    else:
        state = random.getstate()
        random.seed(seed)  # igraph draws from Python's `random` module
        try:
            membership = np.asarray(g.community_multilevel(weights="weight", resolution=resolution).membership)
        finally:
            random.setstate(state)
    return by_size(membership)


def community_labels(z: np.ndarray, *, knn: int = 20, resolution: float = 0.8, method: str = "louvain",
                     seed: int = 0) -> np.ndarray:
    """:func:`communities` of the ``knn``-nearest-neighbour graph of ``z`` (:func:`knn_graph`)."""
    return communities(knn_graph(z, knn, seed=seed), resolution=resolution, method=method, seed=seed)


def by_size(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k'-1 by decreasing cluster size (ties in label order; unused labels dropped)."""
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    return rank[inverse.reshape(-1)].astype(np.int64)


def centres_of(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-cluster means (k, d) of ``z`` for labels 0..k-1."""
    k = int(labels.max()) + 1
    sums = np.zeros((k, z.shape[1]), np.float64)
    np.add.at(sums, labels, z)
    return (sums / np.bincount(labels, minlength=k)[:, None]).astype(np.float32)


def nearest_centre(z: np.ndarray, centres: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """Index (n,) of the nearest of ``centres`` (k, d) for each row of ``z`` (n, d), ``chunk`` rows
    at a time (squared distances as ``|c|^2 - 2 z.c``, float64)."""
    c = np.asarray(centres, np.float64)
    c2 = (c ** 2).sum(1)
    out = np.empty(z.shape[0], np.int64)
    for a in range(0, z.shape[0], chunk):
        out[a:a + chunk] = np.argmin(c2 - 2.0 * np.asarray(z[a:a + chunk], np.float64) @ c.T, axis=1)
    return out


def subsample(n: int, size: int, seed: int) -> np.ndarray:
    """``size`` of ``n`` cells drawn without replacement (sorted), or all cells when ``size`` is 0 or
    at least ``n``."""
    if not size or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 17]).choice(n, size, replace=False))
