"""Seed ensembles: N scDeepCluster models trained side by side as one vmapped program.

Member ``m`` is the run with seed ``cfg.seed + m`` (its own initial weights, noise, cell orders
and k-means restarts); all members share the cells on the device(s), and every compiled epoch
advances all of them (:func:`~scdc_jax.cluster.train.make_epoch` with ``members``).  The stages:

1. pretraining of the N autoencoders together;
2. the number of clusters: given, or estimated once for all members (:func:`estimate_k`);
3. k-means on each member's pretrained latent space (its seed); with ``ensemble_init =
   "joint"`` (default) k-means on the members' latent spaces side by side (:func:`joint_start`),
   with ``"consensus"`` the vote of the members' partitions (:func:`consensus_start`), is every
   member's starting partition, each member starting from its clusters' centres in its own
   latent space; then the DEC stage of all members together; a member stops as a single run does
   (fewer than ``tol`` of its labels changed), is kept as it was then, and the others go on;
4. a consensus of the members' labelings (:func:`consensus_labels`, ``cfg.consensus``), the
   agreement between the members, and per member the label-free criteria
   (:func:`member_criteria`); the labels the run returns are the consensus or the best member by
   one criterion (``ensemble_select``).

With ``ensemble_init = "member"`` each member starts from its own k-means and trains as the single
run of its seed with the given number of clusters: the same weights, noise, cell order and start;
only the batched matrix products round differently (on small data the same labels; over 300 epochs
on real data the results drift apart: see the README).  The network saved as the run's model is
the member that agrees best with the returned labels, so ``predict`` works as for a single run.  An
ensemble run writes no periodic checkpoints (``--resume`` is refused for it).
"""
from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint
from ..errors import InputError, TrainingDiverged, option
from ..losses import soft_assign
from ..metrics import clustering_scores
from ..optim import adadelta_torch, amsgrad_torch
from .config import CHOICES
from .init import by_size, centres_of, communities, kmeans, kmeans_some, knn_graph, subsample
from .train import build_model, cluster_loss, pretrain_loss, stage_key

CONSENSUS = CHOICES["consensus"]
STABILITY_TIE = 0.02


