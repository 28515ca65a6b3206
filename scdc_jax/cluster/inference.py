"""Assign new cells with a saved scDeepCluster model (``save_dir/model``).

The folder is checked against its manifest before anything in it is read (it may come from
someone else); it holds orbax arrays and JSON only.

The query must hold the model's genes: matched by name (and reordered) when both sides have
names, otherwise by position: either the model's genes alone, or every column of the training
input, from which the model's columns are taken as in training.  Genes missing from a named
query are refused, or counted as zero when asked (``fill_missing_genes``; what that does to the
assignment is measured by ``benchmarks/missing_genes.py``).  Cells are normalised with the TRAINING
statistics (median total, gene means and spreads) and encoded by the clean encoder pass.
"""
from __future__ import annotations

import os
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint, manifest
from ..errors import InputError, option
from ..io import CountData, align_genes, check_counts
from ..preprocess import prepare_query
from .config import ClusterConfig
from .pipeline import MODEL, MODEL_KIND, RETRAIN
from .train import abstract_model, device_data, make_assign


def _model_dir(path: str) -> str:
    """The model folder of ``path`` (a run's --save-dir or its ``model``), checked against its manifest."""
    for cand in (os.path.join(path, MODEL), path):
        if os.path.isfile(os.path.join(cand, manifest.NAME)) or checkpoint.latest_step(cand) is not None:
            manifest.verify(cand, MODEL_KIND, RETRAIN)
            return cand
    raise InputError(f"{path} holds no final scdc_jax model (look for the 'model' folder of a finished run's "
                     f"{option('save_dir')}).")


def require_model_genes(data: CountData, model_genes: list[str] | None, n_genes: int, *,
                        kept: list[int] | None = None, n_input: int | None = None,
                        fill_missing: bool = False) -> tuple[CountData, int]:
    """Reorder the query's genes to the model's; refuse when they cannot be matched.  Returns the
    query on the model's genes and how many of them it lacked.

    With names on both sides, a query laid out as the training input (its columns ``kept`` carry
    the model's names) gets those columns, even where names repeat; otherwise genes are matched by
    name (:func:`scdc_jax.io.align_genes`) and those the query lacks are refused, or with
    ``fill_missing`` given zero counts.  Without names on both sides, a query of
    ``n_input`` genes (the training input's count, of which the model kept the columns ``kept``:
    genes without counts and unselected genes were dropped) gets the same columns by position;
    one of ``n_genes`` genes is taken as it is.
    """
    if model_genes is not None and data.gene_names is not None:
        names = np.asarray(data.gene_names).astype(str)
        if kept is not None and data.n_genes == n_input and np.array_equal(names[kept], np.asarray(model_genes, str)):
            return data.subset(genes=np.asarray(kept, np.int64)), 0  # the training input's layout, names and all
        X, missing = align_genes(data.X, data.gene_names, model_genes, what="model", fill_missing=fill_missing,
                                 flag=option("fill_missing_genes", True))
        return replace(data, X=X, gene_names=np.asarray(model_genes).astype(str)), missing
    if data.n_genes == n_genes:
        return data, 0
    if kept is not None and data.n_genes == n_input:
        return data.subset(genes=np.asarray(kept, np.int64)), 0
    trained_on = f" (the training data had {n_input} before filtering)" if n_input not in (None, n_genes) else ""
    raise InputError(f"the query has {data.n_genes} genes and the model {n_genes}{trained_on}, and without gene "
                     "names on both sides they cannot be matched; give gene names or the same genes in the same "
                     "order.")


def _align_batches(data: CountData, meta: dict) -> np.ndarray | None:
    nb = int(meta["n_batches"])
    if nb == 0:
        return None
    if data.batch is None:
        raise InputError(f"the model was trained with {nb} batches; give the query's batches "
                         f"(B or {option('batch_key')}).")
    names = meta.get("batch_names")
    if data.batch_names is not None and names is not None:
        names = [str(b) for b in names]
        unknown = [str(b) for b in data.batch_names if str(b) not in names]
        if unknown:
            raise InputError(f"the query's batches {', '.join(map(repr, unknown[:5]))} are not among the model's "
                             f"({', '.join(map(repr, names[:10]))}); a batch-conditioned model places cells of "
                             "the batches it was trained on.")
        cols = [names.index(str(b)) for b in data.batch_names]
        out = np.zeros((data.n_cells, nb), np.float32)
        out[:, cols] = data.batch
        return out
    if data.batch.shape[1] != nb:
        raise InputError(f"the query has {data.batch.shape[1]} batches, the model {nb}; they must be the same batches.")
    return data.batch


def predict(model: str, data: CountData, *, fill_missing_genes: bool = False) -> dict:
    """Latent coordinates, soft assignments and labels of ``data``'s cells under a saved model.

    Returns ``{"latent": (n, d), "q": (n, k), "labels": (n,)}`` for every query cell (cells with no
    counts in the model's genes get NaN rows and label -1), and the model's ``n_genes`` of which
    ``genes_missing`` were not in the query.  A query lacking some of the model's genes (matched
    by name) is refused unless ``fill_missing_genes``, which counts them as zero (refused still
    when half or more are missing).
    """
    where = _model_dir(model)
    meta = checkpoint.read_meta(where)
    cfg = ClusterConfig(**meta["config"])
    n_genes, k = int(meta["n_genes"]), int(meta["n_clusters"])
    data, genes_missing = require_model_genes(data, meta.get("gene_names"), n_genes, kept=meta.get("kept_genes"),
                                              n_input=meta.get("n_input_genes"), fill_missing=fill_missing_genes)
    check_counts(data.X, require_integer=True)
    b = _align_batches(data, meta)
    graphdef, ae = abstract_model(cfg, n_genes, n_batches=int(meta["n_batches"]))
    template = {"params": {"ae": ae, "mu": jax.ShapeDtypeStruct((k, cfg.latent), jnp.float32)},
                "norm_mean": jax.ShapeDtypeStruct((n_genes,), jnp.float32),
                "norm_std": jax.ShapeDtypeStruct((n_genes,), jnp.float32)}
    state, _ = checkpoint.restore(where, template)
    norm = {"median_total": meta["median_total"], "mean": np.asarray(state["norm_mean"]),
            "std": np.asarray(state["norm_std"])}
    prep = prepare_query(replace(data, batch=b), norm)
    query = device_data(prep)
    z0, q, _, labels = make_assign(graphdef, cfg.alpha)(state["params"], query)
    n = data.n_cells
    out = {"latent": np.full((n, cfg.latent), np.nan, np.float32), "q": np.full((n, k), np.nan, np.float32),
           "labels": np.full(n, -1, np.int64), "genes_missing": genes_missing,
           "n_genes": n_genes}
    ok = prep.cells
    out["latent"][ok], out["q"][ok], out["labels"][ok] = np.asarray(z0), np.asarray(q), np.asarray(labels)
    return out
