"""Per-type table of GsRCL against the raw-gene SVM and the masking baseline, from evaluate runs.

    python benchmarks/gsrcl_report.py --run pbmc=benchmarks/results/gsrcl/pbmc_cpu \\
        --masking pbmc=benchmarks/results/gsrcl/pbmc_masking_cpu --out benchmarks/results/gsrcl/summary.md

Each ``--run NAME=DIR`` (and optional ``--masking NAME=DIR``) is the ``--out-dir`` of a
``python -m scdc_jax.gsrcl`` run (its ``results.json``).  For every cell type: its cells, the
raw-gene SVM's MCC, GsRCL's and the masking baseline's (mean ± standard error over the outer
folds), the epochs selected in each fold, and GsRCL minus raw as a paired difference over the
folds (mean ± standard error of the per-fold differences; the folds are the same for both).  On
the types where the raw-gene MCC is below ``--hard`` (0.9), the verdict says whether GsRCL is
better or worse by more than two standard errors of that difference, or within them.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np


def load(spec: str) -> tuple[str, dict]:
    name, _, folder = spec.partition("=")
    with open(os.path.join(folder, "results.json")) as fh:
        return name, json.load(fh)


def verdict(diff: float, se: float) -> str:
    if diff > 2 * se:
        return "GsRCL better"
    if diff < -2 * se:
        return "GsRCL worse"
    return "within noise"


def table(name: str, run: dict, masking: dict | None, hard: float) -> tuple[list[str], dict]:
    lines = [f"### {name}: {run['n_cells']} cells x {run['n_genes']} genes, {run['seconds'] / 60:.0f} min "
             f"({run['train_s'] / 60:.0f} min training {run['encoders']} encoders)", "",
             "| cell type | cells | MCC raw genes | MCC GsRCL | MCC masking | GsRCL - raw (paired) | "
             "selected epochs | raw MCC < %.1f |" % hard, "|---|---|---|---|---|---|---|---|"]
    mask = {t["cell_type"]: t for t in masking["tasks"]} if masking else {}
    counts = {"GsRCL better": 0, "GsRCL worse": 0, "within noise": 0}
    for t in sorted(run["tasks"], key=lambda t: t["raw"]["mcc_mean"]):
        diff = np.array([f["gsrcl"]["mcc"] - f["raw"]["mcc"] for f in t["folds"]])
        d, se = float(diff.mean()), float(diff.std() / np.sqrt(len(diff)))
        m = mask.get(t["cell_type"])
        hard_cell = "–"
        if t["raw"]["mcc_mean"] < hard:
            hard_cell = verdict(d, se)
            counts[hard_cell] += 1
        cell = lambda s: f"{s['mcc_mean']:.3f} ± {s['mcc_se']:.3f}"  # noqa: E731
        lines.append(f"| {t['cell_type']} | {t['n_cells']} | {cell(t['raw'])} | {cell(t['gsrcl'])} | "
                     f"{cell(m['gsrcl']) if m else '–'} | {d:+.3f} ± {se:.3f} | "
                     f"{','.join(str(f['best_epoch']) for f in t['folds'])} | {hard_cell} |")
    lines += [f"- {s}" for s in run["skipped"]]
    return lines, counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="NAME=DIR of a GsRCL evaluate run")
    ap.add_argument("--masking", action="append", default=[], help="NAME=DIR of the masking baseline's run")
    ap.add_argument("--hard", type=float, default=0.9, help="raw-gene MCC below which a task counts as hard")
    ap.add_argument("--out", required=True, help="markdown file to write")
    args = ap.parse_args(argv)
    masking = dict(load(s) for s in args.masking)
    out = []
    for spec in args.run:
        name, run = load(spec)
        lines, counts = table(name, run, masking.get(name), args.hard)
        out += lines + ["", "On the hard types: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".", ""]
    with open(args.out, "w") as fh:
        fh.write("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
