"""Batch correction on real data: how well the batch variant mixes batches, with and without the MMD term.

    python benchmarks/batch.py --seeds 0 1 2 --mmd 1 3

Two cases, each with the published defaults and the true number of clusters:

- ``cellbench``: CellBench CEL-seq2 (571 cells, 5 lung-adenocarcinoma cell lines, 3 plates), the
  plates as batches, 2000 selected genes; real data, but the plates differ little.
- ``pbmc2p``: a semi-synthetic two-platform case built from the 10X PBMC file (2100 cells, 8 types):
  the cells split at random into two halves, and each half's counts thinned binomially with its
  own gene-specific capture efficiency ``min(1, depth_b * exp(N(0, 0.5^2)))`` (depth 0.9 and 0.45):
  a platform effect (gene detection biases and sequencing depth) on the same cell types; the
  file's 2000 genes (selected already).  ``pbmc2p_low``: the same with depths 0.9 and 0.2.

Models: without B, with B (the published batch variant), and with B plus ``--batch-mmd W`` for each
W of ``--mmd``.  Reported (mean ± sd over seeds): ARI/NMI against the cell types; the batches' kNN
mixing among each cell's 30 nearest neighbours in the final latent space as a fraction of its value
were the batches fully mixed within each cell type (1 = mixed, 0 = apart; ``mix``), its raw value
(``kNN``), iLISI (1 = one batch around each cell, up to the number of batches) and the batch
silhouette (0 = mixed).  Writes ``benchmarks/results/batch_mixing.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
SHARED = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data")
CELLBENCH = os.path.join(SHARED, "cellbench_celseq2_5cl.h5")
PBMC = os.path.join(SHARED, "10X_PBMC_select_2100_top2000.h5")
DEPTHS = {"pbmc2p": (0.9, 0.45), "pbmc2p_low": (0.9, 0.2)}
CAPTURE_SD = 0.5


def two_platforms(data, depths, seed: int = 0):
    """The cells of ``data`` split at random into two 'platforms', each thinned with its own
    gene-specific capture efficiency (see the module docstring); the batches one-hot."""
    from scdc_jax.io import CountData

    rng = np.random.default_rng(seed)
    X = np.asarray(data.X, np.int64)
    platform = rng.permutation(np.arange(len(X)) % 2)
    out = np.empty_like(X)
    for b, depth in enumerate(depths):
        capture = np.minimum(1.0, depth * np.exp(rng.normal(0.0, CAPTURE_SD, X.shape[1])))
        rows = platform == b
        out[rows] = rng.binomial(X[rows], capture[None, :])
    return CountData(X=out, labels=data.labels, label_names=data.label_names,
                     batch=np.eye(2, dtype=np.float32)[platform], batch_names=["platform A", "platform B"])


def load(case: str):
    from scdc_jax.io import read_counts

    if case == "cellbench":
        return read_counts(CELLBENCH, batch_key="plate"), 5, 2000
    return two_platforms(read_counts(PBMC), DEPTHS[case]), 8, 0  # the file holds 2000 genes selected already


def mixing_row(res, data) -> dict:
    from sklearn.metrics import silhouette_score

    from scdc_jax.metrics import batch_mixing

    batch = data.batch.argmax(1)[res.cells]
    types = np.asarray(data.labels)[res.cells]
    m = batch_mixing(res.latent, batch, groups=types)
    return {"knn_mixing": m["knn_mixing"]["observed"], "knn_expected": m["knn_mixing"]["expected"],
            "mix": m["knn_mixing"]["ratio"], "ilisi": m["ilisi"],
            "batch_silhouette": float(silhouette_score(res.latent, batch))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--cases", nargs="+", choices=["cellbench", *DEPTHS], default=["cellbench", *DEPTHS])
    ap.add_argument("--mmd", nargs="*", type=float, default=[1.0], help="--batch-mmd weights to run (with B)")
    ap.add_argument("--pretrain-epochs", type=int, default=300)
    ap.add_argument("--tag", default="", help="suffix of the results files")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    for path in (CELLBENCH, PBMC):
        if not os.path.exists(path):
            sys.exit(f"skipped: {path} is absent (real data lives only on developer machines and CI)")
    from scdc_jax.cluster import ClusterConfig, run
    from scdc_jax.outputs import provenance, write_json

    models = [("without B", None), ("with B", 0.0)] + [(f"with B + MMD {w:g}", w) for w in args.mmd]
    rows = []
    for case in args.cases:
        data, k, genes = load(case)
        plain = data.subset()
        plain.batch = plain.batch_names = None
        for seed in args.seeds:
            for name, w in models:
                cfg = ClusterConfig(n_clusters=k, select_genes=genes, seed=seed, pretrain_epochs=args.pretrain_epochs,
                                    batch_mmd=w or 0.0)
                t0 = time.perf_counter()
                res = run(plain if w is None else data, cfg, progress=False)
                row = {"case": case, "model": name, "seed": seed, **res.scores, **mixing_row(res, data),
                       "wall_s": time.perf_counter() - t0}
                rows.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    cmd = "python benchmarks/batch.py " + " ".join(sys.argv[1:])
    lines = ["# Batch mixing: scDeepCluster without B, with B, and with B plus the MMD term", "",
             f"`{cmd}`; published defaults, true k; mean ± sd over seeds {args.seeds}. "
             "cellbench: CellBench CEL-seq2, 571 cells, 5 cell lines, 3 plates (real), 2000 selected genes. pbmc2p: the 10X PBMC "
             f"file (2100 cells, 8 types) split at random into two halves thinned with gene-specific capture "
             f"efficiencies (depths {' / '.join(map(str, DEPTHS['pbmc2p']))}, log-sd {CAPTURE_SD}): semi-synthetic; the "
             f"file's 2000 genes; pbmc2p_low: depths {' / '.join(map(str, DEPTHS['pbmc2p_low']))}. "
             "mix: kNN mixing (30 neighbours, final latent) over its fully-mixed value within cell types "
             "(1 = mixed, 0 = apart); iLISI from 1 (apart) to the number of batches.", "",
             "| case | model | ARI | NMI | mix | kNN mixing (mixed value) | iLISI | batch silhouette | s / run |",
             "|---|---|---|---|---|---|---|---|---|"]

    def ms(r, key):
        v = [x[key] for x in r]
        return f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"

    for case in args.cases:
        for name, _ in models:
            r = [x for x in rows if x["case"] == case and x["model"] == name]
            lines.append(f"| {case} | {name} | {ms(r, 'ari')} | {ms(r, 'nmi')} | {ms(r, 'mix')} | "
                         f"{ms(r, 'knn_mixing')} ({np.mean([x['knn_expected'] for x in r]):.3f}) | {ms(r, 'ilisi')} | "
                         f"{ms(r, 'batch_silhouette')} | {np.mean([x['wall_s'] for x in r]):.0f} |")
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"batch_mixing{args.tag}")
    write_json(base + ".json", {**provenance(None, {}, 1, cmd), "rows": rows})
    with open(base + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
