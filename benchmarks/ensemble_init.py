"""Where a seed ensemble's DEC stage starts: each member from its own k-means, their vote, or the joint latent.

    python benchmarks/ensemble_init.py --seeds 0 4 8 12 16 --datasets bladder worm pbmc --cache DIR

For each dataset (the scDeepCluster paper's worm, bladder and PBMC files, and three on which no
default was chosen: ``baron``, 822 mouse pancreas cells of 13 types, ``cellbench``, 571 cells of 5
lung adenocarcinoma cell lines, and ``pbmc68k``, scanpy's bundled 700 PBMCs with their 10 bulk
populations as labels) and ensemble seed S: N autoencoders (seeds S..S+N-1,
the published pretraining, exactly as ``python -m scdc_jax.cluster --ensemble N --n-clusters K``
trains them) are pretrained once; then the DEC stage runs from each start on the same pretrained
members:

- ``member`` start (``--ensemble-init member``): each member from its own k-means, so every member
  trains as the single run of its seed (the "single model" column: the members of all ensembles;
  the same run up to the rounding of batched matrix products, see the README);
- ``consensus`` start (``--ensemble-init consensus``): every member from the vote of the members'
  k-means partitions (:func:`scdc_jax.cluster.ensemble.consensus_start`);
- ``joint`` start (``--ensemble-init joint``, the default): every member from k-means on the
  members' latent spaces side by side (:func:`scdc_jax.cluster.ensemble.joint_start`).

Each then gives the vote consensus of its final members (the run's default labels).  The paired
design (same pretrained members) isolates the start; ``--starts`` picks the starts run, and a
cached row gains only the starts it lacks.  ``--cache DIR`` keeps the pretrained
members (arrays, .npz) and each ensemble's finished row, so an interrupted run goes on where it
stopped.  Writes ``benchmarks/results/ensemble_init<tag>.{md,json}``.
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
from benchmarks.k_estimate import DATA, DATASETS, ensemble_setup  # noqa: E402

STARTS = ("member", "consensus", "joint")


def _setup(name: str, members: int, seed: int):
    return ensemble_setup(DATASETS[name], members, seed)


def pretrained(setup, seeds: list[int], path: str | None):
    """The members' pretrained autoencoders (stacked), from ``path`` when it holds them."""
    import jax

    from scdc_jax import checkpoint
    from scdc_jax.cluster import ensemble, pipeline
    from scdc_jax.cluster.train import build_model

    template = ensemble.stack([build_model(setup.cfg, setup.n_genes, s)[1] for s in seeds])
    leaves, treedef = jax.tree.flatten(template)
    if path and os.path.isfile(path):
        d = np.load(path)
        return jax.tree.unflatten(treedef, [jax.numpy.asarray(d[f"a{i}"]) for i in range(len(leaves))]), float(d["seconds"])
    t0 = time.perf_counter()
    ae, _ = ensemble._pretrain(setup, seeds, pipeline._Progress)
    seconds = time.perf_counter() - t0
    if path:
        host = jax.tree.leaves(checkpoint.to_host(ae))
        np.savez(path + ".tmp.npz", seconds=seconds, **{f"a{i}": a for i, a in enumerate(host)})
        os.replace(path + ".tmp.npz", path)
    return ae, seconds


def one_ensemble(name: str, seed: int, members: int, cache: str | None, starts=STARTS, row: dict | None = None) -> dict:
    setup, k = _setup(name, members, seed)
    seeds = [seed + m for m in range(members)]
    ae, pre_s = pretrained(setup, seeds, os.path.join(cache, f"{name}_{seed}_{members}.npz") if cache else None)
    z = setup.source.encoder(setup.graphdef, members=True)(ae)
    row = row or {"dataset": name, "seed": seed, "k": k, "members": members, "pretrain_s": pre_s}
    for start in [s for s in starts if s not in row]:
        row[start] = dec_vote(setup, ae, z, k, seeds, start)
    return row


def dec_vote(setup, ae, z, k: int, seeds: list[int], start: str) -> dict:
    """The DEC stage of the pretrained members ``ae`` (latents ``z``) with ``k`` clusters from the
    start ``start``, and the vote of the final members, scored against ``setup.labels``."""
    import jax

    from scdc_jax.cluster import ensemble, pipeline
    from scdc_jax.metrics import clustering_scores

    truth = setup.labels
    s = dataclasses.replace(setup, cfg=dataclasses.replace(setup.cfg, ensemble_init=start, n_clusters=k))
    t0 = time.perf_counter()
    centres, last, used, agreement = ensemble.start_partition(s, z, k, seeds)
    start_ari = [clustering_scores(truth, lab)["ari"] for lab in last]
    fresh = jax.tree.map(lambda a: jax.numpy.array(a, copy=True), ae)  # the DEC stage donates its input
    done = ensemble._cluster(s, fresh, centres, last, seeds, pipeline._Progress)
    labels = np.stack([m["labels"] for m in done])
    vote = ensemble.consensus_labels(labels, k, method="vote", member_q=np.stack([m["q"] for m in done]))
    return {"used": used, "start_ari": start_ari, "kmeans_agreement": agreement,
            "member_ari": [clustering_scores(truth, lab)["ari"] for lab in labels],
            "cluster_epochs": [m["epochs"] for m in done],
            "agreement": ensemble.mean_off_diagonal(ensemble.pairwise_ari(labels)),
            "vote_ari": clustering_scores(truth, vote)["ari"], "cluster_s": time.perf_counter() - t0}


