"""Wall time of GsRCL's whole evaluation protocol: shared vs per-type encoders, folds one by one
vs fold-batched.

    python benchmarks/gsrcl_protocol.py                               # PBMC, first 10 epochs
    python benchmarks/gsrcl_protocol.py --synthetic 4000 --encoders shared --epochs 100 --eval-every 10
    python benchmarks/gsrcl_protocol.py --synthetic 4000 --hard 16 --encoders shared --epochs 100 \
        --eval-every 10 --tag _hard4000        # the 45-minute target: many hard one-vs-rest tasks
    python benchmarks/gsrcl_protocol.py --encoders shared --fold-batch off on --epochs 6 --eval-every 3 \
        --tag _fold_batch

One dataset (``--data-file``, default the shared 10X PBMC file; or ``--synthetic N``: N cells x
2000 genes of synthetic counts in 10 groups, or with ``--hard T`` in T types whose pairs differ
by a weak programme) runs the protocol of ``--config`` (default
``configs/gsrcl_cpu.toml``) for every cell type, once per ``--encoders`` mode and ``--fold-batch``
setting, each in its own process (so that one run's compiled programs and memory do not help the
next).  Reported per run: the wall time, the seconds spent training encoders, and the rest
(encoding, the SVM grid searches that did not overlap training, splits and I/O), with the number
of encoders trained.
Writes ``benchmarks/results/gsrcl_protocol_<tag>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
PBMC = os.path.join(os.path.dirname(ROOT), "shared", "data", "10X_PBMC_select_2100_top2000.h5")


def draw_paired(seed: int, n_cells: int, n_types: int = 16, n_genes: int = 2000):
    """Synthetic counts whose one-vs-rest tasks are hard for an SVM on the raw genes: ``n_types``
    cell types in pairs; each pair shares a programme (4x up on 10% of the genes) and the two
    siblings differ only by a weak one (2x up on 3% of the genes), on gamma-Poisson noise (theta 2)
    with log-normal library sizes and 30% extra zeros.  Returns (counts int32, labels)."""
    import numpy as np

    rng = np.random.default_rng([seed, 7])
    log_base = rng.normal(-1.0, 1.0, n_genes)
    pair = np.log(4.0) * (rng.random((n_types // 2 + n_types % 2, n_genes)) < 0.10)
    sibling = np.log(2.0) * (rng.random((n_types, n_genes)) < 0.03)
    labels = np.arange(n_cells) % n_types
    mu = np.exp(log_base + pair[labels // 2] + sibling[labels] + 0.3 * rng.normal(size=(n_cells, 1)))
    counts = rng.poisson(rng.gamma(2.0, 0.5, size=mu.shape) * mu).astype(np.int32)
    counts[rng.random(mu.shape) < 0.3] = 0
    return counts, labels


def load(args):
    import numpy as np

    from scdc_jax.io import CountData, read_counts

    if args.synthetic and args.hard:
        counts, labels = draw_paired(args.seed, args.synthetic, args.hard)
        return CountData(X=counts, labels=labels, label_names=[f"type{i}" for i in range(args.hard)],
                         source=f"synthetic paired {args.synthetic} x {counts.shape[1]}")
    if args.synthetic:
        from benchmarks.scaling import N_GROUPS, draw_block

        counts = draw_block(args.seed, 0, args.synthetic)
        labels = np.arange(args.synthetic) % N_GROUPS
        return CountData(X=counts, labels=labels, label_names=[f"group{i}" for i in range(N_GROUPS)],
                         source=f"synthetic {args.synthetic} x {counts.shape[1]}")
    return read_counts(args.data_file)


def worker(args) -> dict:
    from scdc_jax.gsrcl.config import load_config
    from scdc_jax.gsrcl.protocol import evaluate

    data = load(args)
    mode, fold_batch = args.worker.split(":")
    cfg = load_config(args.config, epochs=args.epochs, eval_every=args.eval_every, encoders=mode,
                      precision=args.precision, seed=args.seed, fold_batch=fold_batch)
    t0 = time.perf_counter()
    res = evaluate(data, cfg, progress=False, log=lambda m: None)
    wall = time.perf_counter() - t0
    n_encoders = cfg.n_folds * (1 if res["encoders"] == "shared" else len(res["tasks"]))
    return {"encoders": res["encoders"], "fold_batch": fold_batch, "wall_s": wall, "train_s": res["train_s"],
            "other_s": wall - res["train_s"],
            "n_encoders": n_encoders, "n_types": len(res["tasks"]), "n_cells": data.n_cells, "n_genes": data.n_genes,
            "epochs": cfg.n_epochs, "eval_every": cfg.eval_every, "precision": cfg.precision,
            "gsrcl_mcc": {t["cell_type"]: t["gsrcl"]["mcc_mean"] for t in res["tasks"]},
            "raw_mcc": {t["cell_type"]: t["raw"]["mcc_mean"] for t in res["tasks"]}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-file", default=PBMC)
    ap.add_argument("--synthetic", type=int, default=0, help="N synthetic cells instead of --data-file")
    ap.add_argument("--hard", type=int, default=0, metavar="T",
                    help="with --synthetic: T cell types in pairs that differ by a weak programme "
                         "(one-vs-rest tasks that are hard for the raw-gene SVM) instead of 10 well-separated groups")
    ap.add_argument("--save-h5", metavar="PATH",
                    help="write the synthetic dataset to PATH (X, Y) for the command-line tool, and stop")
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "gsrcl_cpu.toml"))
    ap.add_argument("--encoders", nargs="+", default=["shared", "per-type"], choices=["shared", "per-type"])
    ap.add_argument("--fold-batch", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                    help="fold batching settings to run (default auto: sequential on a CPU)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    if args.save_h5:
        import h5py

        data = load(args)
        with h5py.File(args.save_h5, "w") as f:
            f["X"], f["Y"] = data.X, data.labels
        print(f"wrote {data.source} to {args.save_h5}")
        return 0
    if not args.synthetic and not os.path.exists(args.data_file):
        sys.exit(f"skipped: {args.data_file} is absent (real data lives only on developer machines and CI); "
                 "use --synthetic N")
    argv = sys.argv[1:] if argv is None else list(argv)
    rows = []
    for run in [f"{mode}:{fb}" for mode in args.encoders for fb in args.fold_batch]:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--worker", run],
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"the {run} run failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][7:]))
        print(json.dumps(rows[-1]), flush=True)
    from scdc_jax.outputs import provenance, write_json

    cmd = "python benchmarks/gsrcl_protocol.py " + " ".join(argv)
    what = (f"synthetic {args.synthetic} cells in {args.hard} paired types" if args.synthetic and args.hard
            else f"synthetic {args.synthetic} cells" if args.synthetic else os.path.basename(args.data_file))
    r0 = rows[0]
    lines = [f"# GsRCL evaluation protocol: wall time by encoder sharing and fold batching ({platform.machine()}, "
             f"{os.cpu_count()} cores)",
             "", f"`{cmd}`", "",
             f"{what}: {r0['n_cells']} cells x {r0['n_genes']} genes, {r0['n_types']} cell types, "
             f"`{os.path.relpath(args.config, ROOT)}` cut to {r0['epochs']} epochs with selection every "
             f"{r0['eval_every']} (and at epoch 0), {r0['precision']}.  'other' is the wall time outside encoder "
             "training: encodings, the SVM grid searches that did not overlap training, splits.", "",
             "| encoders | fold batch | encoders trained | wall (s) | training (s) | other (s) | mean GsRCL MCC | "
             "mean raw MCC |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, raw = r["gsrcl_mcc"].values(), r["raw_mcc"].values()
        lines.append(f"| {r['encoders']} | {r.get('fold_batch', 'off')} | {r['n_encoders']} | {r['wall_s']:.0f} | "
                     f"{r['train_s']:.0f} | {r['other_s']:.0f} | {sum(g) / len(g):.3f} | {sum(raw) / len(raw):.3f} |")
    for r in rows:
        hard = [t for t, m in r["raw_mcc"].items() if m < 0.9]
        if hard:
            up = [t for t in hard if r["gsrcl_mcc"][t] > r["raw_mcc"][t]]
            lines += ["", f"{r['encoders']}: {len(hard)} of {r['n_types']} types have raw MCC < 0.9; GsRCL's mean MCC is "
                      f"above raw on {len(up)} of them (" + ", ".join(
                          f"{t} {r['raw_mcc'][t]:.3f} -> {r['gsrcl_mcc'][t]:.3f}" for t in hard) + ")"]
    modes = {r["encoders"]: r for r in rows}
    if len(modes) == 2 == len(rows):
        lines += ["", f"per-type / shared wall time: {modes['per-type']['wall_s'] / modes['shared']['wall_s']:.1f}x"]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"gsrcl_protocol{args.tag}")
    write_json(stem + ".json", {**provenance(args.seed, {"config": args.config}, 1, cmd), "rows": rows})
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
