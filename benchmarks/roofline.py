"""How close a scDeepCluster epoch runs to the floor set by its matrix products.

    python benchmarks/roofline.py --rounds 7 --device cpu --out benchmarks/results/

What is counted: the multiply-adds (2 FLOPs each) of every Dense layer of the default network
(``G -> 256 -> 64 -> 32``, ``32 -> 64 -> 256``, three ``256 -> G`` heads), per cell: the forward
product ``X W``, the weight gradient ``X^T dY`` and the input gradient ``dY W^T`` (not for the
first layer, whose input is data).  The clustering epoch adds the clean encoder pass, forward
and backward (the KL loss flows through it).  The epoch's count is per real cell (n cells, not
the padded slots of the last batch); bias adds, activations, the ZINB likelihood, the noise and
the optimiser are not counted: they are what the epoch spends above the floor.

The floor: each of those products timed alone at the epoch's batch shape and operand layout (a
jitted ``lax.dot_general``, R distinct inputs per call so that dispatch is amortised), summed
over the products of an epoch.  The epoch: the real compiled epoch of ``scdc_jax.cluster.train``
on mouse_bladder_cell_select_2100 (2000 selected genes).  Epochs and products alternate round by
round (load from other processes falls on both); the fraction of the floor is the median over
rounds of ``floor seconds / epoch seconds``.  Runs on CPU or GPU (``--device``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def layer_shapes(g: int, cfg) -> dict:
    """(fan_in, fan_out) of the encoder and decoder Dense layers, in order."""
    enc = [g, *cfg.encoder, cfg.latent]
    dec = [cfg.latent, *cfg.decoder]
    return {"encoder": list(zip(enc[:-1], enc[1:])),
            "decoder": list(zip(dec[:-1], dec[1:])) + [(dec[-1], g)] * 3}


def products(shapes: dict, batch: int, *, clean_encoder: bool) -> list[tuple[str, tuple, tuple, tuple]]:
    """(name, lhs shape, rhs shape, contracting dims) of every product of one step of ``batch`` rows,
    with the operands laid out as the epoch's autodiff gives them (no transposes)."""
    out = []
    passes = [("noisy", shapes["encoder"] + shapes["decoder"])]
    if clean_encoder:
        passes.append(("clean", shapes["encoder"]))
    for tag, layers in passes:
        for i, (a, b) in enumerate(layers):
            out.append((f"{tag} {a}x{b} forward", (batch, a), (a, b), ((1,), (0,))))
            out.append((f"{tag} {a}x{b} weight grad", (batch, a), (batch, b), ((0,), (0,))))
            if i > 0:
                out.append((f"{tag} {a}x{b} input grad", (batch, b), (a, b), ((1,), (1,))))
    return out


def product_timer(lhs, rhs, contract, reps: int):
    """A function returning the seconds of one float32 product (``reps`` distinct left operands
    per call, so that dispatch is amortised); compiled on creation."""
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    xs = jax.random.normal(key, (reps, *lhs), jnp.float32)
    w = jax.random.normal(jax.random.fold_in(key, 1), rhs, jnp.float32)
    dims = (contract, ((), ()))
    f = jax.jit(lambda xs, w: jax.lax.map(lambda x: jax.lax.dot_general(x, w, dims), xs))
    jax.block_until_ready(f(xs, w))

    def run() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(f(xs, w))
        return (time.perf_counter() - t0) / reps

    return run


