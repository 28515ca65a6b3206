"""Seconds per scDeepCluster epoch and per GsRCL step: scdc_jax against the PyTorch baselines.

Frameworks are measured alternately in one run (jax, torch32, torch64, jax, ...) so that load
from other processes on the machine falls on all of them alike; the report gives every round,
the medians and the ratios.  Warm-up calls (the first JAX call compiles) are excluded.

    python benchmarks/speed.py --rounds 5 --gsrcl-rounds 3 --device cpu --out benchmarks/results/
    python benchmarks/speed.py --rounds 3 --skip-gsrcl --upstream ~/src/scDeepCluster_pytorch

scDeepCluster: mouse_bladder_cell_select_2100 (2100 cells), 2000 selected genes, batch 256,
default network; a pretraining epoch is 9 AMSGrad steps with the input noise, a clustering
epoch 9 Adadelta steps on KL + ZINB (the per-epoch target update is not included);
``--scdc-bf16`` also times scdc_jax with ``precision="bf16"``.
``--upstream DIR`` also times the upstream reference's own pretraining loop: DIR is a checkout of
ttgump/scDeepCluster_pytorch (its ``scDeepCluster.py`` and ``layers.py``, imported from DIR at run
time, never part of this project); its model is built with the same sizes and each round runs its
``pretrain_autoencoder`` for one epoch on the same arrays (so its AMSGrad optimiser and DataLoader
are rebuilt each round, a few milliseconds against its seconds-long epoch).
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


UPSTREAM_FILES = ("scDeepCluster.py", "layers.py")


def load_upstream(folder: str):
    """The ``scDeepCluster`` module of an upstream checkout in ``folder``; exits in one sentence
    when ``folder`` does not hold it."""
    folder = os.path.abspath(os.path.expanduser(folder))
    missing = [f for f in UPSTREAM_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        sys.exit(f"--upstream {folder} must be a checkout of ttgump/scDeepCluster_pytorch, but it lacks "
                 f"{' and '.join(missing)}.")
    import importlib

    sys.path.insert(0, folder)
    try:
        module = importlib.import_module("scDeepCluster")
    except Exception as err:  # its own imports (layers, sklearn) or a syntax error
        sys.exit(f"--upstream {folder}: scDeepCluster.py could not be imported ({type(err).__name__}: {err}).")
    finally:
        sys.path.remove(folder)
    if not hasattr(module, "scDeepCluster") or not hasattr(module.scDeepCluster, "pretrain_autoencoder"):
        sys.exit(f"--upstream {folder}: its scDeepCluster.py has no scDeepCluster class with pretrain_autoencoder.")
    return module


def median_ratios(times: dict, ref: str = "jax") -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, {f"{k}/{ref}": med[k] / med[ref] for k in med if k != ref}


# ---------------------------------------------------------------- scDeepCluster

def upstream_pretrain(module, prep, cfg, device: str):
    """(its model built with ``cfg``'s sizes, a function of no arguments running one epoch of the
    upstream reference's own ``pretrain_autoencoder`` loop on it, its printing muted)."""
    import contextlib
    import io

    import numpy as np
    import torch

    from benchmarks.baselines.torch_scdeepcluster import dense

    torch.manual_seed(0)
    model = module.scDeepCluster(input_dim=prep.shape[1], z_dim=cfg.latent, encodeLayer=list(cfg.encoder),
                                 decodeLayer=list(cfg.decoder), sigma=cfg.sigma, gamma=cfg.gamma, device=device)
    x, raw, sf = (np.asarray(dense(a), np.float32) for a in (prep.x, prep.raw, prep.size_factors))

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            model.pretrain_autoencoder(x, raw, sf, batch_size=cfg.batch_size, lr=cfg.lr_pretrain, epochs=1,
                                       ae_save=False)
        if device == "cuda":
            torch.cuda.synchronize()

    return model, run


def bench_scdeepcluster(args, torch_device, upstream=None):
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from benchmarks.baselines import torch_scdeepcluster as tsc
    from scdc_jax.cluster.config import ClusterConfig
    from scdc_jax.cluster.train import (build_model, device_data, make_assign, make_cluster_epoch,
                                        make_pretrain_epoch, stage_key)
    from scdc_jax.io import read_counts
    from scdc_jax.optim import adadelta_torch, amsgrad_torch
    from scdc_jax.preprocess import prepare

    prep = prepare(read_counts(args.scdc_file), select_genes_n=args.select_genes)
    n, g = prep.shape
    cfg = ClusterConfig()
    k = args.n_clusters

    data = device_data(prep.raw, prep.norm)
    tx_pre, tx_clu = amsgrad_torch(cfg.lr_pretrain), adadelta_torch(cfg.lr_cluster)
    graphdef, state = build_model(g, 0, cfg, seed=0)  # float32 parameters in either precision
    rng = np.random.default_rng(0)
    z0 = make_assign(graphdef)({"ae": state, "mu": jnp.zeros((k, cfg.latent))}, data)[0]
    mu = jnp.asarray(np.asarray(z0)[rng.choice(n, k, replace=False)])
    p_jax = make_assign(graphdef)({"ae": state, "mu": mu}, data)[2]

    def jax_runners(precision: str):
        """(pretraining epoch, clustering epoch) of scdc_jax in ``precision``, from ``state``."""
        graphdef = build_model(cfg=dataclasses.replace(cfg, precision=precision), n_genes=g, seed=0, n_batches=0)[0]
        pre = make_pretrain_epoch(graphdef, tx_pre, n=n, batch_size=cfg.batch_size, sigma=cfg.sigma)
        clu = make_cluster_epoch(graphdef, tx_clu, n=n, batch_size=cfg.batch_size, sigma=cfg.sigma,
                                 gamma=cfg.gamma)
        pre_params = jax.tree.map(jnp.array, state)
        cparams = {"ae": jax.tree.map(jnp.array, state), "mu": jnp.array(mu)}  # copies: the epochs donate them
        js = {"pre": [pre_params, tx_pre.init(pre_params)], "clu": [cparams, tx_clu.init(cparams)], "ep": 0}

        def jax_pre():
            js["ep"] += 1
            params, opt, loss = pre(*js["pre"], data, stage_key(0, 1, js["ep"]))
            jax.block_until_ready(loss)
            js["pre"] = [params, opt]

        def jax_clu():
            js["ep"] += 1
            params, opt, loss = clu(*js["clu"], data, p_jax, stage_key(0, 2, js["ep"]))
            jax.block_until_ready(loss)
            js["clu"] = [params, opt]

        return jax_pre, jax_clu

    runners = {"jax": jax_runners("f32")}
    if args.scdc_bf16:
        runners["jax_bf16"] = jax_runners("bf16")
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
    if upstream is not None:
        runners["upstream"] = (upstream_pretrain(upstream, prep, cfg, torch_device)[1], None)

    times = {"pretrain_epoch": {k: [] for k in runners},
             "cluster_epoch": {k: [] for k, (_, f) in runners.items() if f is not None}}
    for r in range(args.rounds + 1):  # round 0 is the warm-up
        for name, (f_pre, f_clu) in runners.items():
            for stage, f in (("pretrain_epoch", f_pre), ("cluster_epoch", f_clu)):
                if f is None:
                    continue
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

    upstream = any("upstream" in s["median_s"] for s in summary.values())
    fws = ["jax", "torch32", "torch64", "jax_bf16", *(["upstream"] if upstream else [])]
    ratios = [("torch32", "jax"), ("torch64", "jax"), ("torch32", "jax_bf16"), *([("upstream", "jax")] if upstream else [])]
    label = {"jax": "scdc_jax f32", "torch32": "torch f32", "torch64": "torch f64", "jax_bf16": "scdc_jax bf16",
             "upstream": "upstream reference"}
    short = {"jax": "jax", "torch32": "torch f32", "torch64": "torch f64", "jax_bf16": "jax bf16", "upstream": "upstream"}
    lines = [f"# Speed, {platform_name} ({report['machine']['cpu_model']}, {report['machine']['cpu_cores']} cores)",
             "", f"`{report['command']}` on {report['date_utc']}; median seconds over the rounds "
             f"(frameworks alternated, warm-up excluded); ratio = torch / scdc_jax; float32 matmuls: {args.matmul}."
             + (" 'upstream reference': ttgump/scDeepCluster_pytorch's own pretrain_autoencoder loop, one epoch a "
                "round." if upstream else ""), "",
             "| measurement | " + " | ".join(label[f] for f in fws) + " | "
             + " | ".join(f"{short[a]} / {short[b]}" for a, b in ratios) + " | rounds |",
             "|---" * (len(fws) + len(ratios) + 2) + "|"]
    for key, s in summary.items():
        med = s["median_s"]
        cells = [f"{med[f]:.3f}" if f in med else "–" for f in fws]
        rat = [f"{med[a] / med[b]:.1f}x" if a in med and b in med else "–" for a, b in ratios]
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
    ap.add_argument("--scdc-bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the scDeepCluster epochs with bfloat16 matmuls (--precision bf16)")
    ap.add_argument("--upstream", metavar="DIR", help="also time the pretraining loop of the upstream reference: "
                    "a checkout of ttgump/scDeepCluster_pytorch (scDeepCluster.py, layers.py) in DIR")
    ap.add_argument("--gsrcl-bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the GsRCL step with bfloat16 matmuls (--precision bf16)")
    ap.add_argument("--matmul", choices=["float32", "tf32"], default="float32",
                    help="float32 matmul precision of both frameworks (GPUs only; default full float32)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.gsrcl_rounds = min(args.rounds, 2), min(args.gsrcl_rounds, 2)

    upstream = load_upstream(args.upstream) if args.upstream else None
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
    results = {"scdeepcluster": bench_scdeepcluster(args, args.device, upstream)}
    if not args.skip_gsrcl:
        results["gsrcl"] = bench_gsrcl(args, args.device)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"speed_{platform_name}{'' if args.matmul == 'float32' else '_' + args.matmul}")
    write_report(args, platform_name, results, stem + ".json", stem + ".md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
