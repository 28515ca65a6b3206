"""The scDeepCluster pipeline: preprocessing, pretraining, cluster initialisation, DEC stage.

:func:`run` takes a :class:`~scdc_jax.io.CountData` and a :class:`ClusterConfig` and returns a
:class:`ClusterResult`; :func:`fit` is the scanpy-style wrapper that writes into an AnnData.
``run`` is a short driver: :func:`restore_or_init` decides where the run starts (a fresh network,
``ae_weights`` or ``resume``), then the stages :func:`pretrain`, :func:`init_clusters` and
:func:`cluster` pass one train-state dict along, each running when the state is at it.
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
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint, distributed, manifest
from ..errors import InputError, TrainingDiverged, option
from ..io import CountData
from ..metrics import batch_mixing, clustering_scores
from ..optim import adadelta_torch, amsgrad_torch
from ..parallel import data_sharded, make_mesh, replicated
from ..preprocess import prepare
from ..store import BLOCK_CELLS, CellStore, stream_prepare
from . import ensemble
from .config import ClusterConfig
from .init import centres_of, community_labels, kmeans, nearest_centre, subsample
from .layout import CLUSTER, MODEL, PRETRAIN, run_folder
from .source import InMemory, Streamed
from .train import abstract_model, build_model, cluster_loss, device_data, pretrain_loss, stage_key

PRETRAIN_KIND, MODEL_KIND = "scDeepCluster pretrained autoencoder", "scDeepCluster model"
RETRAIN = "train it again with 'python -m scdc_jax.cluster'"
PER_CELL = ("member_labels", "member_q", "consensus")  # an ensemble record's per-cell arrays


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
    ensemble : of an ensemble run (:mod:`.ensemble`), its members' labels and criteria, the
        consensus and the agreement; see :meth:`ensemble_summary` and :meth:`full_member_labels`.
    mixing : with two or more batches, how well they mix in ``latent``
        (:func:`scdc_jax.metrics.batch_mixing`: kNN mixing within the predicted clusters, iLISI).
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
    ensemble: dict | None = None
    mixing: dict | None = None

    def full_labels(self) -> np.ndarray:
        """Labels for every input cell; -1 for cells removed by filtering."""
        out = np.full(self.n_cells_input, -1, np.int64)
        out[self.cells] = self.labels
        return out

    def full_member_labels(self) -> np.ndarray | None:
        """(input cells, members) labels of each ensemble member; -1 for filtered cells."""
        if self.ensemble is None:
            return None
        out = np.full((self.n_cells_input, self.ensemble["members"]), -1, np.int64)
        out[self.cells] = np.asarray(self.ensemble["member_labels"]).T
        return out

    def ensemble_summary(self) -> dict | None:
        """The ensemble's record without per-cell arrays (JSON-ready): seeds, per-member criteria
        (and scores with labels), pairwise ARI, agreement, how the labels were chosen, the k estimate."""
        if self.ensemble is None:
            return None
        return {k: v for k, v in self.ensemble.items() if k not in PER_CELL}

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


def _say(enabled: bool):
    """``say(msg)`` printing to stderr when ``enabled``, else None."""
    return (lambda msg: print(msg, file=sys.stderr)) if enabled else None


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


def _fingerprint(cfg: ClusterConfig, prep, stream_block: int = 0) -> dict:
    """What makes two runs one run, for ``resume``: the settings that shape the result (not the
    device count or the checkpoint interval), the block size of a streamed run (its epochs visit
    the cells block by block) and a digest of the preprocessed data: the kept cells and genes, the
    size factors and the batches, which the preprocessing computes exactly however it reads the
    cells (whole, or in blocks by several processes; the genes' normalisation statistics, sums of
    logarithms, can differ in the last bit between the two, and follow from the rest)."""
    digest = hashlib.sha256()
    for part in (prep.cells, prep.genes, prep.size_factors, prep.data.batch):
        if part is not None:
            digest.update(np.ascontiguousarray(part).tobytes())
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("devices", "checkpoint_every")}
    out = {"config": settings, "shape": list(prep.shape), "data": digest.hexdigest()}
    if stream_block:
        out["stream_block"] = stream_block
    return out


# ---- the run's fixed parts -------------------------------------------------------------------

@dataclass
class _Setup:
    """What every stage of one run reads and nothing changes: the settings, the cells on the
    device(s), the network's structure, the mesh's shardings and the run's folder."""

    cfg: ClusterConfig
    source: InMemory | Streamed
    graphdef: object
    n_genes: int
    n_batches: int
    labels: np.ndarray | None
    replicated: object
    progress: bool
    work: str | None = None

    def say(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr)

    def sub(self, name: str) -> str | None:
        """The folder ``name`` (``pretrain``, ``cluster``, ``model``) of the run, or None without one."""
        return os.path.join(self.work, name) if self.work else None

    def meta(self, stage: str, epoch: int, **extra) -> dict:
        return _ckpt_meta(stage, epoch, self.cfg, self.n_genes, self.n_batches, **extra)

    def put(self, tree):
        """``tree`` replicated over the mesh; as it is without one."""
        return tree if self.replicated is None else jax.device_put(tree, self.replicated)


