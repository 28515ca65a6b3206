"""Seconds per scDeepCluster pretraining epoch and peak memory as the number of cells grows.

Synthetic zero-inflated negative-binomial counts with cluster structure (10 groups, 2000 genes)
at each size, generated once into ``--cache`` (dense .npy and CSR .npz); every (implementation, size, devices) point runs in its own process so that its
peak host memory is its own.  A point runs the real path: ``prepare`` (host), ``device_data``
(the counts on the device: dense, or sparse rows for CSR input) and jit-compiled epochs; the
first epoch (compilation) is reported apart from the timed ones.

    python benchmarks/scaling.py                                   # CPU defaults: 1k-200k cells
    python benchmarks/scaling.py --cells 1000 10000 100000 1000000 --impl jax torch32 --device cuda
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/scaling.py --cells 10000 --devices 1 2 4
    python benchmarks/scaling.py --stream --cells 500000 1000000 2000000 --epochs 1 --tag _stream   # from disk

``--stream`` writes the counts once as a CSR ``.h5ad`` file and a ``.zarr`` store (block by block,
never whole in memory) and trains on them read a block at a time: host memory should stay flat as
the cells grow.

Writes ``benchmarks/results/scaling_<platform>.json`` and ``.md``.  ``--devices`` above 1 shows
correctness (the same losses) and overhead on forced CPU devices, speed on real accelerators.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

N_GENES, N_GROUPS = 2000, 10


def draw_block(seed: int, start: int, stop: int):
    """Counts of cells ``start:stop``: gamma-Poisson (theta 2) with group programmes on 10% of the
    genes (4x up), log-normal library sizes and 30% extra zeros."""
    import numpy as np

    rng = np.random.default_rng([seed, 0])
    log_base = rng.normal(-1.0, 1.0, N_GENES)
    prog = np.log(4.0) * (rng.random((N_GROUPS, N_GENES)) < 0.1)
    rng = np.random.default_rng([seed, 1, start])
    groups = np.arange(start, stop) % N_GROUPS
    mu = np.exp(log_base + prog[groups] + 0.3 * rng.normal(size=(stop - start, 1)))
    counts = rng.poisson(rng.gamma(2.0, 0.5, size=mu.shape) * mu).astype(np.int32)
    counts[rng.random(mu.shape) < 0.3] = 0
    return counts


def synthetic_zinb(n_cells: int, cache: str, seed: int = 0, chunk: int = 20_000) -> dict:
    """Write ``n_cells`` x 2000 synthetic counts to ``cache`` once, as dense .npy and CSR .npz,
    drawn in parallel blocks of ``chunk`` cells; returns the two paths."""
    import numpy as np
    import scipy.sparse as sp
    from concurrent.futures import ThreadPoolExecutor

    os.makedirs(cache, exist_ok=True)
    paths = {"dense": os.path.join(cache, f"zinb_{n_cells}_{seed}.npy"),
             "csr": os.path.join(cache, f"zinb_{n_cells}_{seed}_csr.npz")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    dense = np.lib.format.open_memmap(paths["dense"] + ".tmp.npy", mode="w+", dtype=np.int32,
                                      shape=(n_cells, N_GENES))
    blocks = [(s, min(s + chunk, n_cells)) for s in range(0, n_cells, chunk)]
    csr = []
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for (a, b), block in zip(blocks, pool.map(lambda ab: draw_block(seed, *ab), blocks)):
            dense[a:b] = block
            csr.append(sp.csr_matrix(block))
    dense.flush()
    del dense
    os.replace(paths["dense"] + ".tmp.npy", paths["dense"])
    sp.save_npz(paths["csr"] + ".tmp.npz", sp.vstack(csr, format="csr"), compressed=False)
    os.replace(paths["csr"] + ".tmp.npz", paths["csr"])
    return paths


def write_backed(n_cells: int, cache: str, fmt: str, seed: int = 0, chunk: int = 20_000) -> str:
    """Write ``n_cells`` x 2000 synthetic counts once as a CSR AnnData ``.h5ad`` file or ``.zarr``
    store, ``chunk`` cells at a time (the whole matrix is never in memory); returns its path."""
    import shutil

    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import write_elem

    path = os.path.join(cache, f"zinb_{n_cells}_{seed}.{fmt}")
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    tmp = path + ".partial"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    elif os.path.exists(tmp):
        os.remove(tmp)
    if fmt == "h5ad":
        import h5py

        root = h5py.File(tmp, "w")
        new = lambda grp, name, dtype: grp.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                                         chunks=(1 << 20,))
    else:
        import zarr

        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        new = lambda grp, name, dtype: grp.create_array(name, shape=(0,), dtype=dtype, chunks=(1 << 20,))
    write_elem(root, "obs", pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
    write_elem(root, "var", pd.DataFrame(index=[f"gene{j}" for j in range(N_GENES)]))
    X = root.create_group("X")
    X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_cells, N_GENES]})
    data, indices = new(X, "data", np.float32), new(X, "indices", np.int32)
    indptr = [np.zeros(1, np.int64)]
    nnz = 0
    for a in range(0, n_cells, chunk):
        block = sp.csr_matrix(draw_block(seed, a, min(a + chunk, n_cells)))
        m = block.nnz
        data.resize((nnz + m,))
        indices.resize((nnz + m,))
        data[nnz:nnz + m] = block.data.astype(np.float32)
        indices[nnz:nnz + m] = block.indices
        indptr.append(block.indptr[1:].astype(np.int64) + nnz)
        nnz += m
    X.create_dataset("indptr", data=np.concatenate(indptr)) if fmt == "h5ad" else \
        X.create_array("indptr", data=np.concatenate(indptr))
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    if fmt == "h5ad":
        root.close()
    os.replace(tmp, path)
    return path


def load_counts(path: str):
    import numpy as np
    import scipy.sparse as sp

    return sp.load_npz(path) if path.endswith(".npz") else np.load(path)


def _peak_host_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _device_peak_gib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 30


def worker(args) -> dict:
    """One point; returns its measurements."""
    import numpy as np

    from scdc_jax.cluster.config import ClusterConfig
    from scdc_jax.io import CountData
    from scdc_jax.preprocess import prepare

    if args.input in ("h5ad", "zarr"):
        return _stream_worker(args)
    t0 = time.perf_counter()
    counts = load_counts(args.data)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep = prepare(CountData(X=counts))
    prep_s = time.perf_counter() - t0
    del counts
    n, g = prep.shape
    cfg = ClusterConfig()
    density = float((prep.raw.nnz if hasattr(prep.raw, "nnz") else np.count_nonzero(prep.raw)) / (n * g))
    out = {"impl": args.impl, "cells": n, "genes": g, "devices": args.devices[0], "input": args.input,
           "density": density, "load_s": load_s, "prepare_s": prep_s}
    if args.impl == "jax":
        out.update(_jax_epochs(prep, cfg, args))
    else:
        out.update(_torch_epochs(prep, cfg, args))
    out["peak_host_gib"] = _peak_host_gib()
    return out


def _jax_epochs(prep, cfg, args) -> dict:
    import jax

    from functools import partial

    from scdc_jax.cluster.train import build_model, device_data, make_epoch, pretrain_loss, stage_key
    from scdc_jax.optim import amsgrad_torch
    from scdc_jax.parallel import data_sharded, make_mesh, replicated

    n_dev = args.devices[0]
    mesh = make_mesh(n_dev) if n_dev > 1 else None
    rep = replicated(mesh) if mesh is not None else None
    t0 = time.perf_counter()
    data = device_data(prep, sharding=rep)
    jax.block_until_ready(data)
    put_s = time.perf_counter() - t0
    graphdef, state = build_model(cfg, prep.shape[1], seed=0)
    if rep is not None:
        state = jax.device_put(state, rep)
    tx = amsgrad_torch(cfg.lr_pretrain)
    opt = tx.init(state)
    epoch = make_epoch(partial(pretrain_loss, graphdef=graphdef, sigma=cfg.sigma), tx, n=prep.shape[0],
                       batch_size=cfg.batch_size, shuffle=True,
                       batch_sharding=None if mesh is None else data_sharded(mesh))
    times, losses = [], []
    for e in range(args.epochs + 1):
        t0 = time.perf_counter()
        state, opt, means = epoch(state, opt, data, stage_key(0, 1, e))
        losses.append(float(means["loss"]))  # blocks until the epoch is done
        times.append(time.perf_counter() - t0)
    return {"storage": "sparse rows (ELL)" if data.cols is not None else "dense",
            "device_data_gib": sum(a.nbytes for a in jax.tree.leaves(data)) / 2 ** 30, "put_s": put_s,
            "first_epoch_s": times[0], "epoch_s": sorted(times[1:])[len(times[1:]) // 2], "epoch_s_all": times[1:],
            "losses": losses, "peak_device_gib": _device_peak_gib(), "platform": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind}


def _stream_worker(args) -> dict:
    """A streamed point: the file read a block at a time (``--block-cells``) in every pass."""
    import jax

    from scdc_jax.cluster.config import ClusterConfig
    from scdc_jax.cluster.source import Streamed
    from scdc_jax.cluster.train import build_model, pretrain_loss, stage_key
    from scdc_jax.optim import amsgrad_torch
    from scdc_jax.store import CellStore, stream_prepare
    from functools import partial

    cfg = ClusterConfig()
    store = CellStore(args.data)
    t0 = time.perf_counter()
    prep = stream_prepare(store, block=args.block_cells)
    prep_s = time.perf_counter() - t0
    n, g = prep.shape
    source = Streamed(store, prep, batch_size=cfg.batch_size, block=args.block_cells)
    graphdef, state = build_model(cfg, g, seed=0)
    tx = amsgrad_torch(cfg.lr_pretrain)
    opt = tx.init(state)
    epoch = source.epoch(partial(pretrain_loss, graphdef=graphdef, sigma=cfg.sigma), tx, shuffle=True)
    times, losses = [], []
    for e in range(args.epochs + 1):
        t0 = time.perf_counter()
        state, opt, means = epoch(state, opt, stage_key(0, 1, e))
        losses.append(float(means["loss"]))
        times.append(time.perf_counter() - t0)
    return {"impl": "jax", "cells": n, "genes": g, "devices": 1, "input": args.input,
            "density": store.nbytes_in_memory() / 8 / (store.n_cells * store.n_genes), "load_s": 0.0,
            "prepare_s": prep_s, "storage": f"streamed, {len(source.spans)} blocks of {args.block_cells}"
            + (" (sparse rows)" if source.sparse else " (dense)"),
            "file_gib": _size_gib(args.data), "first_epoch_s": times[0],
            "epoch_s": sorted(times[1:])[len(times[1:]) // 2], "epoch_s_all": times[1:], "losses": losses,
            "peak_device_gib": _device_peak_gib(), "platform": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "peak_host_gib": _peak_host_gib()}


def _size_gib(path: str) -> float:
    if os.path.isfile(path):
        return os.path.getsize(path) / 2 ** 30
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2 ** 30


def _torch_epochs(prep, cfg, args) -> dict:
    import numpy as np
    import torch

    from benchmarks.baselines import torch_scdeepcluster as tsc

    dev = args.device
    dtype = torch.float32 if args.impl == "torch32" else torch.float64
    t0 = time.perf_counter()
    to = dict(dtype=dtype, device=dev)
    x = torch.as_tensor(prep.x, **to)  # the baseline holds the dense encoder input and counts
    raw = torch.as_tensor(tsc.dense(prep.raw), **to)
    sf = torch.as_tensor(np.asarray(prep.size_factors), **to)
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    put_s = time.perf_counter() - t0
    model = tsc.build_model(prep.shape[1], dtype=dtype, device=dev)
    opt = tsc.pretrain_optimizer(model, cfg.lr_pretrain)
    gen = torch.Generator(device=dev).manual_seed(0)
    times, losses = [], []
    for _ in range(args.epochs + 1):
        t0 = time.perf_counter()
        losses.append(tsc.pretrain_epoch(model, opt, x, raw, sf, batch_size=cfg.batch_size, sigma=cfg.sigma,
                                         generator=gen))  # returns a float: synchronised
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev == "cuda" else None
    return {"storage": "dense", "put_s": put_s, "first_epoch_s": times[0],
            "epoch_s": sorted(times[1:])[len(times[1:]) // 2], "epoch_s_all": times[1:], "losses": losses,
            "peak_device_gib": peak, "platform": dev, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def _fmt(v, spec=".2f"):
    return "–" if v is None else format(v, spec)


def write_report(rows, args, path_stem):
    import jax

    import scdc_jax
    from scdc_jax.outputs import provenance

    plat = next((r["platform"] for r in rows if r.get("impl") == "jax" and "platform" in r), jax.default_backend())
    report = {**provenance(0, {"genes": N_GENES, "groups": N_GROUPS, "epochs_timed": args.epochs,
                               "matmul_precision": args.matmul}, max(args.devices),
                           "python benchmarks/scaling.py " + " ".join(sys.argv[1:])),
              "scdc_jax": getattr(scdc_jax, "__version__", None), "rows": rows}
    with open(path_stem + ".json", "w") as fh:
        json.dump(report, fh, indent=2)
    lines = [f"# Scaling of a scDeepCluster pretraining epoch ({plat})", "",
             f"`{report['command']}` on {report['date']} ({report['machine']}, {report['device_kind']}).",
             f"Synthetic ZINB counts, {N_GENES} genes, batch 256, default network; epoch = median of "
             f"{args.epochs} timed epochs after the first (compiling) one; peak host memory is the "
             "process's maximum resident set (loading the counts included).", "",
             "| impl | cells | devices | input | storage | density | s / epoch | first epoch s | prepare s "
             "| peak host GiB | peak device GiB | last loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['cells']} | {r['devices']} | {r['input']} | failed: {r['error']} "
                         "| | | | | | | |")
            continue
        lines.append(f"| {r['impl']} | {r['cells']} | {r['devices']} | {r['input']} | {r['storage']} | "
                     f"{r['density']:.3f} | {r['epoch_s']:.3f} | {r['first_epoch_s']:.2f} | {r['prepare_s']:.1f} | "
                     f"{r['peak_host_gib']:.2f} | {_fmt(r['peak_device_gib'])} | {r['losses'][-1]:.5f} |")
    with open(path_stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[1000, 10000, 100000, 200000])
    ap.add_argument("--impl", nargs="+", default=["jax", "torch32"], choices=["jax", "torch32", "torch64"])
    ap.add_argument("--devices", type=int, nargs="+", default=[1], help="device counts for scdc_jax")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="PyTorch's device")
    ap.add_argument("--input", nargs="+", default=["dense"], choices=["dense", "csr", "h5ad", "zarr"],
                    help="host input: dense int32 or CSR (scdc_jax then keeps sparse rows on the device), or "
                    "streamed from a CSR .h5ad file or .zarr store (scdc_jax only)")
    ap.add_argument("--stream", action="store_true", help="shorthand for --input h5ad zarr --impl jax")
    ap.add_argument("--block-cells", type=int, default=65536, help="cells a streamed block")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per point (after the first)")
    ap.add_argument("--torch-max-cells", type=int, default=200_000,
                    help="largest size the PyTorch baseline is run at (dense float32 x and counts)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per point")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "scdc_scaling"),
                    help="folder for the generated counts (reused across runs)")
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="", help="suffix of the results files")
    ap.add_argument("--matmul", choices=["float32", "tf32"], default="float32",
                    help="float32 matmul precision of both frameworks (GPUs only)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stream:
        args.input, args.impl = ["h5ad", "zarr"], ["jax"]
    if args.worker:
        args.cells, args.impl, args.input = args.cells[0], args.impl[0], args.input[0]
        if args.device == "cpu" and args.impl == "jax":
            import jax

            jax.config.update("jax_platforms", "cpu")
        from benchmarks.common import set_matmul_precision

        set_matmul_precision(args.matmul)
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    rows = []
    points = [(impl, n, d, inp) for n in args.cells for impl in args.impl for inp in args.input
              for d in (args.devices if impl == "jax" else [1])
              if (impl == "jax" or n <= args.torch_max_cells) and (impl == "jax" or inp == "dense")
              and not (inp in ("h5ad", "zarr") and d > 1)]
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # let PyTorch and peak statistics see the GPU
    data = {}
    for impl, n, d, inp in points:
        if inp in ("h5ad", "zarr"):
            if (n, inp) not in data:
                t0 = time.perf_counter()
                data[n, inp] = write_backed(n, args.cache, inp)
                print(f"== data: {n} cells as {inp} in {time.perf_counter() - t0:.0f} s", flush=True)
            path = data[n, inp]
        elif n not in data:
            t0 = time.perf_counter()
            data[n] = synthetic_zinb(n, args.cache)
            print(f"== data: {n} cells ready in {time.perf_counter() - t0:.0f} s ({args.cache})", flush=True)
        if inp not in ("h5ad", "zarr"):
            path = data[n][inp]
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--impl", impl, "--cells", str(n), "--data", path,
               "--block-cells", str(args.block_cells),
               "--devices", str(d), "--device", args.device, "--input", inp, "--epochs", str(args.epochs),
               "--matmul", args.matmul]
        print(f"== {impl} {n} cells, {d} device(s), {inp} input", flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if found:
                row = json.loads(found[-1][7:])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"error": f"exit {proc.returncode}: {tail[:200]}"}
        except subprocess.TimeoutExpired:
            row = {"error": f"over {args.timeout} s"}
        row = {"impl": impl, "cells": n, "devices": d, "input": inp, **row}
        print(json.dumps({k: v for k, v in row.items() if k not in ("losses", "epoch_s_all")}), flush=True)
        rows.append(row)
    import jax

    os.makedirs(args.out, exist_ok=True)
    plat = "gpu" if args.device == "cuda" else jax.default_backend()
    write_report(rows, args, os.path.join(args.out, f"scaling_{plat}{args.tag}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