def stack(trees: list):
    """One tree whose leaves stack the leaves of ``trees`` on a new leading (members) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member(tree, m: int):
    """Member ``m`` of a stacked tree, on the host."""
    return checkpoint.to_host(jax.tree.map(lambda a: a[m], tree))


def _keys(seeds: list[int], stage: int, epoch: int) -> jax.Array:
    return jnp.stack([stage_key(s, stage, epoch) for s in seeds])


# ---- consensus, agreement, criteria (host, NumPy / scikit-learn) ----------------------------------

def membership(member_labels: np.ndarray) -> np.ndarray:
    """(n, sum of k_m) float32: each member's one-hot labels side by side, scaled by 1/sqrt(N), so
    that ``H @ H.T`` is the co-association matrix (the fraction of members that put two cells in
    one cluster) and squared distances between rows are ``2 (1 - co-association)``."""
    labels = np.asarray(member_labels)
    blocks = [np.eye(int(lab.max()) + 1, dtype=np.float32)[lab] for lab in labels]
    return np.concatenate(blocks, axis=1) / np.sqrt(len(labels))


def consensus_labels(member_labels: np.ndarray, k: int, *, method: str = "vote",
                     member_q: np.ndarray | None = None, n_init: int = 20, seed: int = 0,
                     max_cells: int = 5000) -> np.ndarray:
    """(n,) consensus of N labelings (N, n) into ``k`` clusters, numbered by decreasing size, by
    ``method``:

    ``average``: average-linkage hierarchical clustering of ``1 - co-association`` (evidence
    accumulation, Fred & Jain 2005), cut into ``k`` clusters; on at most ``max_cells`` cells drawn
    with ``seed``, every other cell then joining the cluster it is co-assigned with most often
    (its mean co-association with the cluster's cells).
    ``vote``: each member's clusters matched to those of the member that agrees best with the
    others (Hungarian matching of their contingency table), the members' soft assignments
    ``member_q`` (N, n, k) summed in the matched order, and each cell's largest sum; one-hot
    labels when ``member_q`` is None.
    ``kmeans``: k-means (``n_init`` restarts) on the rows of :func:`membership`, which minimises
    the within-cluster sum of ``1 - co-association`` without forming the n x n matrix.
    """
    labels = np.asarray(member_labels)
    if method == "kmeans":
        return by_size(kmeans(membership(labels), k, n_init=n_init, seed=seed)[1])
    if method == "vote":
        return _vote(labels, k, member_q)
    if method == "average":
        return _average_linkage(labels, k, max_cells, seed)
    raise ValueError(f"unknown consensus method {method!r}; one of {CONSENSUS}")


def _average_linkage(labels: np.ndarray, k: int, max_cells: int, seed: int) -> np.ndarray:
    from scipy.cluster.hierarchy import cut_tree, linkage
    from scipy.spatial.distance import pdist

    h = membership(labels).astype(np.float64)
    some = subsample(h.shape[0], max_cells, seed)
    # squared distances between rows of h are 2 (1 - co-association)
    tree = linkage(pdist(h[some], "sqeuclidean") / 2.0, method="average")
    part = cut_tree(tree, n_clusters=min(k, len(some)))[:, 0]
    if len(some) == h.shape[0]:
        return by_size(part)
    sums = np.zeros((int(part.max()) + 1, h.shape[1]))
    np.add.at(sums, part, h[some])
    mean_co = h @ (sums / np.bincount(part)[:, None]).T  # (n, k): mean co-association with each cluster
    out = np.argmax(mean_co, axis=1)
    out[some] = part
    return by_size(out)


def _vote(labels: np.ndarray, k: int, member_q: np.ndarray | None) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    n_members, n = labels.shape
    k = max(k, int(labels.max()) + 1)
    q = np.eye(k)[labels] if member_q is None else np.asarray(member_q, np.float64)
    ref = int(np.argmax(pairwise_ari(labels).sum(1)))
    total = np.zeros((n, k))
    for m in range(n_members):
        table = np.zeros((k, k))
        np.add.at(table, (labels[ref], labels[m]), 1.0)
        rows, cols = linear_sum_assignment(-table)  # member cluster cols[i] is the reference's rows[i]
        total[:, rows] += q[m][:, cols]
    return by_size(np.argmax(total, axis=1))


def consensus_start(latents: np.ndarray, centres: np.ndarray, labels: np.ndarray, k: int, *, alpha: float = 1.0,
                    chunk: int = 65536) -> tuple[np.ndarray, np.ndarray] | None:
    """One starting partition for every member's DEC stage: the vote (:func:`consensus_labels`) of
    the members' initial partitions ``labels`` (N, n), weighted by their Student's t soft
    assignments to their ``centres`` (N, k, d) in their ``latents`` (N, n, d).  Returns (each
    member's centres of that partition in its own latent space (N, k, d), the partition (n,)),
    or None when the vote leaves fewer than ``k`` clusters (the members then keep their own)."""
    q = np.stack([np.concatenate([np.asarray(soft_assign(z[a:a + chunk], c, alpha)) for a in range(0, len(z), chunk)])
                  for z, c in zip(latents, centres)])
    start = consensus_labels(labels, k, method="vote", member_q=q)
    if int(start.max()) + 1 < k:
        return None
    return np.stack([centres_of(np.asarray(z), start) for z in latents]), start


def joint_latent(latents: np.ndarray) -> np.ndarray:
    """(n, N * d) float32: the members' latents (N, n, d) side by side, each centred and scaled to a
    mean squared norm of 1, so that every member weighs alike in the squared distance between two
    cells (the sum of the members' scaled squared distances)."""
    parts = []
    for z in latents:
        z = np.asarray(z, np.float64)
        z = z - z.mean(0)
        parts.append(z / max(np.sqrt((z ** 2).sum(1).mean()), 1e-12))
    return np.concatenate(parts, axis=1).astype(np.float32)


def joint_start(latents: np.ndarray, k: int, *, n_init: int, seed: int, init_cells: int = 0):
    """One starting partition for every member's DEC stage: k-means (``n_init`` restarts, ``seed``;
    on ``init_cells`` cells, the others to the nearest centre) on the :func:`joint_latent` of the
    members.  Returns (each member's centres of that partition in its own latent space (N, k, d),
    the partition (n,)), or None when it has fewer than ``k`` clusters."""
    joint = joint_latent(latents)
    start = by_size(kmeans_some(joint, k, subsample(joint.shape[0], init_cells, seed), n_init=n_init, seed=seed)[1])
    if int(start.max()) + 1 < k:
        return None
    return np.stack([centres_of(np.asarray(z), start) for z in latents]), start


def pairwise_ari(member_labels: np.ndarray) -> np.ndarray:
    """(N, N) adjusted Rand index between every two labelings (ones on the diagonal)."""
    from sklearn.metrics import adjusted_rand_score

    n = len(member_labels)
    out = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = adjusted_rand_score(member_labels[i], member_labels[j])
    return out


def mean_off_diagonal(ari: np.ndarray) -> float:
    """The mean of a :func:`pairwise_ari` matrix over distinct pairs: the members' agreement."""
    return float(ari[np.triu_indices(len(ari), 1)].mean())


def member_criteria(member_labels: np.ndarray, latents: np.ndarray, zinb: np.ndarray, *,
                    max_cells: int = 5000, seed: int = 0) -> list[dict]:
    """Label-free criteria of each member: ``agreement`` (mean ARI with the other members; higher
    is better), ``silhouette`` (of its labels in its own latent space, on at most ``max_cells``
    cells; higher is better) and ``zinb`` (the ZINB NLL of its last clustering epoch; lower is
    better)."""
    from sklearn.metrics import silhouette_score

    ari = pairwise_ari(member_labels)
    n_members, n = np.shape(member_labels)
    some = subsample(n, max_cells, seed)
    out = []
    for m in range(n_members):
        lab = member_labels[m][some]
        sil = float(silhouette_score(latents[m][some], lab)) if len(np.unique(lab)) > 1 else float("nan")
        others = np.delete(ari[m], m)
        out.append({"agreement": float(others.mean()) if len(others) else float("nan"), "silhouette": sil,
                    "zinb": float(zinb[m])})
    return out


def best_member(criteria: list[dict], by: str) -> int:
    """Index of the best member by the criterion ``by`` (``zinb`` lowest, the others highest)."""
    values = np.array([c[by] for c in criteria], np.float64)
    values = np.where(np.isnan(values), np.inf if by == "zinb" else -np.inf, values)
    return int(np.argmin(values) if by == "zinb" else np.argmax(values))


def stability_curve(latents: np.ndarray, ks, *, n_init: int = 5, seed: int = 0,
                    max_cells: int = 3000) -> dict[int, float]:
    """For each k: the mean ARI between the k-means labelings of the members' latent spaces (each
    with its own seed) on the same ``max_cells`` random cells.  A k that splits the data where
    the data has structure is found by every member; one that cuts a population arbitrarily is
    cut differently in each member's space and scores lower."""
    some = subsample(latents.shape[1], max_cells, seed)
    curve = {}
    for k in ks:
        labels = np.stack([kmeans(z[some], k, n_init=n_init, seed=seed + m)[1] for m, z in enumerate(latents)])
        curve[int(k)] = mean_off_diagonal(pairwise_ari(labels))
    return curve


RESOLUTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def resolution_curve(graphs: list, seeds: list[int], *, resolutions=RESOLUTIONS, method: str = "louvain",
                     keep_labels: bool = False) -> dict[float, dict]:
    """For each resolution: Louvain/Leiden on every member's graph (its seed), the members'
    labelings' mean pairwise ARI (``stability``), their numbers of communities (``k``) and, with
    ``keep_labels``, the labelings (``labels``, (N, n))."""
    curve = {}
    for r in resolutions:
        labels = np.stack([communities(g, resolution=r, method=method, seed=s) for g, s in zip(graphs, seeds)])
        curve[float(r)] = {"stability": mean_off_diagonal(pairwise_ari(labels)),
                           "k": [int(lab.max()) + 1 for lab in labels], **({"labels": labels} if keep_labels else {})}
    return curve


def estimate_k(latents: np.ndarray, cfg, seeds: list[int], say=None) -> tuple[int, dict]:
    """The number of clusters of all members from their pretrained latents (N, n, d).

    ``louvain``: Louvain/Leiden (``knn``, ``resolution``) on each member's latent, the median of
    the members' counts.  ``stability``: the k of 2..K with the highest :func:`stability_curve`,
    K the largest count Louvain finds in a member; stabilities within ``STABILITY_TIE`` of the
    highest count as ties and go to the larger k (merging well separated populations is as
    stable as finding them).  ``resolution``: the resolution of ``RESOLUTIONS`` whose
    communities agree most between the members (:func:`resolution_curve`; the lowest on exact
    ties), the median of the members' counts there.
    Returns (k, what was measured).
    """
    some = subsample(latents.shape[1], cfg.init_cells, cfg.seed)
    graphs = [knn_graph(z[some], cfg.knn, seed=s) for z, s in zip(latents, seeds)]
    found = [int(communities(g, resolution=cfg.resolution, method=cfg.community, seed=s).max()) + 1
             for g, s in zip(graphs, seeds)]
    info = {"method": cfg.k_estimate, "louvain_k": found}
    how = ""
    if cfg.k_estimate == "louvain":
        k = int(np.round(np.median(found)))
    elif cfg.k_estimate == "stability":
        curve = stability_curve(latents, range(2, max(max(found), 2) + 1), seed=cfg.seed)
        best = max(curve.values())
        k = max(kk for kk, v in curve.items() if v >= best - STABILITY_TIE)
        info["stability"] = curve
    else:
        curve = resolution_curve(graphs, seeds, method=cfg.community)
        chosen = max(curve, key=lambda r: curve[r]["stability"])
        k = int(np.round(np.median(curve[chosen]["k"])))
        info.update({"resolution": {str(r): v for r, v in curve.items()}, "chosen_resolution": chosen})
        how = f" (their communities agree most at resolution {chosen}: mean ARI {curve[chosen]['stability']:.2f})"
    if say:
        say(f"{cfg.community} at resolution {cfg.resolution} found {found} clusters in the members' latent "
            f"spaces; {cfg.k_estimate} estimate: {k} clusters{how}")
    info["k"] = k
    return max(k, 2), info


# ---- training -------------------------------------------------------------------------------------

def _pretrain(setup, seeds: list[int], progress_cls):
    cfg = setup.cfg
    tx = amsgrad_torch(cfg.lr_pretrain)
    ae = stack([build_model(cfg, setup.n_genes, s, n_batches=setup.n_batches)[1] for s in seeds])
    opt = jax.vmap(tx.init)(ae)
    ae, opt = setup.put((ae, opt))
    epoch_fn = setup.source.epoch(partial(pretrain_loss, graphdef=setup.graphdef, sigma=cfg.sigma,
                                          ridge_lambda=cfg.ridge_lambda), tx, shuffle=True, members=True)
    losses = []
    bar = progress_cls(cfg.pretrain_epochs, f"pretrain x{len(seeds)}", setup.progress)
    try:
        for epoch in range(cfg.pretrain_epochs):
            ae, opt, means = epoch_fn(ae, opt, _keys(seeds, 1, epoch))
            loss = np.asarray(means["loss"], np.float64)
            if not np.all(np.isfinite(loss)):
                raise _diverged("pretraining", epoch + 1, int(np.flatnonzero(~np.isfinite(loss))[0]), seeds)
            losses.append(loss)
            bar.update(zinb=float(loss.mean()))
    finally:
        bar.close()
    return ae, np.asarray(losses).T  # (members, epochs)


def _diverged(stage: str, epoch: int, m: int, seeds: list[int]) -> TrainingDiverged:
    return TrainingDiverged(f"the {stage} loss of ensemble member {m} (seed {seeds[m]}) became non-finite at "
                            f"epoch {epoch}. Try a smaller {option('sigma')} or learning rate, or check the input counts.")


def _cluster(setup, ae, centres: np.ndarray, last: np.ndarray, seeds: list[int], progress_cls,
             on_update=None) -> list[dict]:
    """The DEC stage of all members; per member its final state as a single run would end.
    ``on_update(epoch, z0, q, pred)``, if given, sees every member's latent, soft assignments and
    labels at each target update (before any member stops there)."""
    cfg = setup.cfg
    tx = adadelta_torch(cfg.lr_cluster)
    params = {"ae": ae, "mu": jnp.asarray(centres)}
    opt = jax.vmap(tx.init)(params)
    params, opt = setup.put((params, opt))
    assign = setup.source.assigner(setup.graphdef, cfg.alpha, members=True)
    epoch_fn = setup.source.epoch(partial(cluster_loss, graphdef=setup.graphdef, sigma=cfg.sigma, gamma=cfg.gamma,
                                          alpha=cfg.alpha, ridge_lambda=cfg.ridge_lambda, batch_mmd=cfg.batch_mmd),
                                  tx, shuffle=False, members=True)
    n_members = len(seeds)
    done: list[dict | None] = [None] * n_members
    history = [{"cluster": [], "scores": []} for _ in seeds]
    zinb = np.full(n_members, np.nan)
    bar = progress_cls(cfg.maxiter, f"cluster x{n_members}", setup.progress)

    def finish(m, reason, epoch, z0, q, pred):
        done[m] = {"labels": pred[m].astype(np.int64), "z0": z0[m], "q": q[m], "params": member(params, m),
                   "stop_reason": reason, "epochs": epoch, "zinb": float(zinb[m]), "history": history[m]}
        if reason == "tol":
            bar.write(f"member {m} (seed {seeds[m]}) stopped at clustering epoch {epoch}")

    try:
        for epoch in range(cfg.maxiter + 1):
            active = [m for m in range(n_members) if done[m] is None]
            if epoch % cfg.update_interval == 0 or epoch == cfg.maxiter:
                z0, q, p, pred = assign(params)
                if on_update is not None:
                    on_update(epoch, z0, q, pred)
                for m in active:
                    delta = float(np.mean(pred[m] != last[m]))
                    if setup.labels is not None:
                        history[m]["scores"].append({"epoch": epoch, **clustering_scores(setup.labels, pred[m]),
                                                     "delta": delta})
                    last[m] = pred[m]
                    if epoch > 0 and delta < cfg.tol:
                        finish(m, "tol", epoch, z0, q, pred)
                active = [m for m in active if done[m] is None]
                if epoch == cfg.maxiter:
                    for m in active:
                        finish(m, "maxiter", epoch, z0, q, pred)
                    active = []
            if not active:
                break
            params, opt, means = epoch_fn(params, opt, _keys(seeds, 2, epoch), {"p": p})
            measured = {k: np.asarray(v, np.float64) for k, v in means.items()}
            for m in active:
                if not np.isfinite(measured["loss"][m]):
                    raise _diverged("clustering", epoch + 1, m, seeds)
                history[m]["cluster"].append({"epoch": epoch + 1, **{k: float(v[m]) for k, v in measured.items()}})
                zinb[m] = measured["zinb"][m]
            bar.update(loss=float(measured["loss"][active].mean()), running=len(active))
    finally:
        bar.close()
    return done


def start_partition(setup, z, k: int, seeds: list[int]):
    """Where the members' DEC stage starts (stage 3 of the module docstring): k-means with the
    member's seed on its latent ``z[m]`` (on ``init_cells`` cells, the others to the nearest
    centre), then with ``ensemble_init = "joint"`` :func:`joint_start`, with ``"consensus"``
    :func:`consensus_start`.  Returns (centres (N, k, d), labels (N, n), the start used (``"member"``
    when the common partition has fewer than k clusters), the members' k-means partitions' mean
    pairwise ARI)."""
    cfg = setup.cfg
    some = subsample(z.shape[1], cfg.init_cells, cfg.seed)
    centres, last = map(np.stack, zip(*[kmeans_some(np.asarray(z[m]), k, some, n_init=cfg.kmeans_n_init, seed=s)
                                         for m, s in enumerate(seeds)]))
    agreement = mean_off_diagonal(pairwise_ari(last))
    if cfg.ensemble_init == "member":
        return centres, last, "member", agreement
    if cfg.ensemble_init == "joint":
        common = joint_start(np.asarray(z), k, n_init=cfg.kmeans_n_init, seed=cfg.seed, init_cells=cfg.init_cells)
        what = "k-means of the joint latent space"
    else:
        common = consensus_start(np.asarray(z), centres, last, k, alpha=cfg.alpha)
        what = "vote of the members' k-means partitions"
    if common is None:
        setup.say(f"the {what} has fewer than {k} clusters; each member starts from its own")
        return centres, last, "member", agreement
    return common[0], np.stack([common[1]] * len(seeds)), cfg.ensemble_init, agreement


def train(setup, progress_cls, timings: dict) -> dict:
    """Run the ensemble of ``setup.cfg.ensemble`` members (see the module docstring); returns the
    pipeline's final train state (the representative member's network, centres, latent and soft
    assignments, the returned labels) with ``"ensemble"``: what a user needs to judge the members.
    ``timings`` receives the stages' seconds (``pretrain_s``, ``init_s``, ``cluster_s``)."""
    cfg = setup.cfg
    seeds = [cfg.seed + m for m in range(cfg.ensemble)]
    t0 = time.perf_counter()
    ae, pre_losses = _pretrain(setup, seeds, progress_cls)
    timings["pretrain_s"] = time.perf_counter() - t0
    z = setup.source.encoder(setup.graphdef, members=True)(ae)
    k_info = None
    if cfg.n_clusters > 0:
        k = cfg.n_clusters
    else:
        k, k_info = estimate_k(z, cfg, seeds, setup.say)
    centres, last, start, init_agreement = start_partition(setup, z, k, seeds)
    init_scores = [clustering_scores(setup.labels, lab) for lab in last] if setup.labels is not None else None
    timings["init_s"] = time.perf_counter() - t0 - timings["pretrain_s"]
    t1 = time.perf_counter()
    members = _cluster(setup, ae, centres, last, seeds, progress_cls)
    timings["cluster_s"] = time.perf_counter() - t1

    member_labels = np.stack([mem["labels"] for mem in members])
    latents = np.stack([mem["z0"] for mem in members])
    criteria = member_criteria(member_labels, latents, np.array([mem["zinb"] for mem in members]), seed=cfg.seed)
    member_q = np.stack([mem["q"] for mem in members])
    consensus = consensus_labels(member_labels, k, method=cfg.consensus, member_q=member_q,
                                 n_init=cfg.kmeans_n_init, seed=cfg.seed)
    if cfg.ensemble_select == "consensus":
        labels = consensus
        to_labels = [clustering_scores(labels, lab)["ari"] for lab in member_labels]
        rep = int(np.argmax(to_labels))
    else:
        rep = best_member(criteria, cfg.ensemble_select)
        labels = member_labels[rep]
    ari = pairwise_ari(member_labels)
    for m, mem in enumerate(members):
        criteria[m].update({"seed": seeds[m], "stop_reason": mem["stop_reason"], "cluster_epochs": mem["epochs"],
                            "final_pretrain_loss": float(pre_losses[m, -1]) if pre_losses.size else None})
        if setup.labels is not None:
            criteria[m].update(clustering_scores(setup.labels, mem["labels"]))
    info = {"members": len(seeds), "seeds": seeds, "select": cfg.ensemble_select,
            "consensus_method": cfg.consensus, "init": start,
            "init_agreement": init_agreement, "representative": rep,
            "agreement": mean_off_diagonal(ari), "pairwise_ari": ari.tolist(),
            "criteria": criteria, "member_labels": member_labels, "member_q": member_q, "consensus": consensus,
            "k": int(k),
            "k_estimate": k_info}
    if setup.labels is not None:
        info["consensus_scores"] = clustering_scores(setup.labels, consensus)
    chosen = members[rep]
    history = {"pretrain_loss": pre_losses[rep].tolist(), **chosen["history"]}
    if init_scores is not None:
        history["init_scores"] = init_scores[rep]
    return {"stage": "done", "params": chosen["params"], "opt": None, "history": history, "last": labels,
            "z0": chosen["z0"], "q": chosen["q"], "stop_reason": chosen["stop_reason"], "ensemble": info}


def check(cfg, *, streamed: bool, resume: bool, ae_weights) -> None:
    """Refuse, in one sentence, what an ensemble run does not do."""
    if cfg.ensemble < 2:
        return
    for bad, what in ((streamed, "a streamed input (use --no-stream)"), (resume, "--resume (an ensemble run keeps "
                      "no periodic checkpoints)"), (ae_weights is not None, "--ae-weights (each member pretrains "
                      "its own autoencoder)")):
        if bad:
            raise InputError(f"{option('ensemble', cfg.ensemble)} cannot be combined with {what}.")