# ---- the train state ------------------------------------------------------------------------------
# One dict passed from stage to stage: "stage" (PRETRAIN, INIT: clusters still to place, or
# CLUSTER), "params" (the autoencoder state; with the centres {"ae", "mu"} from INIT on), "opt"
# (the optimiser state of the stage, None at INIT), "epoch" (the next epoch of the stage),
# "history", and in CLUSTER the target "p" (n, k) (None before the first update) and the last
# labels "last" (n,).
INIT = "init"


def _new_history() -> dict:
    return {"pretrain_loss": [], "cluster": [], "scores": []}


def _restore(setup: _Setup, where: str, template):
    """``(state, meta)`` of the checkpoint in ``where`` once its meta fits this run; ``template``
    gives the abstract state from the meta."""
    meta = checkpoint.read_meta(where)
    _check_compatible(meta, setup.n_genes, setup.n_batches, setup.cfg, where)
    return checkpoint.restore(where, template(meta))


def _claim(setup: _Setup, folder, fingerprint: dict) -> None:
    """The run's folder claimed (``setup.work``): the first process writes the fingerprint, the others check it."""
    setup.work = None
    if folder is not None:
        setup.work = folder.claim(fingerprint) if distributed.is_primary() else None
        distributed.barrier("run folder claimed")
        setup.work = setup.work or folder.claim(fingerprint, write=False)


def restore_or_init(setup: _Setup, folder, fingerprint: dict, *, ae_dir: str | None, resume: bool) -> dict:
    """The train state the run starts from, and the run's folder claimed (``setup.work``).

    ``resume``: the latest clustering checkpoint of the run's folder, else its latest pretraining
    checkpoint (unless ``ae_dir``).  Otherwise, or when the folder holds neither: the pretrained
    autoencoder of ``ae_dir`` (pretraining skipped), or a fresh network.  Checkpoints are restored
    onto abstract targets (``nnx.eval_shape``, ``jax.eval_shape``); ``ae_dir`` is read before the
    folder is claimed, so that a bad checkpoint leaves nothing behind.
    """
    cfg, n = setup.cfg, setup.source.n_cells
    ae = abstract_model(cfg, setup.n_genes, n_batches=setup.n_batches)[1]

    def pretrained(meta):
        return {"ae": ae, "opt": jax.eval_shape(amsgrad_torch(cfg.lr_pretrain).init, ae)}

    def clustering(meta):
        k = int(meta["n_clusters"])
        params = {"ae": ae, "mu": jax.ShapeDtypeStruct((k, cfg.latent), jnp.float32)}
        return {"params": params, "opt": jax.eval_shape(adadelta_torch(cfg.lr_cluster).init, params),
                "p": jax.ShapeDtypeStruct((n, k), jnp.float32), "last": jax.ShapeDtypeStruct((n,), jnp.int32)}

    state = None
    if ae_dir is not None:
        restored, meta = _restore(setup, ae_dir, pretrained)
        setup.say(f"pretrained autoencoder restored from {ae_dir} (epoch {meta.get('epoch')}); pretraining skipped")
        state = {"stage": INIT, "params": restored["ae"], "opt": None, "epoch": 0,
                 "history": {**_new_history(), "pretrain_loss": list(meta.get("pretrain_loss", []))}}
    _claim(setup, folder, fingerprint)
    cluster_dir, pretrain_dir = setup.sub(CLUSTER), setup.sub(PRETRAIN)
    if resume and cluster_dir and checkpoint.latest_step(cluster_dir) is not None:
        restored, meta = _restore(setup, cluster_dir, clustering)
        state = {"stage": CLUSTER, "params": restored["params"], "opt": restored["opt"], "p": restored["p"],
                 "last": np.asarray(restored["last"]).astype(np.int64), "epoch": int(meta["epoch"]),
                 "history": {**_new_history(), **meta.get("history", {})}}
        setup.say(f"resuming clustering from epoch {state['epoch']} ({cluster_dir})")
    elif resume and ae_dir is None and pretrain_dir and checkpoint.latest_step(pretrain_dir) is not None:
        restored, meta = _restore(setup, pretrain_dir, pretrained)
        state = {"stage": PRETRAIN, "params": restored["ae"], "opt": restored["opt"], "epoch": int(meta["epoch"]),
                 "history": {**_new_history(), "pretrain_loss": list(meta.get("pretrain_loss", []))}}
        setup.say(f"resuming pretraining from epoch {state['epoch']} ({pretrain_dir})")
    elif state is None:
        ae = build_model(cfg, setup.n_genes, cfg.seed, n_batches=setup.n_batches)[1]
        state = {"stage": PRETRAIN, "params": ae, "opt": amsgrad_torch(cfg.lr_pretrain).init(ae), "epoch": 0,
                 "history": _new_history()}
    state["params"], state["opt"] = setup.put((state["params"], state["opt"]))
    if state.get("p") is not None:
        state["p"] = setup.put(state["p"])
    return state