def epoch_runners(args):
    """(n, g, cfg, {stage: run}): ``run()`` times one real compiled epoch of that stage, in seconds."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scdc_jax.cluster.config import ClusterConfig
    from functools import partial

    from scdc_jax.cluster.train import (build_model, cluster_loss, device_data, make_assign, make_epoch,
                                        pretrain_loss, stage_key)
    from scdc_jax.io import read_counts
    from scdc_jax.optim import adadelta_torch, amsgrad_torch
    from scdc_jax.preprocess import prepare

    prep = prepare(read_counts(args.scdc_file), select_genes_n=args.select_genes)
    n, g = prep.shape
    cfg = ClusterConfig()
    graphdef, state = build_model(cfg, g, seed=0)
    data = device_data(prep)
    tx_pre, tx_clu = amsgrad_torch(cfg.lr_pretrain), adadelta_torch(cfg.lr_cluster)
    pre = make_epoch(partial(pretrain_loss, graphdef=graphdef, sigma=cfg.sigma), tx_pre, n=n,
                     batch_size=cfg.batch_size, shuffle=True)
    clu = make_epoch(partial(cluster_loss, graphdef=graphdef, sigma=cfg.sigma, gamma=cfg.gamma), tx_clu, n=n,
                     batch_size=cfg.batch_size, shuffle=False)
    z0 = make_assign(graphdef)({"ae": state, "mu": jnp.zeros((args.n_clusters, cfg.latent))}, data)[0]
    mu = jnp.asarray(np.asarray(z0)[np.random.default_rng(0).choice(n, args.n_clusters, replace=False)])
    p = make_assign(graphdef)({"ae": state, "mu": mu}, data)[2]
    params = jax.tree.map(jnp.array, state)
    cparams = {"ae": jax.tree.map(jnp.array, state), "mu": mu}
    st = {"pre": [params, tx_pre.init(params)], "clu": [cparams, tx_clu.init(cparams)], "epoch": 0}

    def timed(stage, stage_no, epoch_fn, *extra):
        def run() -> float:
            st["epoch"] += 1
            t0 = time.perf_counter()
            *st[stage], loss = epoch_fn(*st[stage], data, stage_key(0, stage_no, st["epoch"]), *extra)
            jax.block_until_ready(loss)
            return time.perf_counter() - t0
        run()  # compiles
        return run

    return n, g, cfg, {"pretrain_epoch": timed("pre", 1, pre), "cluster_epoch": timed("clu", 2, clu, {"p": p})}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds of (one epoch of each stage, every product once)")
    ap.add_argument("--reps", type=int, default=32, help="products per timed call")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--scdc-file", default=os.path.join(DATA, "mouse_bladder_cell_select_2100.h5"))
    ap.add_argument("--select-genes", type=int, default=2000)
    ap.add_argument("--n-clusters", type=int, default=16)
    args = ap.parse_args(argv)
    if not os.path.exists(args.scdc_file):
        print(f"skipped: data file {args.scdc_file} absent (it lives in ../shared/data on developer machines).")
        return 0
    import jax

    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_default_matmul_precision", "float32")  # full float32 products on GPUs too
    platform_name = jax.default_backend()

    load_before = os.getloadavg()[0]
    n, g, cfg, epochs = epoch_runners(args)
    steps = math.ceil(n / cfg.batch_size)
    shapes = layer_shapes(g, cfg)
    plan = {stage: products(shapes, cfg.batch_size, clean_encoder=stage == "cluster_epoch") for stage in epochs}
    # the clean encoder's products have the noisy one's shapes: time each distinct product once
    timers = {p[1:]: product_timer(*p[1:], args.reps) for ps in plan.values() for p in ps}
    # epochs and products alternate round by round, so that load from other processes falls on both
    epoch_s = {stage: [] for stage in epochs}
    product_s = {k: [] for k in timers}
    for r in range(args.rounds):
        for stage, run in epochs.items():
            epoch_s[stage].append(run())
        for k, run in timers.items():
            product_s[k].append(run())
        print(f"  round {r}: " + ", ".join(f"{s} {v[-1]:.4f} s" for s, v in epoch_s.items()), flush=True)

    per_cell = n / cfg.batch_size  # batch-shaped products scaled to the epoch's n real cells
    summary, rows = {}, []
    for stage, ps in plan.items():
        flops = sum(2.0 * lhs[0] * lhs[1] * rhs[1 - contract[1][0]] for _, lhs, rhs, contract in ps) * per_cell
        floors = [sum(product_s[p[1:]][r] for p in ps) * per_cell for r in range(args.rounds)]
        fractions = [f / e for f, e in zip(floors, epoch_s[stage])]
        med_epoch, med_floor = statistics.median(epoch_s[stage]), statistics.median(floors)
        summary[stage] = {"gflop": flops / 1e9, "floor_s": med_floor, "floor_gflop_s": flops / med_floor / 1e9,
                          "epoch_s": med_epoch, "achieved_gflop_s": flops / med_epoch / 1e9,
                          "fraction_of_floor": statistics.median(fractions), "epoch_rounds": epoch_s[stage],
                          "floor_rounds": floors, "fraction_rounds": fractions}
    for name, lhs, rhs, contract in plan["pretrain_epoch"]:
        sec = statistics.median(product_s[lhs, rhs, contract])
        f = 2.0 * lhs[0] * lhs[1] * rhs[1 - contract[1][0]]
        rows.append({"product": name, "lhs": lhs, "rhs": rhs, "contracting": contract, "seconds": sec,
                     "gflop_s": f / sec / 1e9})

    report = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "platform": platform_name,
              "devices": [str(d) for d in jax.devices()], "cpu_cores": os.cpu_count(), "jax": jax.__version__,
              "setup": {"cells": n, "genes": g, "batch_size": cfg.batch_size, "steps_per_epoch": steps,
                        "file": os.path.basename(args.scdc_file), "rounds": args.rounds},
              "load_average_1min": [load_before, os.getloadavg()[0]], "summary": summary, "products": rows}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"roofline_{platform_name}")
    with open(stem + ".json", "w") as fh:
        json.dump(report, fh, indent=2)
    lines = [f"# Roofline of a scDeepCluster epoch, {platform_name} ({report['devices'][0]}, {os.cpu_count()} cores)",
             "", f"`{report['command']}` on {report['date_utc']}; {n} cells x {g} genes, batch {cfg.batch_size}, "
             f"{steps} steps. FLOPs: forward, weight-gradient and input-gradient products of every Dense layer "
             "(no input gradient for the first), per real cell; the floor is the sum of those products "
             "timed alone at the batch shape; fraction = floor / measured epoch. Load average (1 min) before and after: "
             f"{load_before:.1f}, {os.getloadavg()[0]:.1f} (other processes slow the multi-threaded products "
             "more than the rest: compare fractions only at the same load).", "",
             "| epoch | GFLOP | floor s | floor GFLOP/s | measured s | achieved GFLOP/s | fraction of floor (median of rounds) |",
             "|---|---|---|---|---|---|---|"]
    for stage, s in summary.items():
        lines.append(f"| {stage} | {s['gflop']:.2f} | {s['floor_s']:.4f} | {s['floor_gflop_s']:.0f} | "
                     f"{s['epoch_s']:.4f} | {s['achieved_gflop_s']:.0f} | **{100 * s['fraction_of_floor']:.0f}%** |")
    lines += ["", "Products of one pretraining step (the clustering step adds the clean encoder's), "
              "contracting dims as (lhs, rhs):", "",
              "| product | lhs | rhs | contracting | ms | GFLOP/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['product']} | {r['lhs']} | {r['rhs']} | {r['contracting']} | {1e3 * r['seconds']:.3f} "
                     f"| {r['gflop_s']:.0f} |")
    lines.append("")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
