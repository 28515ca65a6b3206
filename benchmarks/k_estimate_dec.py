"""What an estimated number of clusters gives after the DEC stage: a seed ensemble's vote ARI.

    python benchmarks/k_estimate_dec.py --seeds 0 4 8 --datasets bladder worm pbmc baron pbmc68k cellbench --cache DIR

For each dataset and ensemble seed S: N autoencoders (seeds S..S+N-1, the published pretraining,
as ``python -m scdc_jax.cluster --ensemble N --n-clusters 0`` trains them) are pretrained once;
the number of clusters is estimated on their latent spaces by each of ``--estimates``
(:func:`scdc_jax.cluster.ensemble.estimate_k`: ``louvain``, the default, and ``resolution``; also
``stability``); then the DEC stage runs from the joint start (the default) with each estimated k
and with the true number of types, and the vote of the final members is scored against the
types.  Paired: the same pretrained members, so the difference between two estimates is that of
their k alone.  Each member also runs as the single run of its seed without a number of clusters
(``--n-clusters 0``: Louvain on its own latent space, the centres of its communities as the start),
and every estimate's vote is compared with those single runs (the issue's target: more than one
single-run sd above their mean).  ``--cache DIR`` keeps the pretrained members (the files
``benchmarks/ensemble_init.py`` keeps there too) and each finished row.  Writes
``benchmarks/results/k_estimate_dec<tag>.{md,json}``.
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
from benchmarks.ensemble_init import _ms, _setup, cached_row, dec_vote, pretrained  # noqa: E402
from benchmarks.k_estimate import DATA, DATASETS  # noqa: E402

ESTIMATES = ("louvain", "resolution", "stability")


def one_ensemble(name: str, seed: int, members: int, estimates, cache: str | None, row: dict | None = None) -> dict:
    from scdc_jax.cluster import ensemble

    setup, true_k = _setup(name, members, seed)
    seeds = [seed + m for m in range(members)]
    ae, pre_s = pretrained(setup, seeds, os.path.join(cache, f"{name}_{seed}_{members}.npz") if cache else None)
    z = setup.source.encoder(setup.graphdef, members=True)(ae)
    row = row or {"dataset": name, "seed": seed, "true_k": true_k, "members": members, "pretrain_s": pre_s,
                  "estimates": {}, "runs": {}}
    for est in [e for e in estimates if e not in row["estimates"]]:
        cfg = dataclasses.replace(setup.cfg, n_clusters=0, k_estimate=est)
        k, info = ensemble.estimate_k(np.asarray(z), cfg, seeds)
        row["estimates"][est] = {"k": k, **{key: info[key] for key in ("louvain_k", "chosen_resolution") if key in info}}
    for k in dict.fromkeys([true_k] + [row["estimates"][e]["k"] for e in estimates]):
        if str(k) not in row["runs"]:
            row["runs"][str(k)] = dec_vote(setup, ae, z, k, seeds, "joint")
    for key, start in SINGLE_STARTS.items():
        if key not in row:
            row[key] = single_runs(setup, ae, seeds, start)
    return row


# the single runs of the members without a number of clusters, by where their DEC stage starts
SINGLE_STARTS = {"single": "communities", "single_kmeans": "kmeans"}


def single_runs(setup, ae, seeds: list[int], init_from: str = "communities") -> list[dict]:
    """Each member as the single run of its seed without a number of clusters
    (``python -m scdc_jax.cluster --n-clusters 0 --init-from INIT_FROM``: Louvain on its own latent,
    the centres of those communities or k-means with their number, its own DEC stage): its k and ARI."""
    import jax

    from scdc_jax.cluster import ensemble, pipeline
    from scdc_jax.metrics import clustering_scores

    out = []
    for m, s in enumerate(seeds):
        one = dataclasses.replace(setup, cfg=dataclasses.replace(setup.cfg, ensemble=1, n_clusters=0, seed=s,
                                                                 init_from=init_from))
        state = {"stage": pipeline.INIT, "params": jax.tree.map(jax.numpy.asarray, ensemble.member(ae, m)),
                 "opt": None, "epoch": 0, "history": pipeline._new_history()}
        state = pipeline.cluster(one, pipeline.init_clusters(one, state))
        out.append({"seed": s, "k": int(state["params"]["mu"].shape[0]),
                    "ari": clustering_scores(setup.labels, state["last"])["ari"],
                    "epochs": len(state["history"]["cluster"])})
    return out


def summarise(rows: list[dict], estimates) -> tuple[dict, list[str]]:
    """Per dataset: each estimate's k and vote ARI, the vote ARI with the true k, and each other
    estimate's vote ARI minus Louvain's on the same members."""
    others = [e for e in estimates if e != "louvain"]
    lines = ["| dataset | true k | ensembles | " + " | ".join(f"{e}: k | {e}: vote ARI" for e in estimates)
             + " | true k: vote ARI | " + " | ".join(f"{e} - louvain (paired), won" for e in others) + " |",
             "|---" * (4 + 2 * len(estimates) + len(others)) + "|"]
    out = {}
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        vote = {e: [r["runs"][str(r["estimates"][e]["k"])]["vote_ari"] for r in rs] for e in estimates}
        ks = {e: [r["estimates"][e]["k"] for r in rs] for e in estimates}
        true = [r["runs"][str(r["true_k"])]["vote_ari"] for r in rs]
        diff = {e: np.subtract(vote[e], vote["louvain"]) for e in others}
        out[name] = {"k": ks, "vote_ari": vote, "true_k_vote_ari": true,
                     "paired_difference": {e: d.tolist() for e, d in diff.items()}}
        lines.append(f"| {name} | {rs[0]['true_k']} | {len(rs)} x {rs[0]['members']} | "
                     + " | ".join(f"{'/'.join(map(str, ks[e]))} | {_ms(vote[e])}" for e in estimates)
                     + f" | {_ms(true)} | "
                     + " | ".join(f"{_ms(d)}, {int((d > 0).sum())} of {len(d)}" for d in diff.values()) + " |")
    return out, lines


def against_single(rows: list[dict], estimates, key: str = "single") -> tuple[dict, list[str]]:
    """Per dataset: the members' single runs without a number of clusters (``row[key]``: their k
    and ARI, mean and sd over all members), and each estimate's vote: its distance from the
    single-run mean in single-run sds, whether it is more than one sd above (the issue's target),
    and in how many ensembles it beats the mean of its own members' single runs."""
    lines = ["| dataset | single runs | single: k | single: ARI | " + " | ".join(
        f"{e}: vote ARI (sds from single) | {e}: beats own members" for e in estimates) + " |",
        "|---" * (4 + 2 * len(estimates)) + "|"]
    out = {}
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        ari = np.array([s["ari"] for r in rs for s in r[key]])
        ks = [s["k"] for r in rs for s in r[key]]
        mu, sd = float(ari.mean()), float(ari.std(ddof=1))
        own = [np.mean([s["ari"] for s in r[key]]) for r in rs]
        out[name] = {"single_ari": ari.tolist(), "single_k": ks, "single_mean": mu, "single_sd": sd}
        cells = []
        for e in estimates:
            vote = np.array([r["runs"][str(r["estimates"][e]["k"])]["vote_ari"] for r in rs])
            dist = (vote.mean() - mu) / sd if sd > 0 else float("nan")
            wins = int(np.sum(vote > np.array(own)))
            out[name][e] = {"vote_mean": float(vote.mean()), "sds_from_single": float(dist),
                            "above_one_sd": bool(vote.mean() > mu + sd), "beats_own_members": wins}
            cells.append(f"{_ms(vote)} ({dist:+.2f}) | {wins} of {len(rs)}")
        lines.append(f"| {name} | {len(ari)} | {min(ks)}-{max(ks)} (median {int(np.median(ks))}) | {_ms(ari)} | "
                     + " | ".join(cells) + " |")
    return out, lines


def single_starts(rows: list[dict]) -> tuple[dict, list[str]]:
    """Per dataset: the single runs' ARI from the k-means start minus from the communities' centres,
    member by member (the same pretrained network and Louvain count)."""
    lines = ["| dataset | single runs | communities' centres (published) | k-means start | k-means - centres, "
             "paired | higher |", "|---" * 6 + "|"]
    out = {}
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        a, b = (np.array([s["ari"] for r in rs for s in r[k]]) for k in SINGLE_STARTS)
        out[name] = {"paired_difference": (b - a).tolist(), "higher": int((b > a).sum())}
        lines.append(f"| {name} | {len(a)} | {_ms(a)} | {_ms(b)} | {_ms(b - a)} | {int((b > a).sum())} of {len(a)} |")
    return out, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["bladder", "worm", "pbmc", "baron", "pbmc68k", "cellbench"],
                    choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 4, 8], help="the ensembles' first seeds")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--estimates", nargs="+", default=["louvain", "resolution"], choices=ESTIMATES,
                    help="the estimates compared (louvain is always run: the others are paired against it)")
    args = parse_cached(ap, DATA, os.path.join(HERE, "results"))
    estimates = ["louvain"] + [e for e in args.estimates if e != "louvain"]
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            row = cached_row(args.cache, f"{name}_{seed}_{args.members}_k",
                             lambda r: all(e in r["estimates"] for e in estimates)
                             and all(k in r for k in SINGLE_STARTS),
                             lambda r: one_ensemble(name, seed, args.members, estimates, args.cache, r))
            rows.append(row)
            print(json.dumps({"dataset": name, "seed": seed, **{e: (row["estimates"][e]["k"], round(
                row["runs"][str(row["estimates"][e]["k"])]["vote_ari"], 4)) for e in estimates}}), flush=True)
    summary, table = summarise(rows, estimates)
    single, single_table = against_single(rows, estimates)
    single_km, km_table = against_single(rows, estimates, "single_kmeans")
    starts, starts_table = single_starts(rows)
    table += ["", "Against single runs without a number of clusters (each member run as the single run of "
              "its seed with `--n-clusters 0`: Louvain at 0.8 on its own latent space, the centres of its "
              "communities as the start, as published): ARI mean ± sd over all members; each estimate's vote and "
              "in brackets its distance from the single-run mean in single-run sds; beats own members: ensembles "
              "whose vote is above the mean of its own members' single runs.", "", *single_table,
              "", "The same against single runs started from k-means with Louvain's number of clusters "
              "(`--n-clusters 0 --init-from kmeans`):", "", *km_table,
              "", "The two starts of the single runs, member by member (the same network and Louvain count):", "",
              *starts_table]
    cmd = "python benchmarks/k_estimate_dec.py " + " ".join(sys.argv[1:])
    print(write_results(
        args.out, f"k_estimate_dec{args.tag}", "Seed ensembles with the number of clusters estimated: the vote "
        "after the DEC stage",
        f"`{cmd}` ({time.strftime('%Y-%m-%d')}, CPU).  k: each ensemble's estimate; vote ARI: the consensus of the "
        "final members (joint start), mean ± sd over the ensembles.  Paired: an estimate's vote ARI minus "
        "Louvain's on the same pretrained members; won: ensembles where it is larger.", table,
        {"command": cmd, "summary": summary, "against_single": single,
         "against_single_kmeans_start": single_km, "single_starts": starts, "rows": rows}))


if __name__ == "__main__":
    main()
