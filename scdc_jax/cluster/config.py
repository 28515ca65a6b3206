"""scDeepCluster configuration: one dataclass with the published defaults, loadable from TOML.

Run with the published settings::

    python -m scdc_jax.cluster --config configs/scdeepcluster_paper.toml --data-file data.h5
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..configfile import load_dataclass_config
from ..errors import InputError, option

# the values each option of few values takes (the command line's choices, checked by validate)
CHOICES = {"community": ("louvain", "leiden"), "precision": ("f32", "bf16"),
           "ensemble_select": ("consensus", "agreement", "silhouette", "zinb"),
           "consensus": ("vote", "average", "kmeans"), "ensemble_init": ("joint", "consensus", "member"),
           "k_estimate": ("louvain", "stability", "resolution"), "init_from": ("communities", "kmeans")}


@dataclass
class ClusterConfig:
    """Settings of one scDeepCluster run (the published defaults); flags of the CLI override them.

    ``precision``: ``"f32"`` (default) or ``"bf16"``, the autoencoder's Dense layers computed in
    bfloat16 with float32 parameters, optimiser state, ZINB likelihood, soft assignments and
    latent.  bf16 pays off on GPUs; on CPUs it is usually slower (emulated).  A saved model
    records it, so ``predict`` rebuilds the same network.

    ``init_cells``: the initial clusters (k-means, or Louvain/Leiden) are found on this many cells
    drawn at random (``seed``), and every other cell starts in its nearest centre's cluster; 0
    (default) uses every cell, as the reference does.  For millions of cells.

    ``ensemble``: train this many models (seeds ``seed``, ``seed + 1``, ...) side by side as one
    vmapped program and return their consensus (``ensemble_select = "consensus"``, made by
    ``consensus``: ``"vote"``, ``"average"`` or ``"kmeans"``, see
    :func:`scdc_jax.cluster.ensemble.consensus_labels`) or the best
    member by a label-free criterion (``"agreement"``, ``"silhouette"``, ``"zinb"``); with
    ``n_clusters = 0`` the members share one estimated number of clusters, ``k_estimate``
    ``"louvain"`` (median of the members' Louvain counts), ``"stability"`` (the k whose k-means
    labelings agree most between the members) or ``"resolution"`` (the members' Louvain counts
    at the resolution whose communities agree most between them).  ``ensemble_init``: the
    members' DEC stage starts from k-means on their latent spaces side by side (``"joint"``,
    default) or from the vote of their k-means partitions (``"consensus"``), each member from that
    partition's centres in its own latent space, or each from its own k-means (``"member"``: every
    member then trains as the single run of its seed).  See :mod:`scdc_jax.cluster.ensemble`.

    ``init_from``: with ``n_clusters = 0``, where a single run's DEC stage starts: the centres of
    the Louvain/Leiden communities (``"communities"``, the published start) or k-means with their
    number of clusters (``"kmeans"``, as a run given that number starts).

    ``batch_mmd``: with batches, add this weight times the maximum mean discrepancy between the
    batches within each cluster of a minibatch (clean latent space, clusters weighted by the
    DEC target) to the clustering stage's loss (:func:`scdc_jax.losses.batch_mmd`), pulling a
    cluster's cells together across batches that the batch-conditioned model alone leaves
    apart; 0 (default) is the published model.
    """

    n_clusters: int = 0
    knn: int = 20
    resolution: float = 0.8
    community: str = "louvain"
    select_genes: int = 0
    batch_size: int = 256
    maxiter: int = 2000
    pretrain_epochs: int = 300
    gamma: float = 1.0
    sigma: float = 2.5
    update_interval: int = 1
    tol: float = 0.001
    lr_pretrain: float = 1e-3
    lr_cluster: float = 1.0
    alpha: float = 1.0
    ridge_lambda: float = 0.0
    kmeans_n_init: int = 20
    encoder: list[int] = field(default_factory=lambda: [256, 64])
    latent: int = 32
    decoder: list[int] = field(default_factory=lambda: [64, 256])
    seed: int = 0
    checkpoint_every: int = 25
    devices: int = 1
    precision: str = "f32"
    init_cells: int = 0
    ensemble: int = 1
    ensemble_select: str = "consensus"
    consensus: str = "vote"
    ensemble_init: str = "joint"
    k_estimate: str = "louvain"
    init_from: str = "communities"
    batch_mmd: float = 0.0

    def validate(self) -> "ClusterConfig":
        positive = ("batch_size", "maxiter", "pretrain_epochs", "sigma", "tol", "update_interval",
                    "knn", "resolution", "lr_pretrain", "lr_cluster", "alpha", "kmeans_n_init",
                    "latent", "checkpoint_every", "devices", "ensemble")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"{option(f.name)} must be a finite number, got {value}.")
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise InputError(f"{option(name)} must be positive, got {value}.")
        if self.tol > 1:
            raise InputError(f"{option('tol')} is the fraction of cells changing cluster below which the clustering "
                             f"stops, so it must lie in (0, 1]; got {self.tol}.")
        for name in ("n_clusters", "select_genes", "gamma", "ridge_lambda", "init_cells", "batch_mmd"):
            if getattr(self, name) < 0:
                raise InputError(f"{option(name)} must be zero or positive, got {getattr(self, name)}.")
        if self.n_clusters == 1:
            raise InputError(f"{option('n_clusters', 1)} makes no clustering; give 2 or more, or 0 to estimate it.")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" or '{allowed[-1]}'"
                raise InputError(f"{option(name)} must be {listed}, got '{value}'.")
        if self.k_estimate != "louvain" and self.ensemble < 2:
            raise InputError(f"{option('k_estimate', self.k_estimate)} compares the members of an ensemble; give "
                             f"{option('ensemble')} 2 or more.")
        if self.init_from != "communities" and self.n_clusters > 0:
            raise InputError(f"{option('init_from', self.init_from)} applies with {option('n_clusters', 0)}; a run "
                             "given the number of clusters always starts from k-means.")
        if self.init_from != "communities" and self.ensemble > 1:
            raise InputError(f"{option('init_from', self.init_from)} applies to single runs; the members of an "
                             f"ensemble start as {option('ensemble_init')} says.")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | None, **overrides) -> ClusterConfig:
    """Defaults, then the TOML file's values, then the non-None ``overrides``."""
    return load_dataclass_config(ClusterConfig, path, "scdeepcluster", overrides)
