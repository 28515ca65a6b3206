"""Batch correction on real data: CellBench CEL-seq2 (5 cell lines on 3 plates), with and without B.

    python benchmarks/batch.py --seeds 0 1 2

For each seed, scDeepCluster runs with the published defaults (5 clusters, 2000 selected genes)
once without batches and once with the plates as one-hot B.  Reported: ARI/NMI against the cell
lines, and the batch silhouette of the final latent space (silhouette of the plate labels; near 0
means well mixed plates, positive means plates separate).  Writes
``benchmarks/results/batch_cellbench.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
DATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data", "cellbench_celseq2_5cl.h5")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    if not os.path.exists(DATA):
        sys.exit(f"skipped: {DATA} is absent (real data lives only on developer machines and CI)")
    from sklearn.metrics import silhouette_score

    from scdc_jax.cluster import ClusterConfig, run
    from scdc_jax.io import read_counts
    from scdc_jax.outputs import provenance, write_json

    with_b = read_counts(DATA, batch_key="plate")
    rows = []
    for seed in args.seeds:
        for use_b in (False, True):
            data = with_b if use_b else with_b.subset()
            if not use_b:
                data.batch = data.batch_names = None
            t0 = time.perf_counter()
            res = run(data, ClusterConfig(n_clusters=5, select_genes=2000, seed=seed), progress=False)
            plates = with_b.batch.argmax(1)[res.cells]
            row = {"seed": seed, "B": use_b, **res.scores,
                   "batch_silhouette": float(silhouette_score(res.latent, plates)), "wall_s": time.perf_counter() - t0}
            rows.append(row)
            print(row, flush=True)
    cmd = "python benchmarks/batch.py " + " ".join(sys.argv[1:])
    lines = ["# Batch variant on CellBench CEL-seq2 (571 cells, 5 cell lines, 3 plates)", "",
             f"`{cmd}`; published defaults, 5 clusters, 2000 selected genes; mean ± sd over seeds {args.seeds}", "",
             "| model | ARI (cell lines) | NMI | batch silhouette (0 = mixed) |", "|---|---|---|---|"]
    for use_b in (False, True):
        r = [x for x in rows if x["B"] == use_b]
        f = lambda k: f"{np.mean([x[k] for x in r]):.3f} ± {np.std([x[k] for x in r], ddof=1) if len(r) > 1 else 0:.3f}"
        lines.append(f"| {'with B (plates)' if use_b else 'without B'} | {f('ari')} | {f('nmi')} | {f('batch_silhouette')} |")
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "batch_cellbench.json"), {**provenance(None, {}, 1, cmd), "rows": rows})
    with open(os.path.join(args.out, "batch_cellbench.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