# ---- stages ---------------------------------------------------------------------------------------

def pretrain(setup: _Setup, state: dict) -> dict:
    """ZINB pretraining of the autoencoder from ``state["epoch"]`` to ``cfg.pretrain_epochs``."""
    cfg, ck_dir, history = setup.cfg, setup.sub(PRETRAIN), state["history"]
    tx = amsgrad_torch(cfg.lr_pretrain)
    epoch_fn = setup.source.epoch(partial(pretrain_loss, graphdef=setup.graphdef, sigma=cfg.sigma,
                                          ridge_lambda=cfg.ridge_lambda), tx, shuffle=True)
    ae, opt_state = state["params"], state["opt"]
    bar = _Progress(cfg.pretrain_epochs, "pretrain", setup.progress, initial=state["epoch"])
    try:
        for epoch in range(state["epoch"], cfg.pretrain_epochs):
            ae, opt_state, means = epoch_fn(ae, opt_state, stage_key(cfg.seed, 1, epoch))
            loss = float(means["loss"])
            if not np.isfinite(loss):
                raise _diverged("pretraining", epoch + 1, setup.work, PRETRAIN)
            history["pretrain_loss"].append(loss)
            bar.update(zinb=loss)
            done = epoch + 1
            if ck_dir and (done % cfg.checkpoint_every == 0 or done == cfg.pretrain_epochs):
                checkpoint.save(ck_dir, done, {"ae": ae, "opt": opt_state},
                                setup.meta(PRETRAIN, done, pretrain_loss=history["pretrain_loss"]))
    finally:
        bar.close()
    if ck_dir and distributed.is_primary():
        manifest.write(ck_dir, PRETRAIN_KIND)
    return {**state, "stage": INIT, "params": ae, "opt": None, "epoch": 0}


def init_clusters(setup: _Setup, state: dict) -> dict:
    """Centres of k-means (``n_clusters`` > 0) or of a Louvain/Leiden partition on the clean latent
    (with ``init_from = "kmeans"``: of k-means with the partition's number of clusters), of
    ``init_cells`` random cells, the others then in their nearest centre's cluster."""
    cfg = setup.cfg
    z0 = setup.source.encoder(setup.graphdef)(state["params"])
    some = subsample(len(z0), cfg.init_cells, cfg.seed)
    if len(some) < len(z0):
        setup.say(f"initial clusters from {len(some)} of the {len(z0)} cells (init_cells), the rest to the nearest centre")
    k, from_kmeans = cfg.n_clusters, cfg.n_clusters > 0 or cfg.init_from == "kmeans"
    if k == 0:
        last = community_labels(z0[some], knn=cfg.knn, resolution=cfg.resolution, method=cfg.community,
                                seed=cfg.seed)
        k = int(last.max()) + 1  # communities are numbered 0..k-1
        setup.say(f"{cfg.community} at resolution {cfg.resolution} on a {cfg.knn}-NN graph found {k} clusters"
                  + (", started from k-means with that many" if from_kmeans else ""))
    if from_kmeans:
        centers, last = kmeans(z0[some], k, n_init=cfg.kmeans_n_init, seed=cfg.seed)
    else:
        centers = centres_of(z0[some], last)
    if len(some) < len(z0):
        last = nearest_centre(z0, centers)
    params = {"ae": state["params"], "mu": jnp.asarray(centers)}
    if setup.labels is not None:
        state["history"]["init_scores"] = clustering_scores(setup.labels, last)
    params, opt_state = setup.put((params, adadelta_torch(cfg.lr_cluster).init(params)))
    return {**state, "stage": CLUSTER, "params": params, "opt": opt_state, "p": None, "last": last, "epoch": 0}


