"""Seconds per epoch of a seed ensemble against one model, on the same cells and device.

    python benchmarks/ensemble_speed.py --members 1 4 8
    python benchmarks/ensemble_speed.py --members 1 4 --tag _gpu        # on a GPU

One model is the single run's compiled epoch; N members are the ensemble's epoch (the single-model
epoch ``jax.vmap``-ed over a leading members axis, :func:`scdc_jax.cluster.train.make_epoch`).
For each: a pretraining epoch (ZINB loss, shuffled minibatches) and a clustering epoch (ZINB + DEC
loss against a target), each compiled once first and then timed over ``--epochs`` epochs, the
median epoch reported.  The ratio to one model is what an ensemble costs; on a CPU it is near N
(the epoch is compute-bound), on a GPU a small model leaves most of the chip idle.  Default data:
the shared mouse bladder file, 2000 genes.  Writes ``benchmarks/results/ensemble_speed<tag>.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
DATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "data")


def epoch_seconds(prep, n_members: int, epochs: int) -> dict:
    import jax
    import jax.numpy as jnp

    from scdc_jax.cluster import ClusterConfig
    from scdc_jax.cluster.ensemble import stack
    from scdc_jax.cluster.source import InMemory
    from scdc_jax.cluster.train import build_model, cluster_loss, device_data, pretrain_loss, stage_key
    from scdc_jax.optim import adadelta_torch, amsgrad_torch

    cfg = ClusterConfig(n_clusters=16)
    members = n_members > 1
    source = InMemory(device_data(prep), batch_size=cfg.batch_size)
    seeds = list(range(n_members))
    built = [build_model(cfg, prep.shape[1], s) for s in seeds]
    graphdef = built[0][0]
    ae = stack([b[1] for b in built]) if members else built[0][1]

    def keys(stage, epoch):
        return jnp.stack([stage_key(s, stage, epoch) for s in seeds]) if members else stage_key(0, stage, epoch)

    def timed(fn, state, stage, extra=()):
        out = {}
        for phase, n in (("compile_s", 1), ("epoch_s", epochs)):
            times = []
            for e in range(n):
                t0 = time.perf_counter()
                state = fn(*state, keys(stage, e), *extra)[:2]
                jax.block_until_ready(state)
                times.append(time.perf_counter() - t0)
            out[phase] = float(np.median(times))
        return out, state

    tx = amsgrad_torch(cfg.lr_pretrain)
    opt = jax.vmap(tx.init)(ae) if members else tx.init(ae)
    pre = source.epoch(partial(pretrain_loss, graphdef=graphdef, sigma=cfg.sigma, ridge_lambda=0.0), tx,
                       shuffle=True, members=members)
    pre_t, (ae, _) = timed(pre, (ae, opt), 1)
    z = np.asarray(source.encoder(graphdef, members=members)(ae))
    rng = np.random.default_rng(0)
    mu = np.take(z, rng.choice(z.shape[-2], 16, replace=False), axis=-2)  # 16 cells' latents as centres
    params = {"ae": ae, "mu": jnp.asarray(mu)}
    tx2 = adadelta_torch(cfg.lr_cluster)
    opt2 = jax.vmap(tx2.init)(params) if members else tx2.init(params)
    p = source.assigner(graphdef, cfg.alpha, members=members)(params)[2]
    clu = source.epoch(partial(cluster_loss, graphdef=graphdef, sigma=cfg.sigma, gamma=cfg.gamma, alpha=cfg.alpha,
                               ridge_lambda=0.0, batch_mmd=0.0), tx2, shuffle=False, members=members)
    clu_t, _ = timed(clu, (params, opt2), 2, ({"p": p},))
    return {"members": n_members, "pretrain": pre_t, "cluster": clu_t}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-file", default=os.path.join(DATA, "mouse_bladder_cell_select_2100.h5"))
    ap.add_argument("--select-genes", type=int, default=2000)
    ap.add_argument("--members", nargs="+", type=int, default=[1, 4, 8])
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs after the compiling one (median reported)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="_cpu")
    args = ap.parse_args()
    if not os.path.isfile(args.data_file):
        sys.exit(f"skipped: {args.data_file} is absent (real data lives only on developer machines and CI)")
    import jax

    from scdc_jax.io import read_counts
    from scdc_jax.preprocess import prepare

    prep = prepare(read_counts(args.data_file), select_genes_n=args.select_genes)
    rows = []
    for n in args.members:
        row = epoch_seconds(prep, n, args.epochs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["members"] == 1), None)
    cmd = "python benchmarks/ensemble_speed.py " + " ".join(sys.argv[1:])
    device = jax.devices()[0].device_kind
    lines = ["# Seconds per epoch: a seed ensemble against one model", "",
             f"`{cmd}` ({device}, {time.strftime('%Y-%m-%d')}); {prep.shape[0]} cells x {prep.shape[1]} genes, "
             f"batch 256; median of {args.epochs} epochs after the compiling one.  x one model: the epoch's time "
             "over one model's, measured in the same process.", "",
             "| members | pretraining epoch (s) | x one model | clustering epoch (s) | x one model | compile, pretraining (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = {s: (r[s]["epoch_s"] / base[s]["epoch_s"] if base else float("nan")) for s in ("pretrain", "cluster")}
        r["ratio"] = ratio
        lines.append(f"| {r['members']} | {r['pretrain']['epoch_s']:.3f} | {ratio['pretrain']:.2f} | "
                     f"{r['cluster']['epoch_s']:.3f} | {ratio['cluster']:.2f} | {r['pretrain']['compile_s']:.1f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"ensemble_speed{args.tag}.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, f"ensemble_speed{args.tag}.json"), "w") as fh:
        json.dump({"command": cmd, "device": device, "rows": rows}, fh, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
