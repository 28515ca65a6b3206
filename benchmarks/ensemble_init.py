"""Where a seed ensemble's DEC stage starts: each member from its own k-means, or all from the vote.

    python benchmarks/ensemble_init.py --seeds 0 4 8 12 16 --datasets bladder worm pbmc --cache DIR

For each shared dataset (the scDeepCluster paper's worm, bladder and PBMC files, and ``baron``:
822 mouse pancreas cells of 13 types, on which no default was chosen) and ensemble seed S: N autoencoders (seeds S..S+N-1, the published
pretraining, exactly as ``python -m scdc_jax.cluster --ensemble N --n-clusters K`` trains them) are
pretrained once; then the DEC stage runs twice from the same pretrained members:

- ``member`` start (``--ensemble-init member``): each member from its own k-means, so every member
  is exactly the single run of its seed (the "single model" column: the members of all ensembles);
- ``consensus`` start (``--ensemble-init consensus``, the default): every member from the vote of
  the members' k-means partitions (:func:`scdc_jax.cluster.ensemble.consensus_start`).

Each then gives the vote consensus of its final members (the run's default labels).  The pairwise
design (same pretrained members) isolates the start.  ``--cache DIR`` keeps the pretrained
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
from benchmarks.k_estimate import DATA, DATASETS as SCDC_DATASETS, ensemble_setup  # noqa: E402

# the three files of the scDeepCluster paper, and a pancreas file no setting was chosen on
DATASETS = {**SCDC_DATASETS, "baron": ("baron_mouse1.h5", 13, 2000)}

STARTS = ("member", "consensus")


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


def one_ensemble(name: str, seed: int, members: int, cache: str | None) -> dict:
    import jax

    from scdc_jax.cluster import ensemble, pipeline
    from scdc_jax.metrics import clustering_scores

    setup, k = _setup(name, members, seed)
    seeds = [seed + m for m in range(members)]
    ae, pre_s = pretrained(setup, seeds, os.path.join(cache, f"{name}_{seed}_{members}.npz") if cache else None)
    z = setup.source.encoder(setup.graphdef, members=True)(ae)
    truth = setup.labels
    row = {"dataset": name, "seed": seed, "k": k, "members": members, "pretrain_s": pre_s}
    for start in STARTS:
        s = dataclasses.replace(setup, cfg=dataclasses.replace(setup.cfg, ensemble_init=start))
        t0 = time.perf_counter()
        centres, last, used, agreement = ensemble.start_partition(s, z, k, seeds)
        start_ari = [clustering_scores(truth, lab)["ari"] for lab in last]
        fresh = jax.tree.map(lambda a: jax.numpy.array(a, copy=True), ae)  # the DEC stage donates its input
        done = ensemble._cluster(s, fresh, centres, last, seeds, pipeline._Progress)
        labels = np.stack([m["labels"] for m in done])
        vote = ensemble.consensus_labels(labels, k, method="vote", member_q=np.stack([m["q"] for m in done]))
        row[start] = {"used": used, "start_ari": start_ari, "kmeans_agreement": agreement,
                      "member_ari": [clustering_scores(truth, lab)["ari"] for lab in labels],
                      "cluster_epochs": [m["epochs"] for m in done],
                      "agreement": ensemble.mean_off_diagonal(ensemble.pairwise_ari(labels)),
                      "vote_ari": clustering_scores(truth, vote)["ari"], "cluster_s": time.perf_counter() - t0}
    return row


def _ms(v) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"


def summarise(rows: list[dict]) -> tuple[dict, list[str]]:
    out, lines = {}, [
        "| dataset | ensembles | single model ARI | member start: vote | consensus start: members | consensus start: "
        "vote | consensus - member start (vote, paired) | ensembles won | DEC s / ensemble (member / consensus) |",
        "|---" * 9 + "|"]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        single = [a for r in rs for a in r["member"]["member_ari"]]
        mu, sd = float(np.mean(single)), float(np.std(single, ddof=1))
        votes = {s: [r[s]["vote_ari"] for r in rs] for s in STARTS}
        gap = {s: (float(np.mean(votes[s])) - mu) / sd for s in STARTS}
        diff = np.subtract(votes["consensus"], votes["member"])
        out[name] = {"single_ari": single, "vote_ari": votes, "gap_in_single_sd": gap,
                     "consensus_start_member_ari": [a for r in rs for a in r["consensus"]["member_ari"]],
                     "paired_difference": diff.tolist()}
        lines.append(f"| {name} | {len(rs)} x {rs[0]['members']} | {_ms(single)} | {_ms(votes['member'])} "
                     f"({gap['member']:+.2f}) | {_ms(out[name]['consensus_start_member_ari'])} | "
                     f"{_ms(votes['consensus'])} ({gap['consensus']:+.2f}) | {_ms(diff)} | {int((diff > 0).sum())} of "
                     f"{len(diff)} | {np.mean([r['member']['cluster_s'] for r in rs]):.0f} / "
                     f"{np.mean([r['consensus']['cluster_s'] for r in rs]):.0f} |")
    return out, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["bladder", "worm", "pbmc"], choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 4, 8, 12, 16], help="the ensembles' first seeds")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--cache", help="folder keeping the pretrained members and finished rows between runs")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if not os.path.isdir(DATA):
        sys.exit(f"skipped: {DATA} is absent (real data lives only on developer machines and CI)")
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            done = os.path.join(args.cache, f"{name}_{seed}_{args.members}.json") if args.cache else None
            if done and os.path.isfile(done):
                row = json.load(open(done))
            else:
                row = one_ensemble(name, seed, args.members, args.cache)
                if done:
                    with open(done, "w") as fh:
                        json.dump(row, fh)
            rows.append(row)
            print(json.dumps({"dataset": name, "seed": seed, **{s: round(row[s]["vote_ari"], 4) for s in STARTS}}),
                  flush=True)
    summary, table = summarise(rows)
    cmd = "python benchmarks/ensemble_init.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# Seed ensembles: the DEC stage started from each member's k-means or from their vote", "",
        f"`{cmd}` ({time.strftime('%Y-%m-%d')}, CPU); k given.  Single model: the members of the member-start "
        "runs, each an exact single run of its seed.  Vote: the ensemble's consensus (default).  In brackets: "
        "distance from the single-model mean in single-model sds.  Paired: the consensus start's vote minus the "
        "member start's, the same pretrained members.", ""] + table) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"ensemble_init{args.tag}.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.out, f"ensemble_init{args.tag}.json"), "w") as fh:
        json.dump({"command": cmd, "summary": summary, "rows": rows}, fh, indent=2)
    print(text)


if __name__ == "__main__":
    main()
