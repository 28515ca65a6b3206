"""scanpy-style entry point: ``fit(adata, n_clusters, ...)`` writes results into the AnnData."""
from __future__ import annotations

import numpy as np

from ..io import CountData, from_anndata
from .config import load_config
from .pipeline import ClusterResult, run


def _uns_record(result: ClusterResult, extra: dict | None = None) -> dict:
    """The run as AnnData-writable ``.uns`` entries (arrays and scalars, no None)."""
    h = result.history
    rec: dict = {
        "params": {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in result.config.items()},
        "n_clusters": int(result.centers.shape[0]),
        "centers": result.centers,
        "stop_reason": result.stop_reason,
        "timings": {k: float(v) for k, v in result.timings.items()},
        "pretrain_loss": np.asarray(h.get("pretrain_loss", []), np.float64),
    }
    if h.get("cluster"):
        rec["cluster_loss"] = {k: np.asarray([e[k] for e in h["cluster"]]) for k in ("epoch", "loss", "kl", "zinb", "mmd")
                               if k in h["cluster"][0]}
    if h.get("scores"):
        rec["score_history"] = {k: np.asarray([e[k] for e in h["scores"]])
                                for k in ("epoch", "ari", "nmi", "acc", "delta")}
    if result.scores:
        rec["scores"] = dict(result.scores)
    if result.mixing is not None:
        m = result.mixing
        rec["batch_mixing"] = {"ilisi": m["ilisi"], "knn_mixing": m["knn_mixing"]["observed"],
                               "knn_mixing_expected": m["knn_mixing"]["expected"], "cells": m["cells"]}
    ens = result.ensemble_summary()
    if ens is not None:
        crit = ens["criteria"]
        rec["ensemble"] = {"seeds": np.asarray(ens["seeds"]), "select": ens["select"],
                           "consensus_method": ens["consensus_method"],
                           "representative": ens["representative"], "agreement": ens["agreement"],
                           "pairwise_ari": np.asarray(ens["pairwise_ari"]),
                           "criteria": {k: np.asarray([c[k] for c in crit]) for k in crit[0]
                                        if not isinstance(crit[0][k], str) and crit[0][k] is not None}}
        if ens.get("k_estimate"):
            rec["ensemble"]["louvain_k"] = np.asarray(ens["k_estimate"]["louvain_k"])
    for k, v in (extra or {}).items():
        if v is not None:
            rec[k] = v
    return rec


def write_to_adata(adata, result: ClusterResult, key_added: str = "scdc", extra: dict | None = None, *,
                   obs_key: str | None = None) -> None:
    """``.obs[obs_key]`` (default ``key + '_cluster'``; categorical, NaN for filtered cells),
    ``.obsm['X_'+key]`` (latent), ``.obsm[key+'_q']`` (soft assignments) and ``.uns[key]``
    (parameters, losses, scores); of an ensemble run also ``.obsm[key+'_members']`` (each member's
    labels, -1 for filtered cells) and ``.uns[key]['ensemble']`` (seeds, criteria, agreement); with
    batches ``.uns[key]['batch_mixing']`` (iLISI, kNN mixing and its fully mixed value)."""
    import pandas as pd

    labels = result.full_labels()
    k = result.centers.shape[0]
    adata.obs[obs_key or f"{key_added}_cluster"] = pd.Categorical(
        np.where(labels >= 0, labels.astype(str), None), categories=[str(i) for i in range(k)])
    adata.obsm[f"X_{key_added}"] = result.full_latent()
    q = np.full((result.n_cells_input, k), np.nan, np.float32)
    q[result.cells] = result.q
    adata.obsm[f"{key_added}_q"] = q
    if result.ensemble is not None:
        adata.obsm[f"{key_added}_members"] = result.full_member_labels()
    adata.uns[key_added] = _uns_record(result, extra)


def fit(adata, n_clusters: int | None = None, *, layer: str | None = None, label_key: str | None = None,
        batch_key: str | None = None, key_added: str = "scdc", random_state: int = 0, copy: bool = False,
        config: str | None = None, save_dir: str | None = None, overwrite: bool = False, resume: bool = False,
        verbose: bool = True, **params):
    """Cluster the cells of ``adata`` with scDeepCluster.

    Parameters
    ----------
    adata : AnnData with raw integer counts in ``.X`` (or ``layer``).
    n_clusters : number of clusters; 0 or None estimates it by Louvain on the pretrained latent.
    layer : layer holding the counts, or ``"raw"`` for ``.raw.X``.
    label_key : ``.obs`` column of known labels; ARI/NMI/ACC are then recorded.
    batch_key : ``.obs`` column of batches; switches on the batch-conditioned model.
    key_added : prefix of the fields written.
    random_state : seed of every random choice.
    copy : return a modified copy instead of writing into ``adata``.
    config : TOML file of settings; ``params`` override it (any :class:`ClusterConfig` field).
    save_dir : folder for checkpoints (pretrained autoencoder, final model); none by default.  One
        holding another run is refused unless ``overwrite`` (replace that run once this one has
        finished) or ``resume`` (continue that run: the same data and settings).
    verbose : progress bars of the two training stages (tqdm.auto, so they render in notebooks too);
        False for none.

    Returns
    -------
    None, or the copy when ``copy=True``.  Writes ``.obs[f'{key_added}_cluster']``,
    ``.obsm[f'X_{key_added}']`` (latent, cells x 32), ``.obsm[f'{key_added}_q']`` and
    ``.uns[key_added]`` (``params``, ``n_clusters``, ``centers``, ``pretrain_loss``,
    ``cluster_loss``, ``scores``, ``score_history``, ``timings``).
    """
    adata = adata.copy() if copy else adata
    data: CountData = from_anndata(adata, layer=layer, label_key=label_key, batch_key=batch_key)
    cfg = load_config(config, n_clusters=n_clusters if n_clusters is not None else 0, seed=random_state, **params)
    result = run(data, cfg, save_dir=save_dir, overwrite=overwrite, resume=resume, progress=verbose)
    write_to_adata(adata, result, key_added)
    return adata if copy else None
