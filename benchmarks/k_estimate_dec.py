"""What an estimated number of clusters gives after the DEC stage: a seed ensemble's vote ARI.

    python benchmarks/k_estimate_dec.py --seeds 0 4 8 --datasets bladder worm pbmc baron pbmc68k cellbench --cache DIR

For each dataset and ensemble seed S: N autoencoders (seeds S..S+N-1, the published pretraining,
as ``python -m scdc_jax.cluster --ensemble N --n-clusters 0`` trains them) are pretrained once;
the number of clusters is estimated on their latent spaces by each of ``--estimates``
(:func:`scdc_jax.cluster.ensemble.estimate_k`: ``louvain``, the default, and ``resolution``; also
``stability``); then the DEC stage runs from the joint start (the default) with each estimated k
and with the true number of types, and the vote of the final members is scored against the
types.  Paired: the same pretrained members, so the difference between two estimates is that of
their k alone.  ``--cache DIR`` keeps the pretrained members (the files
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
    return row


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
                             lambda r: all(e in r["estimates"] for e in estimates),
                             lambda r: one_ensemble(name, seed, args.members, estimates, args.cache, r))
            rows.append(row)
            print(json.dumps({"dataset": name, "seed": seed, **{e: (row["estimates"][e]["k"], round(
                row["runs"][str(row["estimates"][e]["k"])]["vote_ari"], 4)) for e in estimates}}), flush=True)
    summary, table = summarise(rows, estimates)
    cmd = "python benchmarks/k_estimate_dec.py " + " ".join(sys.argv[1:])
    print(write_results(
        args.out, f"k_estimate_dec{args.tag}", "Seed ensembles with the number of clusters estimated: the vote "
        "after the DEC stage",
        f"`{cmd}` ({time.strftime('%Y-%m-%d')}, CPU).  k: each ensemble's estimate; vote ARI: the consensus of the "
        "final members (joint start), mean ± sd over the ensembles.  Paired: an estimate's vote ARI minus "
        "Louvain's on the same pretrained members; won: ensembles where it is larger.", table,
        {"command": cmd, "summary": summary, "rows": rows}))


if __name__ == "__main__":
    main()
