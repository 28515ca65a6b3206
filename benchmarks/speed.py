"""Seconds per scDeepCluster epoch and per GsRCL step: scdc_jax against the PyTorch baselines.

Frameworks are measured alternately in one run (jax, torch32, torch64, jax, ...) so that load
from other processes on the machine falls on all of them alike; the report gives every round,
the medians and the ratios.  Warm-up calls (the first JAX call compiles) are excluded.

    python benchmarks/speed.py --rounds 5 --gsrcl-rounds 3 --device cpu --out benchmarks/results/

scDeepCluster: mouse_bladder_cell_select_2100 (2100 cells), 2000 selected genes, batch 256,
default network; a pretraining epoch is 9 AMSGrad steps with the input noise, a clustering
epoch 9 Adadelta steps on KL + ZINB (the per-epoch target update is not included).
GsRCL: one contrastive step (two N(0, 1) views, NT-Xent, Adam with coupled decay) on all 822
cells of baron_mouse1 (14878 genes, log1p) with the published sizes; ``--quick`` shrinks it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from functools import partial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_ratios(times: dict, ref: str = "jax") -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, {f"{k}/{ref}": med[k] / med[ref] for k in med if k != ref}


# ---------------------------------------------------------------- scDeepCluster

def bench_scdeepcluster(args, torch_device):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from benchmarks.baselines import torch_scdeepcluster as tsc
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
    k = args.n_clusters

    # scdc_jax, float32
    graphdef, state = build_model(cfg, g, seed=0)
    data = device_data(prep)
    tx_pre, tx_clu = amsgrad_torch(cfg.lr_pretrain), adadelta_torch(cfg.lr_cluster)
    pre = make_epoch(partial(pretrain_loss, graphdef=graphdef, sigma=cfg.sigma), tx_pre, n=n,
                     batch_size=cfg.batch_size, shuffle=True)
    clu = make_epoch(partial(cluster_loss, graphdef=graphdef, sigma=cfg.sigma, gamma=cfg.gamma), tx_clu, n=n,
                     batch_size=cfg.batch_size, shuffle=False)
    rng = np.random.default_rng(0)
    z0 = make_assign(graphdef)({"ae": state, "mu": jnp.zeros((k, cfg.latent))}, data)[0]
    mu = jnp.asarray(np.asarray(z0)[rng.choice(n, k, replace=False)])
    p_jax = make_assign(graphdef)({"ae": state, "mu": mu}, data)[2]
    jstate = {"pre": [jax.tree.map(jnp.array, state), None], "clu": [None, None], "ep": 0}
    jstate["pre"][1] = tx_pre.init(jstate["pre"][0])
    cparams = {"ae": jax.tree.map(jnp.array, state), "mu": mu}
    jstate["clu"] = [cparams, tx_clu.init(cparams)]

    def jax_pre():
        jstate["ep"] += 1
        params, opt, loss = pre(*jstate["pre"], data, stage_key(0, 1, jstate["ep"]))
        jax.block_until_ready(loss)
        jstate["pre"] = [params, opt]

    def jax_clu():
        jstate["ep"] += 1
        params, opt, loss = clu(*jstate["clu"], data, stage_key(0, 2, jstate["ep"]), {"p": p_jax})
        jax.block_until_ready(loss)
        jstate["clu"] = [params, opt]

    runners = {"jax": (jax_pre, jax_clu)}
    for name, dtype in (("torch32", torch.float32), ("torch64", torch.float64)):
        to = dict(dtype=dtype, device=torch_device)
        x, raw, sf = (torch.as_tensor(tsc.dense(a), **to) for a in (prep.x, prep.raw, prep.size_factors))
        p = torch.as_tensor(np.asarray(p_jax), **to)
        m_pre = tsc.copy_from_jax(tsc.build_model(g, dtype=dtype, device=torch_device), state)
        o_pre = tsc.pretrain_optimizer(m_pre)
        m_clu = tsc.copy_from_jax(tsc.build_model(g, dtype=dtype, device=torch_device), state)
        mu_t = torch.nn.Parameter(torch.as_tensor(np.asarray(mu), **to))
        o_clu = tsc.cluster_optimizer(m_clu, mu_t)
        gen = torch.Generator(device=torch_device).manual_seed(0)

        def t_pre(m=m_pre, o=o_pre, x=x, raw=raw, sf=sf, gen=gen):
            tsc.pretrain_epoch(m, o, x, raw, sf, batch_size=cfg.batch_size, sigma=cfg.sigma, generator=gen)

        def t_clu(m=m_clu, mu=mu_t, o=o_clu, x=x, raw=raw, sf=sf, p=p, gen=gen):
            tsc.cluster_epoch(m, mu, o, x, raw, sf, p, batch_size=cfg.batch_size, sigma=cfg.sigma,
                              gamma=cfg.gamma, generator=gen)

        runners[name] = (t_pre, t_clu)

    times = {"pretrain_epoch": {k: [] for k in runners}, "cluster_epoch": {k: [] for k in runners}}
    for r in range(args.rounds + 1):  # round 0 is the warm-up
        for name, (f_pre, f_clu) in runners.items():
            for stage, f in (("pretrain_epoch", f_pre), ("cluster_epoch", f_clu)):
                t0 = time.perf_counter()
                f()
                dt = time.perf_counter() - t0
                if r > 0:
                    times[stage][name].append(dt)
                print(f"  scDeepCluster round {r}{' (warm-up)' if r == 0 else ''} {name:8s} {stage}: {dt:.3f} s",
                      flush=True)
    return times, {"cells": n, "genes": g, "batch_size": cfg.batch_size, "steps_per_epoch": -(-n // cfg.batch_size),
                   "n_clusters": k, "file": os.path.basename(args.scdc_file)}


# ---------------------------------------------------------------- GsRCL

def bench_gsrcl(args, torch_device):
    import h5py
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from flax import nnx

    from benchmarks.baselines import torch_gsrcl as tg
    from scdc_jax.losses import ntxent
    from scdc_jax.nn import GsRCLNet
    from scdc_jax.optim import adam_coupled_l2

    with h5py.File(args.gsrcl_file, "r") as fh:
        x = np.log1p(np.asarray(fh["X"], np.float64)).astype(np.float32)
    if args.quick:
        x = x[:, np.argsort(-x.var(0))[:2000]]
        sizes = dict(encoder=(1024, 1024, 1024, 512), head=(256, 128))
    else:
        sizes = dict(encoder=(4096, 4096, 4096, 2048), head=(512, 128))
    x = x[:args.gsrcl_cells]
    n, g = x.shape

    tx = adam_coupled_l2(1e-4, 1e-6)
    xj = jnp.asarray(x)

    def jax_runner(dtype):
        """One scdc_jax step with the Dense layers computed in ``dtype`` (parameters, loss and
        optimiser float32 either way)."""
        graphdef, state = nnx.split(GsRCLNet(g, **sizes, dtype=dtype, rngs=nnx.Rngs(0)))

        def loss_fn(params, xb, key):
            k1, k2 = jax.random.split(key)
            m = nnx.merge(graphdef, params)
            v1 = xb + jax.random.normal(k1, xb.shape, xb.dtype)
            v2 = xb + jax.random.normal(k2, xb.shape, xb.dtype)
            return ntxent(m(v1)[1].astype(jnp.float32), m(v2)[1].astype(jnp.float32), temperature=0.07)

        @partial(jax.jit, donate_argnums=(0, 1))
        def step(params, opt_state, xb, key):
            loss, grads = jax.value_and_grad(loss_fn)(params, xb, key)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        js = {"s": [state, tx.init(state)], "i": 0}

        def run():
            js["i"] += 1
            params, opt, loss = step(*js["s"], xj, jax.random.key(js["i"]))
            jax.block_until_ready(loss)
            js["s"] = [params, opt]

        return state, run

    state, jax_step = jax_runner(None)

    net = tg.copy_from_jax(tg.build_model(g, **sizes, device=torch_device), state)
    opt = tg.make_optimizer(net)
    xt = torch.as_tensor(x, device=torch_device)
    gen = torch.Generator(device=torch_device).manual_seed(0)

    def torch_step():
        float(tg.random_step(net, opt, xt, gen))

    runners = {"jax": jax_step, "torch32": torch_step}
    if args.gsrcl_bf16:
        runners["jax_bf16"] = jax_runner(jnp.bfloat16)[1]
    times = {k: [] for k in runners}
    for r in range(args.gsrcl_rounds + 1):
        for name, f in runners.items():
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
            if r > 0:
                times[name].append(dt)
            print(f"  GsRCL round {r}{' (warm-up)' if r == 0 else ''} {name:8s} step: {dt:.3f} s", flush=True)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state))
    return {"train_step": times}, {"cells": n, "genes": g, **{k: list(v) for k, v in sizes.items()},
                                   "parameters": n_params, "file": os.path.basename(args.gsrcl_file),
                                   "reduced": bool(args.quick)}


# ---------------------------------------------------------------- report

def write_report(args, platform_name, results, path_json, path_md):
    import flax
    import jax
    import numpy as np
    import optax
    import torch

    summary = {}
    for method, (times, setup) in results.items():
        for stage, per_fw in times.items():
            med, ratios = median_ratios(per_fw)
            summary[f"{method}.{stage}"] = {"median_s": med, "ratios": ratios, "rounds": per_fw, "setup": setup}
    report = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(),
                    "jax_backend": platform_name, "jax_devices": [str(d) for d in jax.devices()],
                    "torch_device": args.device, "torch_threads": torch.get_num_threads(),
                    "cuda_device": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                    "matmul_precision": args.matmul},
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "note": "frameworks measured alternately in one run; warm-up excluded; ratio = torch median / jax median",
        "results": summary,
    }
    with open(path_json, "w") as fh:
        json.dump(report, fh, indent=2)

    fws = ["jax", "torch32", "torch64", "jax_bf16"]
    lines = [f"# Speed, {platform_name} ({report['machine']['cpu_model']}, {report['machine']['cpu_cores']} cores)",
             "", f"`{report['command']}` on {report['date_utc']}; median seconds over the rounds "
             f"(frameworks alternated, warm-up excluded); ratio = torch / scdc_jax; float32 matmuls: {args.matmul}.", "",
             "| measurement | scdc_jax f32 | torch f32 | torch f64 | scdc_jax bf16 | torch f32 / jax | "
             "torch f64 / jax | torch f32 / jax bf16 | rounds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        med = s["median_s"]
        cells = [f"{med[f]:.3f}" if f in med else "–" for f in fws]
        rat = [f"{s['ratios'][f + '/jax']:.1f}x" if f + "/jax" in s["ratios"] else "–" for f in fws[1:3]]
        rat.append(f"{med['torch32'] / med['jax_bf16']:.1f}x" if "jax_bf16" in med else "–")
        lines.append(f"| {key} | {' | '.join(cells)} | {' | '.join(rat)} | {len(s['rounds']['jax'])} |")
    lines.append("")
    for method, (_, setup) in results.items():
        lines.append(f"- {method}: " + ", ".join(f"{k} {v}" for k, v in setup.items()))
    lines.append("")
    with open(path_md, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed scDeepCluster rounds per framework")
    ap.add_argument("--gsrcl-rounds", type=int, default=3, help="timed GsRCL steps per framework")
    ap.add_argument("--quick", action="store_true", help="2 rounds and a smaller GsRCL network (2000 genes)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--scdc-file", default=os.path.join(DATA, "mouse_bladder_cell_select_2100.h5"))
    ap.add_argument("--select-genes", type=int, default=2000)
    ap.add_argument("--n-clusters", type=int, default=16)
    ap.add_argument("--gsrcl-file", default=os.path.join(DATA, "baron_mouse1.h5"))
    ap.add_argument("--gsrcl-cells", type=int, default=822)
    ap.add_argument("--skip-gsrcl", action="store_true")
    ap.add_argument("--gsrcl-bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the GsRCL step with bfloat16 matmuls (--precision bf16)")
    ap.add_argument("--matmul", choices=["float32", "tf32"], default="float32",
                    help="float32 matmul precision of both frameworks (GPUs only; default full float32)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.gsrcl_rounds = min(args.rounds, 2), min(args.gsrcl_rounds, 2)

    missing = [f for f in (args.scdc_file, None if args.skip_gsrcl else args.gsrcl_file) if f and not os.path.exists(f)]
    if missing:
        print(f"skipped: data file(s) {', '.join(missing)} absent (they live in ../shared/data on developer machines).")
        return 0
    if args.device == "cpu":
        import jax

        jax.config.update("jax_platforms", "cpu")
    import jax

    from benchmarks.common import set_matmul_precision

    set_matmul_precision(args.matmul)
    platform_name = jax.default_backend()
    results = {"scdeepcluster": bench_scdeepcluster(args, args.device)}
    if not args.skip_gsrcl:
        results["gsrcl"] = bench_gsrcl(args, args.device)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"speed_{platform_name}{'' if args.matmul == 'float32' else '_' + args.matmul}")
    write_report(args, platform_name, results, stem + ".json", stem + ".md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