def cluster(setup: _Setup, state: dict) -> dict:
    """The DEC stage: ``gamma * KL(p || q) + ZINB`` with the target ``p`` updated every
    ``update_interval`` epochs, until fewer than ``tol`` of the labels change or ``maxiter``.

    Adds the final clean latent ``"z0"`` (n, latent), soft assignments ``"q"`` (n, k) and
    ``"stop_reason"`` to the state.
    """
    cfg, ck_dir, history = setup.cfg, setup.sub(CLUSTER), state["history"]
    assign = setup.source.assigner(setup.graphdef, cfg.alpha)
    epoch_fn = setup.source.epoch(partial(cluster_loss, graphdef=setup.graphdef, sigma=cfg.sigma, gamma=cfg.gamma,
                                          alpha=cfg.alpha, ridge_lambda=cfg.ridge_lambda, batch_mmd=cfg.batch_mmd),
                                  adadelta_torch(cfg.lr_cluster), shuffle=False)
    params, opt_state, p, last = state["params"], state["opt"], state["p"], state["last"]
    k = params["mu"].shape[0]
    bar = _Progress(cfg.maxiter, "cluster", setup.progress, initial=state["epoch"])
    stop_reason = "maxiter"
    z0 = q = None
    try:
        for epoch in range(state["epoch"], cfg.maxiter + 1):
            if epoch % cfg.update_interval == 0 or epoch == cfg.maxiter:
                z0, q, p, pred = assign(params)
                pred = pred.astype(np.int64)
                delta, prev = float(np.mean(pred != last)), last
                if setup.labels is not None:
                    history["scores"].append({"epoch": epoch, **clustering_scores(setup.labels, pred),
                                              "delta": delta})
                last = pred
                if epoch > 0 and delta < cfg.tol:
                    stop_reason = "tol"
                    bar.write(f"clustering stopped at epoch {epoch}: {int(np.sum(pred != prev))} of {len(pred)} "
                              f"cells changed cluster since the last target update (fewer than tol {cfg.tol} of "
                              "them)")
                    break
            if epoch == cfg.maxiter:
                break
            params, opt_state, means = epoch_fn(params, opt_state, stage_key(cfg.seed, 2, epoch),
                                                {"p": p})
            loss, kl, zinb = (float(means[m]) for m in ("loss", "kl", "zinb"))
            if not np.isfinite(loss):
                raise _diverged("clustering", epoch + 1, setup.work, CLUSTER)
            record = {"epoch": epoch + 1, "loss": loss, "kl": kl, "zinb": zinb}
            if "mmd" in means:
                record["mmd"] = float(means["mmd"])
            history["cluster"].append(record)
            post = {"loss": loss, "kl": kl, "delta": delta}
            if history["scores"]:
                post.update({m: history["scores"][-1][m] for m in ("ari", "nmi", "acc")})
            bar.update(**post)
            done = epoch + 1
            if ck_dir and done % cfg.checkpoint_every == 0:
                checkpoint.save(ck_dir, done, {"params": params, "opt": opt_state, "p": p,
                                               "last": jnp.asarray(last, jnp.int32)},
                                setup.meta(CLUSTER, done, n_clusters=k, history=history))
    finally:
        bar.close()
    return {**state, "params": params, "opt": opt_state, "p": p, "last": last, "z0": z0, "q": q,
            "stop_reason": stop_reason}


# ---- the driver -----------------------------------------------------------------------------------

def _save_model(setup: _Setup, state: dict, prep, gene_names: list | None, n_input_genes: int) -> None:
    """The final model (network, centres, training normalisation) in ``save_dir/model``, for ``predict``."""
    checkpoint.save(setup.sub(MODEL), 0, {"params": state["params"], "norm_mean": prep.norm["mean"],
                                          "norm_std": prep.norm["std"]},
                    setup.meta(MODEL, len(state["history"]["cluster"]), n_clusters=state["params"]["mu"].shape[0],
                               gene_names=gene_names, batch_names=prep.data.batch_names,
                               median_total=prep.norm["median_total"], n_input_genes=n_input_genes,
                               kept_genes=[int(i) for i in prep.genes]))
    if distributed.is_primary():
        manifest.write(setup.sub(MODEL), MODEL_KIND)


