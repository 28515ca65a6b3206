"""Estimates of the number of clusters on the pretrained latent spaces of a seed ensemble.

    python benchmarks/k_estimate.py --members 4 --datasets pbmc worm bladder

For each shared dataset (the scDeepCluster paper's three files by default; ``baron``,
``cellbench`` and scanpy's ``pbmc68k`` too): N autoencoders (seeds 0..N-1, the published
pretraining) are trained as one ensemble, exactly as ``python -m scdc_jax.cluster --ensemble N``
does; then, on their latent spaces,

- ``louvain``: Louvain at resolution 0.8 on the 20-NN graph (the reference's estimate, per member);
- ``stability``: the ensemble's k-means stability estimate
  (:func:`scdc_jax.cluster.ensemble.estimate_k`), with the whole stability curve;
- ``resolution``: Louvain at each resolution from 0.1 to 1.0 on every member's graph, the
  resolution whose communities agree most between the members (mean pairwise ARI), its k the
  median of the members' counts there, with the whole curve.

ARI here is of the initial partition (Louvain's communities, or k-means with the estimated k)
against the true types: the starting point of the DEC stage, not its end.  Writes
``benchmarks/results/k_estimate<tag>.{json,md}``.  ``--cache DIR`` keeps the latents, so a rerun
with other estimates skips the pretraining.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from benchmarks.accuracy import DATA, DATASETS as ALL, read_dataset  # noqa: E402

# accuracy.py's (the scDeepCluster paper's three files and scanpy's pbmc68k) and two more shared files
DATASETS = {**ALL, "baron": ("baron_mouse1.h5", 13, 2000), "cellbench": ("cellbench_celseq2_5cl.h5", 5, 2000)}


def ensemble_setup(spec: tuple, members: int, seed: int, *, n_clusters: int | None = None):
    """(the pipeline's setup of an ensemble of ``members`` from ``seed`` on the shared file ``spec``
    = (file name, number of types, genes selected), the number of types); ``n_clusters``: that of
    the config (default: the number of types); the file is read by :func:`benchmarks.accuracy.read_dataset`
    (which also gives scanpy's bundled PBMCs)."""
    from scdc_jax.cluster import ClusterConfig, pipeline
    from scdc_jax.cluster.source import InMemory
    from scdc_jax.cluster.train import abstract_model, device_data
    from scdc_jax.preprocess import prepare

    fname, k, sel = spec
    prep = prepare(read_dataset(fname, DATA), select_genes_n=sel)
    cfg = ClusterConfig(n_clusters=k if n_clusters is None else n_clusters, select_genes=sel, ensemble=members,
                        seed=seed)
    g = prep.shape[1]
    return pipeline._Setup(cfg, InMemory(device_data(prep), batch_size=cfg.batch_size), abstract_model(cfg, g)[0],
                           g, 0, prep.data.labels, None, False), k


def member_latents(name: str, members: int, cache: str | None):
    """(latents (members, n, 32), true labels, pretraining seconds) of the dataset ``name``."""
    path = os.path.join(cache, f"latents_{name}_{members}.npz") if cache else None
    if path and os.path.isfile(path):
        d = np.load(path)
        return d["z"], d["labels"], float(d["seconds"])
    from scdc_jax.cluster import ensemble, pipeline

    setup, _ = ensemble_setup(DATASETS[name], members, 0, n_clusters=0)
    t0 = time.perf_counter()
    ae, _ = ensemble._pretrain(setup, list(range(members)), pipeline._Progress)
    z = setup.source.encoder(setup.graphdef, members=True)(ae)
    seconds = time.perf_counter() - t0
    if path:
        os.makedirs(cache, exist_ok=True)
        np.savez(path, z=z, labels=setup.labels, seconds=seconds)
    return z, setup.labels, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["pbmc", "worm", "bladder"], choices=list(DATASETS))
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--cache", help="folder keeping the members' latents between runs")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if not os.path.isdir(DATA):
        sys.exit(f"skipped: {DATA} is absent (real data lives only on developer machines and CI)")
    from sklearn.metrics import adjusted_rand_score

    from scdc_jax.cluster import ClusterConfig
    from scdc_jax.cluster.ensemble import estimate_k, resolution_curve
    from scdc_jax.cluster.init import community_labels, kmeans, knn_graph

    rows = []
    for name in args.datasets:
        z, labels, seconds = member_latents(name, args.members, args.cache)
        seeds = list(range(args.members))
        louvain = [community_labels(zz, knn=20, resolution=0.8, seed=s) for s, zz in zip(seeds, z)]
        cfg = ClusterConfig(ensemble=args.members, k_estimate="stability")
        k, info = estimate_k(z, cfg, seeds)
        km_ari = [adjusted_rand_score(labels, kmeans(zz, k, seed=s)[1]) for s, zz in zip(seeds, z)]
        true_k = DATASETS[name][1]
        km_true = [adjusted_rand_score(labels, kmeans(zz, true_k, seed=s)[1]) for s, zz in zip(seeds, z)]
        row = {"dataset": name, "true_k": true_k, "members": args.members, "pretrain_s": seconds,
               "louvain_k": [int(x.max()) + 1 for x in louvain],
               "louvain_ari": [adjusted_rand_score(labels, x) for x in louvain],
               "louvain_median_k": int(np.round(np.median([x.max() + 1 for x in louvain]))),
               "stability_k": k, "stability_kmeans_ari": km_ari, "true_k_kmeans_ari": km_true,
               "stability_curve": info["stability"]}
        k_res, info_res = estimate_k(z, ClusterConfig(ensemble=args.members, k_estimate="resolution"), seeds)
        scan = resolution_curve([knn_graph(zz, 20, seed=s) for zz, s in zip(z, seeds)], seeds, keep_labels=True)
        row.update({"resolution_curve": {str(r): {"stability": v["stability"], "k": v["k"],
                                                  "ari": [adjusted_rand_score(labels, x) for x in v["labels"]]}
                                         for r, v in scan.items()},
                    "resolution_stable": info_res["chosen_resolution"], "resolution_k": k_res})
        rows.append(row)
        print(json.dumps(row), flush=True)
    cmd = "python benchmarks/k_estimate.py " + " ".join(sys.argv[1:])
    lines = ["# Estimates of the number of clusters on a seed ensemble's pretrained latent spaces", "",
             f"`{cmd}` ({time.strftime('%Y-%m-%d')}); {args.members} members (seeds 0..{args.members - 1}), published "
             "pretraining.  ARI: of the initial partition (before the DEC stage) against the true types, mean ± sd "
             "over the members.", "",
             "| dataset | true k | Louvain k (members) | Louvain ARI | stability k | k-means ARI at stability k "
             "| k-means ARI at true k | most stable resolution: k | Louvain ARI there |", "|---" * 9 + "|"]
    ms = lambda v: f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['true_k']} | {r['louvain_k']} | {ms(r['louvain_ari'])} | {r['stability_k']} "
                     f"| {ms(r['stability_kmeans_ari'])} | {ms(r['true_k_kmeans_ari'])} | {r['resolution_stable']}: "
                     f"{r['resolution_k']} | {ms(r['resolution_curve'][str(r['resolution_stable'])]['ari'])} |")
    lines += ["", "Stability curves (mean ARI between the members' k-means labelings):", ""]
    for r in rows:
        lines.append(f"- {r['dataset']}: " + ", ".join(f"{k}: {v:.2f}" for k, v in r["stability_curve"].items()))
    lines += ["", "Resolution stability (Louvain at each resolution: mean ARI between the members' labelings, their "
              "counts, their mean ARI against the true types):", ""]
    for r in rows:
        lines.append(f"- {r['dataset']}: " + ", ".join(f"{res}: {v['stability']:.2f} (k {'/'.join(map(str, v['k']))}, "
                                                       f"ARI {np.mean(v['ari']):.2f})"
                                                       for res, v in r["resolution_curve"].items()))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"k_estimate{args.tag}.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, f"k_estimate{args.tag}.json"), "w") as fh:
        json.dump({"command": cmd, "rows": rows}, fh, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
