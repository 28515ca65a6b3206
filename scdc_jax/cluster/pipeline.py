"""The scDeepCluster pipeline: preprocessing, pretraining, cluster initialisation, DEC stage.

:func:`run` takes a :class:`~scdc_jax.io.CountData` and a :class:`ClusterConfig` and returns a
:class:`ClusterResult`; :func:`fit` is the scanpy-style wrapper that writes into an AnnData.
Checkpoints (orbax) go to ``save_dir/pretrain``, ``save_dir/cluster`` (periodic, for ``resume``)
and ``save_dir/model`` (the final model with its cluster centres, used by ``predict``).  A
``save_dir`` holding another run is refused unless ``overwrite`` (replace it) or ``resume``
(continue it) is given (:mod:`.layout`), so it never holds checkpoints of two runs.  The two
folders others may be given, ``pretrain`` (for ``ae_weights``) and ``model``, get a manifest once
complete and are checked against it before they are read (:mod:`scdc_jax.manifest`).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint, distributed, manifest
from ..errors import InputError, TrainingDiverged, option
from ..io import CountData
from ..metrics import clustering_scores
from ..optim import adadelta_torch, amsgrad_torch
from ..parallel import data_sharded, make_mesh, replicated
from ..preprocess import prepare
from .config import ClusterConfig
from .init import centres_of, community_labels, kmeans
from .layout import CLUSTER, MODEL, PRETRAIN, run_folder
from .train import (build_model, device_data, make_assign, make_cluster_epoch, make_encoder,
                    make_pretrain_epoch, stage_key)

PRETRAIN_KIND, MODEL_KIND = "scDeepCluster pretrained autoencoder", "scDeepCluster model"
RETRAIN = "train it again with 'python -m scdc_jax.cluster'"


@dataclass
class ClusterResult:
    """Everything a run produces (rows are the cells kept by filtering, see ``cells``).

    labels : (n,) predicted clusters 0..k-1.
    latent : (n, latent) final clean embedding z0.
    q : (n, k) soft assignments.
    centers : (k, latent) cluster centres.
    cells, genes : indices of the kept cells / genes in the input.
    history : ``pretrain_loss`` (per epoch), ``cluster`` (per epoch: loss, kl, zinb) and, with
        labels, ``scores`` (per target update: epoch, ari, nmi, acc, delta).
    scores : final ARI/NMI/ACC when labels were given.
    """

    labels: np.ndarray
    latent: np.ndarray
    q: np.ndarray
    centers: np.ndarray
    cells: np.ndarray
    genes: np.ndarray
    n_cells_input: int
    config: dict
    history: dict = field(default_factory=dict)
    scores: dict | None = None
    timings: dict = field(default_factory=dict)
    stop_reason: str = ""
    gene_names: list | None = None

    def full_labels(self) -> np.ndarray:
        """Labels for every input cell; -1 for cells removed by filtering."""
        out = np.full(self.n_cells_input, -1, np.int64)
        out[self.cells] = self.labels
        return out

    def full_latent(self) -> np.ndarray:
        out = np.full((self.n_cells_input, self.latent.shape[1]), np.nan, np.float32)
        out[self.cells] = self.latent
        return out


class _Progress:
    """tqdm bar on stderr when asked for, silent otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool, initial: int = 0):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, initial=initial, file=sys.stderr, dynamic_ncols=True,
                            leave=True)

    def update(self, **postfix):
        if self.bar is not None:
            self.bar.set_postfix({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                 refresh=False)
            self.bar.update(1)

    def write(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _diverged(stage: str, epoch: int, save_dir: str | None, sub: str) -> TrainingDiverged:
    where = os.path.join(save_dir, sub) if save_dir else None
    last = checkpoint.latest_step(where) if where else None
    hint = (f"the last good checkpoint is epoch {last} in {where}" if last is not None
            else "no checkpoint was saved before it")
    return TrainingDiverged(f"the {stage} loss became non-finite at epoch {epoch}; {hint}. "
                            f"Try a smaller {option('sigma')} or learning rate, or check the input counts.")


def _ckpt_meta(stage: str, epoch: int, cfg: ClusterConfig, n_genes: int, n_batches: int, **extra) -> dict:
    return {"stage": stage, "epoch": epoch, "config": cfg.to_dict(), "n_genes": n_genes,
            "n_batches": n_batches, **extra}


def _check_compatible(meta: dict, n_genes: int, n_batches: int, cfg: ClusterConfig, where: str) -> None:
    if meta.get("n_genes") != n_genes or meta.get("n_batches") != n_batches:
        raise InputError(f"the checkpoint in {where} was made for {meta.get('n_genes')} genes and "
                         f"{meta.get('n_batches')} batches, but this data has {n_genes} genes and {n_batches} "
                         f"batches after preprocessing; use the same data and {option('select_genes')}.")
    saved = meta.get("config", {})
    for k in ("encoder", "latent", "decoder"):
        if k in saved and list(np.atleast_1d(saved[k])) != list(np.atleast_1d(getattr(cfg, k))):
            raise InputError(f"the checkpoint in {where} has {k}={saved[k]}, this run asks for {getattr(cfg, k)}.")


def _resolve_ae_weights(path: str) -> str:
    if not os.path.isdir(path):
        raise InputError(f"{option('ae_weights', path)} is not a folder holding a scdc_jax checkpoint.")
    for cand in (os.path.join(path, PRETRAIN), path):
        if os.path.isfile(os.path.join(cand, manifest.NAME)) or checkpoint.latest_step(cand) is not None:
            manifest.verify(cand, PRETRAIN_KIND, RETRAIN)
            return cand
    raise InputError(f"{option('ae_weights', path)} holds no pretrained autoencoder checkpoint.")


def _fingerprint(cfg: ClusterConfig, prep) -> dict:
    """What makes two runs one run, for ``resume``: the settings that shape the result (not the
    device count or the checkpoint interval) and a digest of the preprocessed data."""
    digest = hashlib.sha256()
    for part in (prep.cells, prep.genes, prep.size_factors, prep.norm["mean"], prep.norm["std"], prep.data.batch):
        if part is not None:
            digest.update(np.ascontiguousarray(part).tobytes())
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("devices", "checkpoint_every")}
    return {"config": settings, "shape": list(prep.shape), "data": digest.hexdigest()}


def run(data: CountData, cfg: ClusterConfig, *, save_dir: str | None = None, ae_weights: str | None = None,
        resume: bool = False, overwrite: bool = False, progress: bool = True) -> ClusterResult:
    """Preprocess ``data`` and run scDeepCluster with ``cfg``; see the module docstring."""
    cfg.validate()
    ae_dir = _resolve_ae_weights(ae_weights) if ae_weights is not None else None  # checked before any work
    folder = run_folder(save_dir, resume=resume, overwrite=overwrite) if save_dir else None
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    prep = prepare(data, select_genes_n=cfg.select_genes)
    n, g = prep.shape
    batch = prep.data.batch
    nb = 0 if batch is None else batch.shape[1]
    if cfg.n_clusters > n:
        raise InputError(f"{option('n_clusters', cfg.n_clusters)} is more than the {n} cells left after filtering.")
    labels_true = prep.data.labels
    progress = progress and distributed.is_primary()  # one process of a multi-process run reports
    say = (lambda msg: print(msg, file=sys.stderr)) if progress else (lambda msg: None)
    say(f"data: {n} cells x {g} genes" + (f", {nb} batches" if nb else "")
        + (f", {len(np.unique(labels_true))} labelled types" if labels_true is not None else ""))

    mesh = make_mesh(cfg.devices) if cfg.devices > 1 else None
    rep = replicated(mesh) if mesh is not None else None
    bshard = data_sharded(mesh) if mesh is not None else None
    dd = device_data(prep.raw, prep.norm, batch, sharding=rep)
    graphdef, ae = build_model(g, nb, cfg, cfg.seed)
    if rep is not None:
        ae = jax.device_put(ae, rep)
    history: dict = {"pretrain_loss": [], "cluster": [], "scores": []}
    if ae_dir is not None:  # before the run folder is claimed, so that a bad checkpoint leaves nothing behind
        meta = checkpoint.read_meta(ae_dir)
        _check_compatible(meta, g, nb, cfg, ae_dir)
        restored, meta = checkpoint.restore(ae_dir, {"ae": ae, "opt": amsgrad_torch(cfg.lr_pretrain).init(ae)})
        ae = restored["ae"] if rep is None else jax.device_put(restored["ae"], rep)
        say(f"pretrained autoencoder restored from {ae_dir} (epoch {meta.get('epoch')}); pretraining skipped")
        history["pretrain_loss"] = list(meta.get("pretrain_loss", []))
    work = None
    if folder is not None:  # the first process writes the fingerprint, the others check it
        primary = distributed.is_primary()
        work = folder.claim(_fingerprint(cfg, prep)) if primary else None
        distributed.barrier("run folder claimed")
        work = work or folder.claim(_fingerprint(cfg, prep), write=False)
    sub = (lambda s: os.path.join(work, s)) if work else (lambda s: None)

    # ---- pretraining --------------------------------------------------------------------------
    t0 = time.perf_counter()
    if ae_weights is None:
        tx = amsgrad_torch(cfg.lr_pretrain)
        opt_state = tx.init(ae)
        start = 0
        ck_dir = sub(PRETRAIN)
        if resume and ck_dir and checkpoint.latest_step(ck_dir) is not None:
            meta = checkpoint.read_meta(ck_dir)
            _check_compatible(meta, g, nb, cfg, ck_dir)
            state, meta = checkpoint.restore(ck_dir, {"ae": ae, "opt": opt_state})
            ae, opt_state, start = state["ae"], state["opt"], int(meta["epoch"])
            if rep is not None:
                ae, opt_state = jax.device_put((ae, opt_state), rep)
            history["pretrain_loss"] = list(meta.get("pretrain_loss", []))
            say(f"resuming pretraining from epoch {start} ({ck_dir})")
        epoch_fn = make_pretrain_epoch(graphdef, tx, n=n, batch_size=cfg.batch_size, sigma=cfg.sigma,
                                       ridge_lambda=cfg.ridge_lambda, batch_sharding=bshard)
        bar = _Progress(cfg.pretrain_epochs, "pretrain", progress, initial=start)
        try:
            for epoch in range(start, cfg.pretrain_epochs):
                ae, opt_state, loss = epoch_fn(ae, opt_state, dd, stage_key(cfg.seed, 1, epoch))
                loss = float(loss)
                if not np.isfinite(loss):
                    raise _diverged("pretraining", epoch + 1, work, PRETRAIN)
                history["pretrain_loss"].append(loss)
                bar.update(zinb=loss)
                done = epoch + 1
                if ck_dir and (done % cfg.checkpoint_every == 0 or done == cfg.pretrain_epochs):
                    checkpoint.save(ck_dir, done, {"ae": ae, "opt": opt_state},
                                    _ckpt_meta(PRETRAIN, done, cfg, g, nb, pretrain_loss=history["pretrain_loss"]))
        finally:
            bar.close()
        if ck_dir and distributed.is_primary():
            manifest.write(ck_dir, PRETRAIN_KIND)
    timings["pretrain_s"] = time.perf_counter() - t0

    # ---- cluster initialisation ---------------------------------------------------------------
    t0 = time.perf_counter()
    assign = make_assign(graphdef, cfg.alpha)
    encode = make_encoder(graphdef)
    tx = adadelta_torch(cfg.lr_cluster)
    ck_dir = sub(CLUSTER)
    start = 0
    if resume and ck_dir and checkpoint.latest_step(ck_dir) is not None:
        meta = checkpoint.read_meta(ck_dir)
        _check_compatible(meta, g, nb, cfg, ck_dir)
        k = int(meta["n_clusters"])
        template = {"params": {"ae": ae, "mu": jnp.zeros((k, cfg.latent))}, "p": jnp.zeros((n, k)),
                    "last": jnp.zeros((n,), jnp.int32)}
        template["opt"] = tx.init(template["params"])
        state, meta = checkpoint.restore(ck_dir, template)
        params, opt_state, p = state["params"], state["opt"], state["p"]
        last = np.asarray(state["last"]).astype(np.int64)
        if rep is not None:
            p = jax.device_put(p, rep)
        start = int(meta["epoch"])
        history.update(meta.get("history", {}))
        say(f"resuming clustering from epoch {start} ({ck_dir})")
    else:
        z0 = checkpoint.to_host(encode(ae, dd))
        if cfg.n_clusters > 0:
            centers, last = kmeans(z0, cfg.n_clusters, n_init=cfg.kmeans_n_init, seed=cfg.seed)
        else:
            last = community_labels(z0, knn=cfg.knn, resolution=cfg.resolution, method=cfg.community,
                                    seed=cfg.seed)
            centers = centres_of(z0, last)
            say(f"{cfg.community} at resolution {cfg.resolution} on a {cfg.knn}-NN graph found "
                f"{centers.shape[0]} clusters")
        k = centers.shape[0]
        params = {"ae": ae, "mu": jnp.asarray(centers)}
        opt_state = tx.init(params)
        p = None
        if labels_true is not None:
            history["init_scores"] = clustering_scores(labels_true, last)
    if rep is not None:
        params, opt_state = jax.device_put((params, opt_state), rep)
    timings["init_s"] = time.perf_counter() - t0

    # ---- clustering stage ---------------------------------------------------------------------
    t0 = time.perf_counter()
    epoch_fn = make_cluster_epoch(graphdef, tx, n=n, batch_size=cfg.batch_size, sigma=cfg.sigma,
                                  gamma=cfg.gamma, alpha=cfg.alpha, ridge_lambda=cfg.ridge_lambda,
                                  batch_sharding=bshard)
    bar = _Progress(cfg.maxiter, "cluster", progress, initial=start)
    stop_reason = "maxiter"
    z0 = q = None
    try:
        for epoch in range(start, cfg.maxiter + 1):
            if epoch % cfg.update_interval == 0 or epoch == cfg.maxiter:
                z0, q, p, pred = assign(params, dd)
                pred = checkpoint.to_host(pred).astype(np.int64)
                delta = float(np.mean(pred != last))
                if labels_true is not None:
                    s = clustering_scores(labels_true, pred)
                    history["scores"].append({"epoch": epoch, **s, "delta": delta})
                last = pred
                if epoch > 0 and delta < cfg.tol:
                    stop_reason = "tol"
                    bar.write(f"clustering stopped at epoch {epoch}: {delta:.5f} of the labels changed "
                              f"(< tol {cfg.tol})")
                    break
            if epoch == cfg.maxiter:
                break
            params, opt_state, losses = epoch_fn(params, opt_state, dd, p, stage_key(cfg.seed, 2, epoch))
            loss, kl, zinb = (float(v) for v in losses)
            if not np.isfinite(loss):
                raise _diverged("clustering", epoch + 1, work, CLUSTER)
            history["cluster"].append({"epoch": epoch + 1, "loss": loss, "kl": kl, "zinb": zinb})
            post = {"loss": loss, "kl": kl, "delta": delta}
            if history["scores"]:
                post.update({m: history["scores"][-1][m] for m in ("ari", "nmi", "acc")})
            bar.update(**post)
            done = epoch + 1
            if ck_dir and done % cfg.checkpoint_every == 0:
                checkpoint.save(ck_dir, done, {"params": params, "opt": opt_state, "p": p,
                                               "last": jnp.asarray(last, jnp.int32)},
                                _ckpt_meta(CLUSTER, done, cfg, g, nb, n_clusters=k, history=history))
    finally:
        bar.close()
    timings["cluster_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    timings["cluster_epochs"] = len(history["cluster"])

    gene_names = None if prep.data.gene_names is None else [str(x) for x in prep.data.gene_names]
    if work:
        checkpoint.save(sub(MODEL), 0, {"params": params, "norm_mean": prep.norm["mean"],
                                        "norm_std": prep.norm["std"]},
                        _ckpt_meta(MODEL, len(history["cluster"]), cfg, g, nb, n_clusters=k,
                                   gene_names=gene_names, batch_names=prep.data.batch_names,
                                   median_total=prep.norm["median_total"], n_input_genes=data.n_genes,
                                   kept_genes=[int(i) for i in prep.genes]))
        if distributed.is_primary():
            manifest.write(sub(MODEL), MODEL_KIND)
            folder.commit()
    scores = clustering_scores(labels_true, last) if labels_true is not None else None
    z0, q, centers = checkpoint.to_host((z0, q, params["mu"]))
    return ClusterResult(labels=last, latent=z0, q=q, centers=centers,
                         cells=prep.cells, genes=prep.genes, n_cells_input=data.n_cells, config=cfg.to_dict(),
                         history=history, scores=scores, timings=timings, stop_reason=stop_reason,
                         gene_names=gene_names)
