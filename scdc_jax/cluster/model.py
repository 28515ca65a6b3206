"""scvi-tools-style model object: ``SCDeepCluster.setup_anndata``, ``train``, ``get_latent_representation``.

The object is the user-facing side only: training is :func:`scdc_jax.cluster.pipeline.run`, new
cells go through :func:`scdc_jax.cluster.inference.predict`, and the network is the one the
pipeline checkpoints in ``save_dir/model``.  A trained model keeps that run folder (a temporary
one unless ``train(save_dir=...)``), so new cells are encoded by exactly the code the command
line's ``predict`` uses.

``save(dir)`` writes::

    dir/model/        the run's orbax model folder, as the pipeline wrote it (with its manifest)
    dir/registry.json the AnnData fields of setup_anndata, the configuration, the training summary
    dir/training.npz  the training cells' latent (n, d), soft assignments (n, k) and labels (n,)
    dir/manifest.json all of the above, checked before anything is read (:mod:`scdc_jax.manifest`)

JSON and arrays only, never a pickle; ``python -m scdc_jax.cluster predict --model dir`` reads it too.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings

import numpy as np

from .. import manifest
from ..errors import InputError, option
from ..io import check_anndata_fields, from_anndata
from ..outputs import write_json
from .config import ClusterConfig, load_config
from .inference import _model_dir, predict
from .pipeline import MODEL, MODEL_KIND, RETRAIN, ClusterResult, run

REGISTRY_KEY = "_scdc_jax"  # the .uns entry setup_anndata writes
FIELDS = ("layer", "batch_key", "labels_key")
KIND = "saved SCDeepCluster model"
REGISTRY_FILE, TRAINING_FILE = "registry.json", "training.npz"
RESAVE = "save the model again with model.save(dir)"


def _registry(adata) -> dict:
    """The fields ``setup_anndata`` recorded in ``adata`` ({name: value or None})."""
    check_anndata_fields(adata)
    rec = adata.uns.get(REGISTRY_KEY)
    if not isinstance(rec, dict) or rec.get("model") != "SCDeepCluster":
        raise InputError("adata is not set up for SCDeepCluster; call SCDeepCluster.setup_anndata(adata, "
                         "layer=..., batch_key=..., labels_key=...) first.")
    return {name: (str(rec[name]) if name in rec else None) for name in FIELDS}


class SCDeepCluster:
    """scDeepCluster (ZINB autoencoder + deep embedded clustering) as a model object.

    Parameters
    ----------
    adata : AnnData registered with :meth:`setup_anndata`; raw integer counts in ``.X`` or the
        registered layer.
    n_clusters : number of clusters; None or 0 estimates it by Louvain on the pretrained latent.
    **config_overrides : any :class:`~scdc_jax.cluster.ClusterConfig` field (``pretrain_epochs``,
        ``maxiter``, ``seed``, ``encoder``, ...), checked at once.

    Examples
    --------
    >>> SCDeepCluster.setup_anndata(adata, layer="counts", labels_key="cell_type")  # doctest: +SKIP
    >>> model = SCDeepCluster(adata, n_clusters=8)                                  # doctest: +SKIP
    >>> model.train()                                                                # doctest: +SKIP
    >>> adata.obsm["X_scdc"] = model.get_latent_representation()                    # doctest: +SKIP
    >>> model.save("my_model"); SCDeepCluster.load("my_model").predict(new_adata)   # doctest: +SKIP
    """

    def __init__(self, adata, n_clusters: int | None = None, **config_overrides):
        self.registry = _registry(adata)
        self.config: ClusterConfig = load_config(None, n_clusters=n_clusters or 0, **config_overrides).validate()
        self.adata = adata
        self.result: ClusterResult | None = None  # the full run, after train() in this session
        self.summary: dict = {}
        self._train_out: dict | None = None  # latent, q, labels of the training cells
        self._run_dir: str | None = None  # a folder holding MODEL/
        self._tmp: tempfile.TemporaryDirectory | None = None

    @classmethod
    def setup_anndata(cls, adata, layer: str | None = None, batch_key: str | None = None,
                      labels_key: str | None = None) -> None:
        """Record where ``adata`` holds what the model reads, in ``adata.uns["_scdc_jax"]``.

        Parameters
        ----------
        adata : AnnData.
        layer : layer of the raw counts, ``"raw"`` for ``.raw.X``, or None for ``.X``.
        batch_key : ``.obs`` column of batches (switches on the batch-conditioned model).
        labels_key : ``.obs`` column of known labels; training then records ARI/NMI/ACC.
        """
        check_anndata_fields(adata, layer=layer, batch_key=batch_key, labels_key=labels_key)
        fields = {"layer": layer, "batch_key": batch_key, "labels_key": labels_key}
        # only the fields given: .uns cannot hold None in an .h5ad
        adata.uns[REGISTRY_KEY] = {"model": "SCDeepCluster", **{k: v for k, v in fields.items() if v is not None}}

    @property
    def is_trained(self) -> bool:
        return self._train_out is not None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.registry.items() if v is not None)
        state = (f"trained on {len(self._train_out['labels'])} cells, {self.summary.get('n_clusters')} clusters"
                 if self.is_trained else "not trained")
        return f"SCDeepCluster(n_clusters={self.config.n_clusters or 'estimated'}{', ' + fields if fields else ''}; {state})"

    def _data(self, adata, *, labels: bool):
        r = self.registry
        check_anndata_fields(adata, layer=r["layer"], batch_key=r["batch_key"],
                             labels_key=r["labels_key"] if labels else None)
        return from_anndata(adata, layer=r["layer"], batch_key=r["batch_key"],
                            label_key=r["labels_key"] if labels else None)

    def train(self, *, save_dir: str | None = None, overwrite: bool = False, resume: bool = False,
              ae_weights: str | None = None, verbose: bool = True) -> "SCDeepCluster":
        """Pretrain the autoencoder and run the clustering stage on the registered AnnData.

        Parameters
        ----------
        save_dir : folder for the run's checkpoints (``pretrain/``, ``cluster/``, ``model/``), as
            ``fit(save_dir=...)``; a temporary folder, removed with the object, by default.
        overwrite, resume : replace, or continue, the run ``save_dir`` holds.
        ae_weights : a run folder whose pretrained autoencoder is reused (pretraining skipped).
        verbose : progress bars (tqdm.auto: a widget in notebooks) and messages on stderr.

        Returns
        -------
        The model itself.
        """
        if save_dir is None and (resume or overwrite):
            raise InputError(f"{option('resume' if resume else 'overwrite', True)} needs {option('save_dir')}.")
        data = self._data(self.adata, labels=True)
        if save_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="scdc_jax_")
            save_dir = os.path.join(self._tmp.name, "run")
        result = run(data, self.config, save_dir=save_dir, ae_weights=ae_weights, resume=resume,
                     overwrite=overwrite, progress=verbose)
        q = np.full((result.n_cells_input, result.centers.shape[0]), np.nan, np.float32)
        q[result.cells] = result.q
        self.result, self._run_dir = result, save_dir
        self._train_out = {"latent": result.full_latent(), "q": q, "labels": result.full_labels()}
        self.summary = {"n_cells": int(result.n_cells_input), "n_clusters": int(result.centers.shape[0]),
                        "scores": result.scores, "stop_reason": result.stop_reason,
                        "pretrain_loss": result.history.get("pretrain_loss", []),
                        "cluster_loss": result.history.get("cluster", []),
                        "score_history": result.history.get("scores", [])}
        return self

    def _trained(self, what: str) -> dict:
        if not self.is_trained:
            raise InputError(f"the model is not trained yet; call model.train() before model.{what}().")
        return self._train_out

    def _predict(self, adata, what: str, fill_missing_genes: bool) -> dict:
        out = self._trained(what)
        if adata is None:
            return out
        out = predict(self._run_dir, self._data(adata, labels=False), fill_missing_genes=fill_missing_genes)
        if out["genes_missing"]:
            warnings.warn(f"{out['genes_missing']} of the model's {out['n_genes']} genes are not in adata and were "
                          "counted as zero.", UserWarning, stacklevel=3)
        return out

    def get_latent_representation(self, adata=None, *, fill_missing_genes: bool = False) -> np.ndarray:
        """The latent coordinates, (n_cells, latent) float32.

        ``adata=None``: the training cells (rows of NaN for cells removed for having no counts).
        Otherwise the cells of ``adata`` (read with the registered layer and batch key; genes
        matched by name), encoded with the training normalisation, as ``predict`` does.  The
        model's genes that ``adata`` lacks are refused, or counted as zero (with a warning) with
        ``fill_missing_genes=True``, when fewer than half are missing.
        """
        return self._predict(adata, "get_latent_representation", fill_missing_genes)["latent"]

    def predict(self, adata=None, *, soft: bool = False, fill_missing_genes: bool = False) -> np.ndarray:
        """Cluster labels (n_cells,) int64, -1 for cells without counts; with ``soft=True`` the soft
        assignments q (n_cells, n_clusters).  ``adata`` and ``fill_missing_genes`` as in
        :meth:`get_latent_representation`."""
        return self._predict(adata, "predict", fill_missing_genes)["q" if soft else "labels"]

    def save(self, dir_path: str, overwrite: bool = False) -> str:
        """Write the model to ``dir_path`` (layout in the module docstring); a folder that exists is
        refused unless ``overwrite`` and it holds a saved model, which is then replaced whole.
        Returns ``dir_path``."""
        out = self._trained("save")
        src = _model_dir(self._run_dir)  # checked against its manifest before it is copied
        dir_path = os.path.abspath(dir_path)
        if os.path.lexists(dir_path) and not (os.path.isdir(dir_path) and not os.listdir(dir_path)):
            if not overwrite:
                raise InputError(f"{dir_path} already exists; pass {option('overwrite', True)} to replace it or "
                                 "choose another folder.")
            if not os.path.isfile(os.path.join(dir_path, REGISTRY_FILE)):
                raise InputError(f"{dir_path} holds something other than a saved SCDeepCluster model, which "
                                 f"{option('overwrite', True)} does not replace; choose another folder.")
        parent, name = os.path.split(dir_path)
        os.makedirs(parent, exist_ok=True)
        # Built beside the target and renamed into place, so that a failure leaves any older model whole.
        stage, old = os.path.join(parent, f".{name}.saving"), os.path.join(parent, f".{name}.old")
        for p in (stage, old):
            if os.path.lexists(p):
                shutil.rmtree(p)
        os.makedirs(stage)
        shutil.copytree(src, os.path.join(stage, MODEL))
        write_json(os.path.join(stage, REGISTRY_FILE),
                   {"model": "SCDeepCluster", "registry": self.registry, "config": self.config.to_dict(),
                    "summary": self.summary})
        np.savez(os.path.join(stage, TRAINING_FILE), **out)
        manifest.write(stage, KIND)
        if os.path.lexists(dir_path):
            os.rename(dir_path, old)
        os.rename(stage, dir_path)
        if os.path.lexists(old):
            shutil.rmtree(old)
        self._run_dir = dir_path
        return dir_path

    @classmethod
    def load(cls, dir_path: str, adata=None) -> "SCDeepCluster":
        """The model saved in ``dir_path`` by :meth:`save`, checked against its manifest.

        ``adata`` (optional): the AnnData to attach as the model's training data; it must hold the
        registered fields and as many cells as the model was trained on.
        """
        if not os.path.isfile(os.path.join(dir_path, REGISTRY_FILE)):
            raise InputError(f"{dir_path} is not a saved SCDeepCluster model (it has no {REGISTRY_FILE}); "
                             "write one with model.save(dir).")
        manifest.verify(dir_path, KIND, RESAVE)
        manifest.verify(os.path.join(dir_path, MODEL), MODEL_KIND, RETRAIN)
        with open(os.path.join(dir_path, REGISTRY_FILE)) as fh:
            saved = json.load(fh)
        with np.load(os.path.join(dir_path, TRAINING_FILE), allow_pickle=False) as z:
            train_out = {k: z[k] for k in ("latent", "q", "labels")}
        model = cls.__new__(cls)
        model.registry = {k: saved["registry"].get(k) for k in FIELDS}
        model.config = ClusterConfig(**saved["config"])
        model.result, model._tmp = None, None
        model.summary, model._train_out, model._run_dir = saved["summary"], train_out, dir_path
        model.adata = adata
        if adata is not None:
            r = model.registry
            check_anndata_fields(adata, layer=r["layer"], batch_key=r["batch_key"], labels_key=r["labels_key"])
            if adata.n_obs != len(train_out["labels"]):
                raise InputError(f"adata has {adata.n_obs} cells but the model was trained on "
                                 f"{len(train_out['labels'])}; give the training AnnData or none.")
            cls.setup_anndata(adata, **r)
        return model