def run(data: CountData | CellStore, cfg: ClusterConfig, *, save_dir: str | None = None,
        ae_weights: str | None = None, resume: bool = False, overwrite: bool = False, progress: bool = True,
        block_cells: int = BLOCK_CELLS, hold: bool = False) -> ClusterResult:
    """Preprocess ``data`` and run scDeepCluster with ``cfg``; see the module docstring.

    ``data`` is counts in memory, or a :class:`~scdc_jax.store.CellStore` whose cells are read from
    disk ``block_cells`` at a time in every pass (:mod:`scdc_jax.cluster.source`); with ``hold``,
    a store's cells are read once, after the preprocessing's passes, and held in memory for the
    whole run as counts given in memory are, each process of a multi-process run reading only the
    rows its devices hold (the same run as from counts in memory).
    """
    cfg.validate()
    progress = progress and distributed.is_primary()  # one process of a multi-process run reports
    from_store = isinstance(data, CellStore)
    streamed = from_store and not hold
    ensemble.check(cfg, streamed=streamed, resume=resume, ae_weights=ae_weights)
    if cfg.batch_mmd and (data.annotations if from_store else data).batch is None:
        raise InputError(f"{option('batch_mmd', cfg.batch_mmd)} mixes batches, but the data has none; give "
                         f"{option('batch_key')} (or an .h5 file with a one-hot B).")
    ae_dir = _resolve_ae_weights(ae_weights) if ae_weights is not None else None  # checked before any work
    folder = run_folder(save_dir, resume=resume, overwrite=overwrite) if save_dir else None
    t_start = time.perf_counter()
    prep = (stream_prepare(data, select_genes_n=cfg.select_genes, block=block_cells, progress=_say(progress))
            if from_store else prepare(data, select_genes_n=cfg.select_genes))
    n, g = prep.shape
    nb = 0 if prep.data.batch is None else prep.data.batch.shape[1]
    if cfg.n_clusters > n:
        raise InputError(f"{option('n_clusters', cfg.n_clusters)} is more than the {n} cells left after filtering.")
    labels = prep.data.labels
    if progress:
        print(f"data: {n} cells x {g} genes" + (f", {nb} batches" if nb else "")
              + (f", {len(np.unique(labels))} labelled types" if labels is not None else ""), file=sys.stderr)
    mesh = make_mesh(cfg.devices) if cfg.devices > 1 else None
    rep = replicated(mesh) if mesh is not None else None
    bshard = data_sharded(mesh) if mesh is not None else None
    if streamed:
        source = Streamed(data, prep, batch_size=cfg.batch_size, block=block_cells, sharding=rep, batch_sharding=bshard)
        if progress:
            print(f"streaming {data.path} in {len(source.spans)} blocks of up to {block_cells} cells", file=sys.stderr)
    elif from_store:
        source = InMemory.process_rows(data, prep, batch_size=cfg.batch_size, sharding=rep, batch_sharding=bshard)
        if progress and jax.process_count() > 1:
            print(f"each of the {jax.process_count()} processes holds its devices' rows of the {n} cells",
                  file=sys.stderr)
    else:
        source = InMemory(device_data(prep, sharding=rep), batch_size=cfg.batch_size, batch_sharding=bshard)
    setup = _Setup(cfg, source, abstract_model(cfg, g, n_batches=nb)[0], g, nb, labels, rep, progress)

    fingerprint = _fingerprint(cfg, prep, block_cells if streamed else 0)
    timings: dict[str, float] = {}
    if cfg.ensemble > 1:
        _claim(setup, folder, fingerprint)
        state = ensemble.train(setup, _Progress, timings)
    else:
        state = restore_or_init(setup, folder, fingerprint, ae_dir=ae_dir, resume=resume)
        for name, stage, step in (("pretrain_s", PRETRAIN, pretrain), ("init_s", INIT, init_clusters),
                                  ("cluster_s", CLUSTER, cluster)):
            t0 = time.perf_counter()
            if state["stage"] == stage:
                state = step(setup, state)
            timings[name] = time.perf_counter() - t0
    history = state["history"]
    timings["total_s"] = time.perf_counter() - t_start
    timings["cluster_epochs"] = len(history["cluster"])

    gene_names = None if prep.data.gene_names is None else [str(x) for x in prep.data.gene_names]
    if setup.work:
        _save_model(setup, state, prep, gene_names, data.n_genes)
        if distributed.is_primary():
            folder.commit()
    last = state["last"]
    z0, q, centers = checkpoint.to_host((state["z0"], state["q"], state["params"]["mu"]))
    return ClusterResult(labels=last, latent=z0, q=q, centers=centers, cells=prep.cells, genes=prep.genes,
                         n_cells_input=data.n_cells, config=cfg.to_dict(), history=history,
                         scores=clustering_scores(labels, last) if labels is not None else None,
                         timings=timings, stop_reason=state["stop_reason"], gene_names=gene_names,
                         ensemble=state.get("ensemble"),
                         mixing=(batch_mixing(z0, prep.data.batch.argmax(1), groups=last, seed=cfg.seed)
                                 if nb > 1 else None))
