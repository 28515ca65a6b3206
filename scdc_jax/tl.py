"""scanpy-style tools: ``scdc_jax.tl.scdeepcluster`` and ``scdc_jax.tl.gsrcl_annotate``.

As ``sc.tl.*``: ``adata`` first, the main parameters next, keyword-only options after ``*``;
results go to ``.obs[key_added]`` (categorical), ``.obsm["X_" + key_added]`` and
``.uns[key_added]["params"]``; ``copy=True`` returns a modified copy and leaves ``adata`` alone.
"""
from __future__ import annotations

import os
import warnings

import numpy as np


def scdeepcluster(adata, n_clusters: int | None = None, *, layer: str | None = None,
                  batch_key: str | None = None, key_added: str = "scdeepcluster", random_state: int = 0,
                  copy: bool = False, verbose: bool = True, **params):
    """Cluster the cells with scDeepCluster (ZINB autoencoder + deep embedded clustering).

    Parameters
    ----------
    adata : AnnData
        Raw integer counts in ``.X`` or ``layer``.
    n_clusters : int, optional
        Number of clusters; None or 0 estimates it by Louvain on the pretrained latent space.
    layer : str, optional
        Layer holding the counts, ``"raw"`` for ``.raw.X``.
    batch_key : str, optional
        ``.obs`` column of batches; switches on the batch-conditioned model.
    key_added : str
        Name of the fields written.
    random_state : int
        Seed of every random choice.
    copy : bool
        Return a modified copy instead of writing into ``adata``.
    verbose : bool
        Progress bars of the two training stages (tqdm.auto, so they render in notebooks too).
    **params
        Any :class:`~scdc_jax.cluster.ClusterConfig` field (``pretrain_epochs``, ``maxiter``, ...).

    Returns
    -------
    None, or the modified copy with ``copy=True``.  Writes

    ``.obs[key_added]``
        cluster of each cell (categorical ``"0"``, ``"1"``, ...; NaN for cells without counts);
    ``.obsm["X_" + key_added]``
        latent coordinates (n_cells, latent), NaN rows for cells without counts;
    ``.obsm[key_added + "_q"]``
        soft assignments to the clusters (n_cells, n_clusters);
    ``.uns[key_added]``
        ``params`` (the configuration, and ``layer`` and ``batch_key`` when given),
        ``n_clusters``, ``centers``, ``pretrain_loss``, ``cluster_loss``, ``stop_reason``, ``timings``.

    The model is not kept; :class:`~scdc_jax.cluster.SCDeepCluster` keeps it, encodes new cells
    and saves.
    """
    from .cluster.api import write_to_adata
    from .cluster.config import load_config
    from .cluster.pipeline import run
    from .io import check_anndata_fields, from_anndata

    check_anndata_fields(adata, layer=layer, batch_key=batch_key)
    cfg = load_config(None, n_clusters=n_clusters or 0, seed=random_state, **params)
    adata = adata.copy() if copy else adata
    result = run(from_anndata(adata, layer=layer, batch_key=batch_key), cfg, progress=verbose)
    write_to_adata(adata, result, key_added, obs_key=key_added)
    adata.uns[key_added]["params"].update({k: v for k, v in (("layer", layer), ("batch_key", batch_key))
                                           if v is not None})
    return adata if copy else None


def gsrcl_annotate(adata, reference: str, *, layer: str | None = None, cutoff: float = 0.5,
                   key_added: str = "gsrcl", copy: bool = False):
    """Annotate the cells with a GsRCL reference (``python -m scdc_jax.gsrcl train-reference``).

    The query's genes are aligned to the reference's by name (missing ones zero, extra ones
    dropped; refused when half or fewer of the reference's genes are in the query), the cells
    encoded, and each called the type of highest probability, or ``"Unassigned"`` when that
    probability is at or below ``cutoff`` or the cell has no counts in the reference's genes
    (its probabilities NaN).

    Parameters
    ----------
    adata : AnnData
        Counts in ``.X`` or ``layer``, gene names as ``var_names``.
    reference : str
        Folder written by ``train-reference``.
    layer : str, optional
        Layer holding the counts, ``"raw"`` for ``.raw.X``.
    cutoff : float
        Top probability in [0, 1) at or below which a cell is Unassigned.
    key_added : str
        Name of the fields written.
    copy : bool
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    None, or the modified copy with ``copy=True``.  Writes

    ``.obs[key_added]``
        the call (categorical: cell-type names and ``"Unassigned"``);
    ``.obsm["X_" + key_added]``
        the GsRCL representation (n_cells, d);
    ``.obsm[key_added + "_probs"]``
        per-type probabilities (n_cells, n_types), normalised to sum to 1, columns in the order
        of ``.uns[key_added]["cell_types"]``;
    ``.uns[key_added]``
        ``params`` (``reference``: its absolute path, ``cutoff``, and ``layer`` when given),
        ``cell_types`` (the reference's types) and ``cells_without_counts`` (cells without counts
        in the reference's genes: Unassigned, their probabilities NaN).
    """
    import pandas as pd

    from .gsrcl.annotate import UNASSIGNED, annotate
    from .io import check_anndata_fields, check_counts, from_anndata, log_transformed_note

    check_anndata_fields(adata, layer=layer)
    adata = adata.copy() if copy else adata
    query = from_anndata(adata, layer=layer)
    check_counts(query.X, require_integer=False)
    if note := log_transformed_note(query.X):  # scanpy's .X is often log-normalised: logged twice here
        warnings.warn(note[0].upper() + note[1:], UserWarning, stacklevel=2)
    df, h = annotate(reference, query, cutoff=cutoff)
    types = [str(c) for c in df.columns.drop("call")]
    calls = df["call"].to_numpy()
    present = set(calls.tolist())
    adata.obs[key_added] = pd.Categorical(calls, categories=[t for t in [*types, UNASSIGNED] if t in present])
    adata.obsm["X_" + key_added] = np.asarray(h, np.float32)
    # An array, not a DataFrame: type names such as "CD4+/CD25 T Reg" would become .h5ad keys, and
    # anndata is withdrawing forward slashes in those.
    adata.obsm[key_added + "_probs"] = df[types].to_numpy(np.float32)
    params = {"reference": os.path.abspath(reference), "cutoff": float(cutoff)}
    if layer is not None:
        params["layer"] = layer
    adata.uns[key_added] = {"params": params, "cell_types": types,
                            "cells_without_counts": int(df[types].isna().all(axis=1).sum())}
    return adata if copy else None
