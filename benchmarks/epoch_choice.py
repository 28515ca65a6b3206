"""Which epoch of the DEC stage to report: the stopping rule, a label-free choice, or the labels.

    python benchmarks/epoch_choice.py --seeds 0 4 --datasets bladder worm pbmc --maxiter 150 --cache DIR

Published scDeepCluster results stop the DEC stage when fewer than ``tol`` (0.001) of the labels
change between target updates; some reimplementations (DANCE) instead report the epoch whose labels
score best against the annotation.  This script runs the DEC stage past the stopping point
(``tol`` 0, ``--maxiter`` epochs, target updated every epoch as published) and records every
epoch's labels, so the same runs give: the ARI where the rule would stop (the product's result),
where larger tolerances (:data:`TOLS`) would stop, the best ARI over all epochs (the label-chosen
epoch: an upper bound no user can reach), the last epoch's, and other label-free choices of the
epoch: the least ZINB loss, the members' agreement (mean pairwise ARI, for an ensemble) and each
member's silhouette in its own latent space.

For each dataset and seed S, N autoencoders (seeds S..S+N-1, published pretraining) are pretrained
once (``--cache`` shares them with ``benchmarks/ensemble_init.py``) and run their DEC stage from
two starts: ``member`` (each its own k-means: every member then trains as the single run of its
seed) and ``joint`` (the ensemble default), with the true number of types.  Writes
``benchmarks/results/epoch_choice<tag>.{md,json}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from benchmarks.common import parse_cached, write_results  # noqa: E402
from benchmarks.ensemble_init import _ms, _setup, cached_row, pretrained  # noqa: E402
from benchmarks.k_estimate import DATA, DATASETS  # noqa: E402

STARTS = ("member", "joint")
TOLS = (0.001, 0.002, 0.005, 0.01)  # stopping rules: the published fraction of changed labels, and larger ones


def trajectory(setup, ae, z, k: int, seeds: list[int], start: str, maxiter: int, sil_cells: int) -> dict:
    """Every epoch's member ARIs, vote ARI, silhouettes, fractions of changed labels and ZINB
    losses of one DEC stage run to ``maxiter`` without stopping, and, for each stopping rule in
    :data:`TOLS`, where it stops each member and the ARIs of the members and of their vote there."""
    import jax

    from scdc_jax.cluster import ensemble, pipeline
    from scdc_jax.metrics import clustering_scores

    cfg = dataclasses.replace(setup.cfg, ensemble_init=start, n_clusters=k, tol=0.0, maxiter=maxiter)
    s = dataclasses.replace(setup, cfg=cfg, labels=None)  # no scoring inside: done here, once per epoch
    truth = np.asarray(setup.labels)
    centres, last, used, _ = ensemble.start_partition(s, z, k, seeds)
    n = len(seeds)
    rec = {"member_ari": [], "vote_ari": [], "agreement": [], "silhouette": [], "delta": []}
    stopped = {t: {} for t in TOLS}  # tol: {member: (epoch, labels, q)} where that rule ends it
    prev = [np.asarray(lab) for lab in last]

    def on_update(epoch, z0, q, pred):
        pred, q, z0 = np.asarray(pred), np.asarray(q), np.asarray(z0)
        delta = [float(np.mean(pred[m] != prev[m])) for m in range(n)]
        for t in TOLS:
            for m in range(n):
                if m not in stopped[t] and epoch > 0 and delta[m] < t:
                    stopped[t][m] = (epoch, pred[m].copy(), q[m].copy())
        prev[:] = [p.copy() for p in pred]
        crit = ensemble.member_criteria(pred, z0, np.zeros(n), max_cells=sil_cells, seed=0)
        vote = ensemble.consensus_labels(pred, k, method="vote", member_q=q)
        rec["member_ari"].append([clustering_scores(truth, lab)["ari"] for lab in pred])
        rec["vote_ari"].append(clustering_scores(truth, vote)["ari"])
        rec["agreement"].append(float(np.mean([c["agreement"] for c in crit])))  # = the mean pairwise ARI
        rec["silhouette"].append([c["silhouette"] for c in crit])
        rec["delta"].append(delta)

    t0 = time.perf_counter()
    fresh = jax.tree.map(lambda a: jax.numpy.array(a, copy=True), ae)  # the DEC stage donates its input
    done = ensemble._cluster(s, fresh, centres, last, seeds, pipeline._Progress, on_update=on_update)
    rec["zinb"] = [[e["zinb"] for e in d["history"]["cluster"]] for d in done]  # per member, epochs 1..maxiter
    rules = {}
    for t in TOLS:
        for m, d in enumerate(done):  # a member the rule never stopped ends at maxiter, as a run would
            stopped[t].setdefault(m, (maxiter, d["labels"], d["q"]))
        labels = np.stack([stopped[t][m][1] for m in range(n)])
        vote = ensemble.consensus_labels(labels, k, method="vote",
                                         member_q=np.stack([stopped[t][m][2] for m in range(n)]))
        rules[str(t)] = {"stop_epoch": [int(stopped[t][m][0]) for m in range(n)],
                         "member_ari": [clustering_scores(truth, lab)["ari"] for lab in labels],
                         "vote_ari": clustering_scores(truth, vote)["ari"]}
    return {**rec, "used": used, "rules": rules, "seconds": time.perf_counter() - t0}


def one_ensemble(name: str, seed: int, members: int, maxiter: int, sil_cells: int, cache: str | None,
                 row: dict | None = None) -> dict:
    setup, k = _setup(name, members, seed)
    seeds = [seed + m for m in range(members)]
    ae, pre_s = pretrained(setup, seeds, os.path.join(cache, f"{name}_{seed}_{members}.npz") if cache else None)
    z = setup.source.encoder(setup.graphdef, members=True)(ae)
    row = row or {"dataset": name, "seed": seed, "k": k, "members": members, "maxiter": maxiter, "pretrain_s": pre_s}
    for start in [s for s in STARTS if s not in row]:
        row[start] = trajectory(setup, ae, z, k, seeds, start, maxiter, sil_cells)
    return row


def _least_zinb(zinb: np.ndarray) -> np.ndarray:
    """The update epoch after each member's training epoch of least ZINB loss (``zinb`` (members,
    epochs 1..maxiter))."""
    return np.argmin(zinb, axis=-1) + 1


def choices(r: dict) -> dict:
    """Each epoch choice's ARI: per member of the member start (the single runs) and of the
    joint start's vote (the ensemble default)."""
    mem, joint = r["member"], r["joint"]
    ari = np.asarray(mem["member_ari"])  # (epochs, members)
    cols = np.arange(ari.shape[1])
    sil = np.nan_to_num(np.asarray(mem["silhouette"]), nan=-np.inf)
    vote = np.asarray(joint["vote_ari"])
    single = {f"tol {t}": mem["rules"][t]["member_ari"] for t in mem["rules"]}
    epochs = {f"tol {t}": mem["rules"][t]["stop_epoch"] for t in mem["rules"]}
    zin = _least_zinb(np.asarray(mem["zinb"]))
    single.update({"least zinb": ari[zin, cols].tolist(), "best silhouette": ari[sil.argmax(0), cols].tolist(),
                   "last": ari[-1].tolist(), "labels": ari.max(axis=0).tolist()})
    epochs.update({"least zinb": zin.tolist(), "best silhouette": sil.argmax(0).tolist(),
                   "last": [len(ari) - 1] * len(cols), "labels": ari.argmax(axis=0).tolist()})
    votes = {f"tol {t}": joint["rules"][t]["vote_ari"] for t in joint["rules"]}
    vepochs = {f"tol {t}": int(np.median(joint["rules"][t]["stop_epoch"])) for t in joint["rules"]}
    zj = int(_least_zinb(np.mean(joint["zinb"], axis=0)))
    ag = int(np.argmax(joint["agreement"]))
    votes.update({"least zinb": float(vote[zj]), "most agreement": float(vote[ag]), "last": float(vote[-1]),
                  "labels": float(vote.max())})
    vepochs.update({"least zinb": zj, "most agreement": ag, "last": len(vote) - 1, "labels": int(vote.argmax())})
    return {"single": single, "single_epoch": epochs, "vote": votes, "vote_epoch": vepochs}


