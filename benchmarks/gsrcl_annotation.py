"""Annotating held-out cells with a GsRCL reference trained on the rest of a labelled dataset.

    python benchmarks/gsrcl_annotation.py --datasets baron_mouse1 cellbench_celseq2_5cl --seeds 0 1 2

For each dataset and seed: a stratified 80/20 split of the cells; ``train-reference`` on the 80%
(one encoder, one calibrated SVM per cell type with enough cells) with ``--config`` (default
``configs/gsrcl_cpu.toml``); ``annotate`` on the 20% with the query's genes in a shuffled order
(so the name alignment is exercised) and the default cutoff 0.5.  Reported: accuracy over all
held-out cells (Unassigned counts as wrong), accuracy over the assigned cells, the Unassigned
fraction, and, for held-out cells of types too small to have a classifier in the reference, the
fraction left Unassigned.  Writes ``benchmarks/results/gsrcl_annotation.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def one_run(data, cfg, seed: int) -> dict:
    from sklearn.model_selection import train_test_split

    from scdc_jax.gsrcl.annotate import UNASSIGNED, annotate, train_reference

    idx = np.arange(data.n_cells)
    ref_idx, query_idx = train_test_split(idx, test_size=0.2, stratify=data.labels, random_state=seed)
    ref, query = data.subset(ref_idx), data.subset(query_idx)
    perm = np.random.default_rng(seed).permutation(data.n_genes)
    query.X = query.X[:, perm]
    query.gene_names = query.gene_names[perm]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "reference")
        meta = train_reference(ref, cfg, folder, log=lambda m: None)
        train_s = time.perf_counter() - t0
        calls = annotate(folder, query)[0]["call"].to_numpy()
    truth = np.asarray(data.label_names, dtype=object)[query.labels]
    assigned = calls != UNASSIGNED
    known = np.isin(truth, meta["cell_types"])
    return {"seed": seed, "n_reference": len(ref_idx), "n_query": len(query_idx),
            "reference_types": meta["cell_types"], "accuracy": float(np.mean(calls == truth)),
            "accuracy_assigned": float(np.mean(calls[assigned] == truth[assigned])) if assigned.any() else None,
            "unassigned": float(np.mean(~assigned)),
            "accuracy_known_types": float(np.mean(calls[known] == truth[known])),
            "n_unknown_type": int((~known).sum()),
            "unknown_left_unassigned": float(np.mean(~assigned[~known])) if (~known).any() else None,
            "train_s": train_s, "total_s": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["baron_mouse1", "cellbench_celseq2_5cl"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "gsrcl_cpu.toml"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    missing = [d for d in args.datasets if not os.path.exists(os.path.join(DATA, d + ".h5"))]
    if missing:
        sys.exit(f"skipped: {', '.join(missing)} absent from {DATA} (real data lives only on developer machines and CI)")
    import dataclasses

    from scdc_jax.gsrcl.config import load_config
    from scdc_jax.io import read_counts
    from scdc_jax.outputs import provenance, write_json

    cfg = load_config(args.config)
    rows = []
    for name in args.datasets:
        data = read_counts(os.path.join(DATA, name + ".h5"))
        for seed in args.seeds:
            row = {"dataset": name, **one_run(data, dataclasses.replace(cfg, seed=seed), seed)}
            rows.append(row)
            print({k: v for k, v in row.items() if k != "reference_types"}, flush=True)
    cmd = "python benchmarks/gsrcl_annotation.py " + " ".join(sys.argv[1:])

    def f(r, k):
        v = [x[k] for x in r if x[k] is not None]
        return f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}" if v else "–"

    lines = ["# GsRCL annotation of held-out cells (reference trained on the other 80%)", "",
             f"`{cmd}` with `{os.path.relpath(args.config, ROOT)}`, cutoff 0.5; mean ± sd over seeds {args.seeds}.",
             "Accuracy counts Unassigned as wrong; 'unknown types' are held-out cells of types too small to get a "
             "classifier in the reference, which should ideally be left Unassigned.", "",
             "| dataset | query cells | accuracy | accuracy (assigned) | Unassigned | accuracy (known types) | "
             "unknown-type cells | unknown left Unassigned |", "|---|---|---|---|---|---|---|---|"]
    for name in args.datasets:
        r = [x for x in rows if x["dataset"] == name]
        lines.append(f"| {name} | {r[0]['n_query']} | {f(r, 'accuracy')} | {f(r, 'accuracy_assigned')} | "
                     f"{f(r, 'unassigned')} | {f(r, 'accuracy_known_types')} | {r[0]['n_unknown_type']} | "
                     f"{f(r, 'unknown_left_unassigned')} |")
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "gsrcl_annotation.json"),
               {**provenance(args.seeds[0], cfg.to_dict(), cfg.devices, cmd), "rows": rows})
    with open(os.path.join(args.out, "gsrcl_annotation.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
