"""Charts of the benchmark results: speed, scaling and accuracy, as PNGs.

    python benchmarks/plot.py                     # reads and writes benchmarks/results/

Reads the JSON files the benchmark scripts wrote (``speed_*.json``, ``scaling_*.json``,
``accuracy_*.json``) and draws ``speed.png``, ``scaling.png`` and ``accuracy.png``; a chart
whose results are absent is skipped with a line saying so.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FW_LABEL = {"jax": "scdc_jax f32", "torch32": "PyTorch f32", "torch64": "PyTorch f64",
            "scdc_jax": "scdc_jax", "torch_f32": "PyTorch f32", "torch_f64": "PyTorch f64"}
COLOURS = {"jax": "tab:blue", "scdc_jax": "tab:blue", "torch32": "tab:orange", "torch_f32": "tab:orange",
           "torch64": "tab:red", "torch_f64": "tab:red"}


def _load(pattern: str) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as fh:
            out.append((path, json.load(fh)))
    return out


def _save(fig, plt, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speed(results: str, plt) -> str | None:
    runs = [(p, r) for p, r in _load(os.path.join(results, "speed_*.json")) if "results" in r]
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, (path, rep) in zip(axes[0], runs):
        names = list(rep["results"])
        fws = ["jax", "torch32", "torch64"]
        width = 0.27
        for i, fw in enumerate(fws):
            vals = [rep["results"][n]["median_s"].get(fw) for n in names]
            xs = [j + (i - 1) * width for j, v in enumerate(vals) if v is not None]
            ax.bar(xs, [v for v in vals if v is not None], width, label=FW_LABEL[fw], color=COLOURS[fw])
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), [n.replace("scdeepcluster.", "scDC ").replace("gsrcl.", "GsRCL ")
                                          .replace("_", " ") for n in names], fontsize=8)
        ax.set_ylabel("median seconds (log)")
        dev = rep["machine"].get("cuda_device") or rep["machine"].get("cpu_model")
        ax.set_title(f"{os.path.basename(path)[:-5]}: {dev}", fontsize=9)
        ax.legend(fontsize=8)
    return _save(fig, plt, os.path.join(results, "speed.png"))


def plot_scaling(results: str, plt) -> str | None:
    rows = []
    for path, rep in _load(os.path.join(results, "scaling_*.json")):
        if "forced" in os.path.basename(path):  # forced CPU devices show correctness, not speed
            continue
        plat = "GPU" if "gpu" in os.path.basename(path) else "CPU"
        rows += [{**r, "where": plat} for r in rep.get("rows", []) if "error" not in r]
    if not rows:
        return None
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    series = {}
    for r in rows:
        if r["devices"] != 1:
            continue
        key = (r["where"], r["impl"], r["input"])
        series.setdefault(key, []).append(r)
    for (where, impl, inp), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["cells"])
        style = "-" if where == "GPU" else "--"
        marker = "o" if inp == "dense" else "s"
        label = f"{FW_LABEL[impl]}, {where}, {inp} input"
        ax_t.plot([r["cells"] for r in rs], [r["epoch_s"] for r in rs], style, marker=marker, label=label,
                  color=COLOURS[impl])
        ax_m.plot([r["cells"] for r in rs], [r["peak_host_gib"] for r in rs], style, marker=marker, label=label,
                  color=COLOURS[impl])
        dev = [r for r in rs if r.get("peak_device_gib") is not None]
        if where == "GPU" and dev:
            ax_m.plot([r["cells"] for r in dev], [r["peak_device_gib"] for r in dev], ":", marker=marker,
                      color=COLOURS[impl], label=f"{FW_LABEL[impl]}, GPU memory, {inp} input")
    for ax, ylab in ((ax_t, "seconds per pretraining epoch"), (ax_m, "peak memory (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells (2000 genes)")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    ax_m.legend(fontsize=7)
    ax_t.set_title("scDeepCluster pretraining epoch vs cells", fontsize=9)
    ax_m.set_title("peak host (solid/dashed) and GPU (dotted) memory", fontsize=9)
    return _save(fig, plt, os.path.join(results, "scaling.png"))


def plot_accuracy(results: str, plt) -> str | None:
    reps = [(p, r) for p, r in _load(os.path.join(results, "accuracy_*.json")) if "summary" in r and "impl" in r]
    if not reps:
        return None
    groups = {}
    for path, r in reps:
        tag = os.path.basename(path)[len("accuracy_"):-5]
        groups[f"{r['impl']} ({r['mode']}{', GPU' if 'gpu' in tag else ', CPU'})"] = r
    datasets = sorted({d for r in groups.values() for d in r["summary"]})
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(groups)
    for i, (label, r) in enumerate(sorted(groups.items())):
        xs, ys, es = [], [], []
        for j, d in enumerate(datasets):
            s = r["summary"].get(d)
            if s:
                xs.append(j + (i - (len(groups) - 1) / 2) * width)
                ys.append(s["ari"]["mean"])
                es.append(s["ari"]["sd"])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=label, color=COLOURS.get(r["impl"]),
               alpha=1.0 if "given" in label else 0.5)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("ARI (mean ± sd over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("scDeepCluster accuracy, published defaults", fontsize=9)
    return _save(fig, plt, os.path.join(results, "accuracy.png"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, fn in (("speed", plot_speed), ("scaling", plot_scaling), ("accuracy", plot_accuracy)):
        out = fn(args.results, plt)
        print(f"wrote {out}" if out else f"skipped {name}: no {name} results in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