def summarise(rows: list[dict]) -> tuple[dict, list[str]]:
    """Per dataset, two rows: the single runs' and the votes' ARI at each epoch choice (mean ± sd,
    the median epoch in brackets), and each choice's paired difference from the published rule."""
    first = choices(rows[0])
    names = list(dict.fromkeys([*first["single"], *first["vote"]]))
    out, lines = {}, ["| dataset | runs | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
    base = f"tol {TOLS[0]}"
    for name in dict.fromkeys(r["dataset"] for r in rows):
        cs = [choices(r) for r in rows if r["dataset"] == name]
        one = {c: [a for x in cs for a in x["single"][c]] for c in first["single"]}
        one_ep = {c: [a for x in cs for a in x["single_epoch"][c]] for c in first["single"]}
        ens = {c: [x["vote"][c] for x in cs] for c in first["vote"]}
        ens_ep = {c: [x["vote_epoch"][c] for x in cs] for c in first["vote"]}
        diff = {"single": {c: float(np.mean(np.subtract(v, one[base]))) for c, v in one.items()},
                "vote": {c: float(np.mean(np.subtract(v, ens[base]))) for c, v in ens.items()}}
        out[name] = {"single": one, "single_epoch": one_ep, "vote": ens, "vote_epoch": ens_ep,
                     "difference_from_published_rule": diff}

        def cell(v, ep):
            return f"{_ms(v)} ({int(np.median(ep))})" if v is not None else "-"

        lines.append(f"| {name}: single | {len(one[base])} | "
                     + " | ".join(cell(one.get(c), one_ep.get(c)) for c in names) + " |")
        lines.append(f"| {name}: vote | {len(cs)} x {rows[0]['members']} | "
                     + " | ".join(cell(ens.get(c), ens_ep.get(c)) for c in names) + " |")
    return out, lines


def _rounded(x, places: int = 4):
    """``x`` with every float rounded to ``places`` decimals (the result file's per-epoch curves)."""
    if isinstance(x, float):
        return round(x, places)
    if isinstance(x, list):
        return [_rounded(v, places) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v, places) for k, v in x.items()}
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["bladder", "worm", "pbmc"], choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 4], help="the ensembles' first seeds")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--maxiter", type=int, default=150, help="DEC epochs run, past the stopping rule")
    ap.add_argument("--sil-cells", type=int, default=1000, help="cells the silhouettes are computed on")
    args = parse_cached(ap, DATA, os.path.join(HERE, "results"))
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            row = cached_row(args.cache, f"epochs_{name}_{seed}_{args.members}_{args.maxiter}",
                             lambda r: all(s in r for s in STARTS),
                             lambda r: one_ensemble(name, seed, args.members, args.maxiter, args.sil_cells,
                                                    args.cache, r))
            rows.append(row)
            c = choices(row)
            print(json.dumps({"dataset": name, "seed": seed,
                              **{f"single {k}": round(float(np.mean(v)), 3) for k, v in c["single"].items()},
                              **{f"vote {k}": round(v, 3) for k, v in c["vote"].items()}}), flush=True)
    summary, table = summarise(rows)
    cmd = "python benchmarks/epoch_choice.py " + " ".join(sys.argv[1:])
    print(write_results(
        args.out, f"epoch_choice{args.tag}", "Which DEC epoch: the stopping rule, label-free choices, the labels",
        f"`{cmd}` ({time.strftime('%Y-%m-%d')}, CPU); k given; the DEC stage run {args.maxiter} epochs without "
        "stopping, every epoch's labels scored; ARI mean ± sd, in brackets the median epoch.  single: the "
        "members of the member-start runs (each the single run of its seed); vote: the joint-start ensemble's "
        "consensus (the default).  tol t: where fewer than t of the labels change between updates (0.001 is "
        "the published rule and the product's result); least zinb: after the training epoch of least ZINB loss "
        "(the members' mean for the vote); best silhouette: the epoch whose labels have the highest silhouette "
        "in the member's latent space; most agreement: the epoch where the members' mean pairwise ARI is "
        "highest; last: the last epoch; labels: the epoch of highest ARI (chosen with the annotation).", table,
        {"command": cmd, "summary": summary, "rows": _rounded(rows)}, indent=None))  # per-epoch curves: one line


if __name__ == "__main__":
    main()
