"""Accuracy of scDeepCluster on the real datasets over several seeds: scdc_jax or the PyTorch baseline.

    python benchmarks/accuracy.py --seeds 0 1 2 --datasets bladder worm pbmc
    python benchmarks/accuracy.py --impl torch_f32 --seeds 0 1 2 --datasets bladder

``--impl torch_f32|torch_f64`` runs ``benchmarks/baselines/torch_scdeepcluster.py`` (same
preprocessing, k-means init, schedule; clusters given only).  Writes
``benchmarks/results/accuracy_<impl>_<mode>.json`` (per-seed ARI/NMI/ACC, times, machine,
versions, command) and ``accuracy_scdc_jax.md`` (mean and sd per dataset).  Uses the published
defaults; ``--n-clusters-mode estimated`` uses Louvain instead of the true number of types.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
DATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data")

DATASETS = {  # name: (file, true number of types, --select-genes)
    "bladder": ("mouse_bladder_cell_select_2100.h5", 16, 2000),
    "worm": ("worm_neuron_cell_select_2100.h5", 10, 2000),
    "pbmc": ("10X_PBMC_select_2100_top2000.h5", 8, 0),
}


def torch_run(data, cfg, impl: str) -> dict:
    """The PyTorch baseline on scdc_jax's preprocessing: ARI/NMI/ACC and pretraining seconds."""
    import torch

    from benchmarks.baselines.torch_scdeepcluster import fit
    from scdc_jax.metrics import clustering_scores
    from scdc_jax.preprocess import prepare

    prep = prepare(data, select_genes_n=cfg.select_genes)
    t0 = time.perf_counter()
    pred, _ = fit(prep.x, prep.raw, prep.size_factors, n_clusters=cfg.n_clusters, pretrain_epochs=cfg.pretrain_epochs,
                  maxiter=cfg.maxiter, tol=cfg.tol, batch_size=cfg.batch_size, sigma=cfg.sigma, gamma=cfg.gamma,
                  dtype=torch.float32 if impl == "torch_f32" else torch.float64, seed=cfg.seed, verbose=False)
    return {**clustering_scores(prep.data.labels, pred), "pretrain_s": float("nan"), "fit_s": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-clusters-mode", choices=["given", "estimated"], default="given")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--impl", choices=["scdc_jax", "torch_f32", "torch_f64"], default="scdc_jax")
    ap.add_argument("--tag", default=None, help="results file tag (default: --impl)")
    args = ap.parse_args()
    args.tag = args.tag or args.impl
    if args.impl != "scdc_jax" and args.n_clusters_mode != "given":
        sys.exit("the PyTorch baseline has no Louvain estimate: use --n-clusters-mode given")

    from scdc_jax.cluster import ClusterConfig, run
    from scdc_jax.io import read_counts
    from scdc_jax.outputs import provenance, write_json

    if not os.path.isdir(DATA):
        sys.exit(f"skipped: {DATA} is absent (real data lives only on developer machines and CI)")
    rows = []
    for name in args.datasets:
        fname, k, sel = DATASETS[name]
        data = read_counts(os.path.join(DATA, fname))
        for seed in args.seeds:
            cfg = ClusterConfig(n_clusters=k if args.n_clusters_mode == "given" else 0, select_genes=sel, seed=seed)
            t0 = time.perf_counter()
            if args.impl == "scdc_jax":
                res = run(data, cfg, progress=False)
                row = {"dataset": name, "seed": seed, "k": int(res.centers.shape[0]), **res.scores,
                       "wall_s": time.perf_counter() - t0, **{k_: v for k_, v in res.timings.items()}}
            else:
                row = {"dataset": name, "seed": seed, "k": k, **torch_run(data, cfg, args.impl),
                       "wall_s": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for name in args.datasets:
        r = [x for x in rows if x["dataset"] == name]
        summary[name] = {m: {"mean": float(np.mean([x[m] for x in r])), "sd": float(np.std([x[m] for x in r], ddof=1))
                             if len(r) > 1 else 0.0} for m in ("ari", "nmi", "acc", "k", "wall_s", "pretrain_s")}
    cmd = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    out = {**provenance(None, ClusterConfig().to_dict(), 1, cmd), "mode": args.n_clusters_mode,
           "rows": rows, "summary": summary}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"accuracy_{args.tag}_{args.n_clusters_mode}")
    write_json(stem + ".json", out)
    lines = [f"# scDeepCluster accuracy ({args.tag}, clusters {args.n_clusters_mode}, seeds {args.seeds})", "",
             f"`{cmd}` on {out['machine']}, {out['date']}", "",
             "| dataset | k | ARI | NMI | ACC | pretrain s | total s |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        pre = s["pretrain_s"]["mean"]
        lines.append(f"| {name} | {s['k']['mean']:.1f} | {s['ari']['mean']:.3f} ± {s['ari']['sd']:.3f} | "
                     f"{s['nmi']['mean']:.3f} ± {s['nmi']['sd']:.3f} | {s['acc']['mean']:.3f} ± {s['acc']['sd']:.3f} | "
                     f"{pre:.0f} | {s['wall_s']['mean']:.0f} |".replace("| nan |", "| – |"))
    lines += ["", "Per seed:", "", "| dataset | seed | k | ARI | NMI | ACC | total s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['seed']} | {r['k']} | {r['ari']:.3f} | {r['nmi']:.3f} | {r['acc']:.3f} | "
              f"{r['wall_s']:.0f} |" for r in rows]
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