def cached_row(cache: str | None, stem: str, complete, compute) -> dict:
    """The row kept in ``cache/<stem>.json`` when ``complete(row)``; else ``compute(row)`` (``row``
    None when none is kept), then kept there."""
    path = os.path.join(cache, f"{stem}.json") if cache else None
    row = json.load(open(path)) if path and os.path.isfile(path) else None
    if row is None or not complete(row):
        row = compute(row)
        if path:
            with open(path, "w") as fh:
                json.dump(row, fh)
    return row


def _ms(v) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"


def summarise(rows: list[dict]) -> tuple[dict, list[str]]:
    """Per dataset: the single model (the member starts' members), every start's vote, and the
    paired differences of the votes on the same pretrained members: each other start's minus the
    member start's, and the joint start's minus the consensus start's."""
    starts = [s for s in STARTS if all(s in r for r in rows)]
    pairs = [(s, "member") for s in starts if s != "member"]
    pairs += [("joint", "consensus")] if {"joint", "consensus"} <= set(starts) else []
    out, lines = {}, [
        "| dataset | ensembles | single model ARI | " + " | ".join(f"{s} start: vote" for s in starts) + " | "
        + " | ".join(f"{a} - {b} start (vote, paired), won" for a, b in pairs) + " | DEC s / ensemble ("
        + " / ".join(starts) + ") |",
        "|---" * (4 + len(starts) + len(pairs)) + "|"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        single = [a for r in rs for a in r["member"]["member_ari"]]
        mu, sd = float(np.mean(single)), float(np.std(single, ddof=1))
        votes = {s: [r[s]["vote_ari"] for r in rs] for s in starts}
        gap = {s: (float(np.mean(votes[s])) - mu) / sd if sd > 0 else float("nan") for s in starts}  # nan: no spread
        diff = {f"{a}-{b}": np.subtract(votes[a], votes[b]) for a, b in pairs}
        out[name] = {"single_ari": single, "vote_ari": votes, "gap_in_single_sd": gap,
                     "start_member_ari": {s: [a for r in rs for a in r[s]["member_ari"]] for s in starts},
                     "paired_difference": {s: d.tolist() for s, d in diff.items()}}
        lines.append(f"| {name} | {len(rs)} x {rs[0]['members']} | {_ms(single)} | "
                     + " | ".join(f"{_ms(votes[s])} ({gap[s]:+.2f})" for s in starts) + " | "
                     + " | ".join(f"{_ms(d)}, {int((d > 0).sum())} of {len(d)}" for d in diff.values())
                     + " | " + " / ".join(f"{np.mean([r[s]['cluster_s'] for r in rs]):.0f}" for s in starts) + " |")
    return out, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["bladder", "worm", "pbmc"], choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 4, 8, 12, 16], help="the ensembles' first seeds")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--starts", nargs="+", default=list(STARTS), choices=STARTS,
                    help="the DEC stage's starts to run (member is always run: it gives the single models)")
    args = parse_cached(ap, DATA, os.path.join(HERE, "results"))
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            starts = ["member"] + [s for s in args.starts if s != "member"]
            row = cached_row(args.cache, f"{name}_{seed}_{args.members}", lambda r: all(s in r for s in starts),
                             lambda r: one_ensemble(name, seed, args.members, args.cache, starts, r))
            rows.append(row)
            print(json.dumps({"dataset": name, "seed": seed, **{s: round(row[s]["vote_ari"], 4) for s in starts}}),
                  flush=True)
    summary, table = summarise(rows)
    cmd = "python benchmarks/ensemble_init.py " + " ".join(sys.argv[1:])
    print(write_results(
        args.out, f"ensemble_init{args.tag}", "Seed ensembles: where the DEC stage starts",
        f"`{cmd}` ({time.strftime('%Y-%m-%d')}, CPU); k given.  Single model: the members of the member-start "
        "runs, each trained as the single run of its seed.  Vote: the ensemble's consensus (default).  In brackets: "
        "distance from the single-model mean in single-model sds.  Paired: one start's vote minus another's, "
        "the same pretrained members; won: ensembles where the first is larger.", table,
        {"command": cmd, "summary": summary, "rows": rows}))


if __name__ == "__main__":
    main()
