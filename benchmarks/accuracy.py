"""Accuracy of scDeepCluster on the real datasets over several seeds: scdc_jax and the PyTorch baseline.

    python benchmarks/accuracy.py --seeds 0 1 2 3 4 --datasets bladder worm pbmc
    python benchmarks/accuracy.py --impl scdc_jax torch_f32 --mode given estimated --seeds 0 1 2 3 4 --jobs 6 --device cuda
    python benchmarks/accuracy.py --precision f32 bf16 --seeds 0 1 2 3 4 --datasets bladder worm pbmc --tag _bf16
    python benchmarks/accuracy.py --ensemble 5 --seeds 0 5 10 15 20 --mode given estimated --k-estimate stability

``--datasets``: the scDeepCluster paper's bladder, worm and PBMC files (default), and ``pbmc68k``,
scanpy's bundled 700 PBMCs with their 10 bulk populations as labels (no setting was chosen on it).
Every run uses the published defaults (300 pretraining epochs, batch 256, sigma 2.5, gamma 1,
tol 0.001, Adadelta clustering); ``given`` uses the true number of types (k-means, 20 restarts),
``estimated`` Louvain at resolution 0.8 on the 20-NN graph of the pretrained latent space.
``torch_f32|torch_f64`` is ``benchmarks/baselines/torch_scdeepcluster.py`` on scdc_jax's
preprocessing (and, for ``estimated``, scdc_jax's Louvain).  Each (implementation, dataset, seed,
mode) runs in its own process, ``--jobs`` at a time; ``--precision f32 bf16`` runs scdc_jax in
both precisions (the bf16 runs named ``scdc_jax_bf16``).  Writes, per implementation and mode,
``benchmarks/results/accuracy_<impl>_<mode><tag>.json`` (per-seed ARI/NMI/ACC/k, times, machine,
versions, command) and ``.md``, and ``accuracy_compare<tag>.md`` (mean and sd side by side).

``--ensemble N`` runs scdc_jax as seed ensembles (``scdc_jax_ens<N>``): each seed ``s`` trains the
members ``s .. s+N-1`` as one program (give seeds N apart so that no member repeats); a row's
ARI/NMI/ACC are its consensus's, and it carries every member's scores and label-free criteria.
``accuracy_ensemble<tag>.md`` then compares the consensus with the single models (the members,
each trained as the single run of its seed with ``--ensemble-init member``), the best member by each criterion, how each criterion ranks the
members against their ARI (Spearman), and in ``estimated`` mode the number of clusters found.
With ``--save-members DIR`` each ensemble's members are kept, for ``benchmarks/consensus.py`` to
compare the consensus methods on them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

DATASETS = {  # name: (file, true number of types, --select-genes)
    "bladder": ("mouse_bladder_cell_select_2100.h5", 16, 2000),
    "worm": ("worm_neuron_cell_select_2100.h5", 10, 2000),
    "pbmc": ("10X_PBMC_select_2100_top2000.h5", 8, 0),
    "pbmc68k": ("pbmc68k_reduced", 10, 0),  # scanpy's bundled PBMCs, 10 bulk populations (held out: no setting chosen)
}
BUNDLED = "pbmc68k_reduced"  # the one data set read from the installed packages, not from the shared folder
METRICS = ("ari", "nmi", "acc", "k")
SCDC_JAX = {"scdc_jax": "f32", "scdc_jax_bf16": "bf16"}  # implementation name: --precision


def read_dataset(fname: str, data_dir: str = DATA):
    """The counts of a benchmark data set: a shared file in ``data_dir``, or scanpy's bundled PBMCs
    (:func:`scdc_jax.io.pbmc68k_counts`) for :data:`BUNDLED`."""
    from scdc_jax.io import pbmc68k_counts, read_counts

    return pbmc68k_counts() if fname == BUNDLED else read_counts(os.path.join(data_dir, fname))


def _ensemble_row(res) -> dict:
    from scdc_jax.cluster.ensemble import best_member

    e = res.ensemble
    members = [{k: c[k] for k in ("seed", "ari", "nmi", "acc", "agreement", "silhouette", "zinb", "cluster_epochs")}
               for c in e["criteria"]]
    return {"members": members, "agreement": e["agreement"], "k_estimate": e["k_estimate"],
            "consensus_method": e["consensus_method"], "ensemble_init": e["init"],
            "best_by": {c: members[best_member(e["criteria"], c)]["ari"] for c in ("agreement", "silhouette", "zinb")}}


def save_members(res, data, path: str) -> None:
    """An ensemble run's members (labels, soft assignments), the consensus and the true
    labels of the kept cells, as one .npz: what :mod:`benchmarks.consensus` compares consensus
    methods on without training again."""
    e = res.ensemble
    np.savez_compressed(path, truth=np.asarray(data.labels)[res.cells], member_labels=e["member_labels"],
                        member_q=e["member_q"], consensus=e["consensus"],
                        seeds=np.asarray(e["seeds"]), k=e["k"],
                        criteria=json.dumps([{k: c[k] for k in ("agreement", "silhouette", "zinb")}
                                             for c in e["criteria"]]))


def one_run(impl: str, dataset: str, seed: int, mode: str, data_dir: str, device: str, overrides: dict,
            ensemble_overrides: dict | None = None, members_dir: str | None = None) -> dict:
    """One fit of one implementation; returns its scores and times."""
    from scdc_jax.cluster import ClusterConfig, run
    from scdc_jax.metrics import clustering_scores
    from scdc_jax.preprocess import prepare

    fname, k, sel = DATASETS[dataset]
    data = read_dataset(fname, data_dir)
    cfg = ClusterConfig(n_clusters=k if mode == "given" else 0, select_genes=sel, seed=seed, **overrides)
    t0 = time.perf_counter()
    if impl in SCDC_JAX:
        import jax

        res = run(data, dataclasses.replace(cfg, precision=SCDC_JAX[impl]), progress=False)
        return {**res.scores, "k": int(res.centers.shape[0]), "wall_s": time.perf_counter() - t0,
                "pretrain_s": res.timings["pretrain_s"], "cluster_epochs": res.timings["cluster_epochs"],
                "device": jax.devices()[0].device_kind}
    if impl.startswith("scdc_jax_ens"):
        import jax

        cfg = dataclasses.replace(cfg, ensemble=int(impl[len("scdc_jax_ens"):]), **(ensemble_overrides or {}))
        res = run(data, cfg, progress=False)
        if members_dir:
            save_members(res, data, os.path.join(members_dir, f"{dataset}_{mode}_seed{seed}.npz"))
        return {**res.scores, "k": int(res.centers.shape[0]), "wall_s": time.perf_counter() - t0,
                "pretrain_s": res.timings["pretrain_s"], "cluster_s": res.timings["cluster_s"],
                "device": jax.devices()[0].device_kind, **_ensemble_row(res)}
    import torch

    from benchmarks.baselines.torch_scdeepcluster import fit

    prep = prepare(data, select_genes_n=cfg.select_genes)
    pred, _ = fit(prep.x, prep.raw, prep.size_factors, n_clusters=cfg.n_clusters, pretrain_epochs=cfg.pretrain_epochs,
                  maxiter=cfg.maxiter, tol=cfg.tol, batch_size=cfg.batch_size, sigma=cfg.sigma, gamma=cfg.gamma,
                  dtype=torch.float32 if impl == "torch_f32" else torch.float64, device=device, seed=seed,
                  knn=cfg.knn, resolution=cfg.resolution, verbose=False)
    return {**clustering_scores(prep.data.labels, pred), "k": int(len(np.unique(pred))),
            "wall_s": time.perf_counter() - t0,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for m in (*METRICS, "wall_s"):
        v = [r[m] for r in rows]
        out[m] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
    return out


def write_results(rows, args, out_dir):
    from scdc_jax.cluster import ClusterConfig
    from scdc_jax.outputs import provenance

    cmd = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    prov = provenance(None, ClusterConfig().to_dict(), 1, cmd)
    groups = {}
    for r in rows:
        groups.setdefault((r["impl"], r["mode"]), []).append(r)
    summary = {}
    for (impl, mode), rs in groups.items():
        per = {d: summarise([r for r in rs if r["dataset"] == d]) for d in args.datasets
               if any(r["dataset"] == d for r in rs)}
        summary[(impl, mode)] = per
        stem = os.path.join(out_dir, f"accuracy_{impl}_{mode}{args.tag}")
        with open(stem + ".json", "w") as fh:
            json.dump({**prov, "impl": impl, "mode": mode, "jobs": args.jobs, "matmul_precision": args.matmul,
                       "rows": rs, "summary": per}, fh, indent=2)
        lines = [f"# scDeepCluster accuracy ({impl}, clusters {mode}, seeds {args.seeds})", "",
                 f"`{cmd}` on {prov['machine']}, {rs[0]['device']}, {prov['date']}; {args.jobs} run(s) at a time.",
                 "", "| dataset | k | ARI | NMI | ACC | total s |", "|---|---|---|---|---|---|"]
        for d, s in per.items():
            lines.append(f"| {d} | {s['k']['mean']:.1f} ± {s['k']['sd']:.1f} | {s['ari']['mean']:.3f} ± {s['ari']['sd']:.3f} "
                         f"| {s['nmi']['mean']:.3f} ± {s['nmi']['sd']:.3f} | {s['acc']['mean']:.3f} ± {s['acc']['sd']:.3f} "
                         f"| {s['wall_s']['mean']:.0f} |")
        lines += ["", "Per seed:", "", "| dataset | seed | k | ARI | NMI | ACC | total s |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {r['seed']} | {r['k']} | {r['ari']:.3f} | {r['nmi']:.3f} | {r['acc']:.3f} | "
                  f"{r['wall_s']:.0f} |" for r in sorted(rs, key=lambda r: (r["dataset"], r["seed"]))]
        with open(stem + ".md", "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print("\n".join(lines))
    impls = sorted({i for i, _ in summary})
    if len(impls) > 1:
        lines = [f"# {', '.join(impls)} side by side (mean ± sd over seeds {args.seeds})", "",
                 f"`{cmd}` ({prov['machine']}, {prov['date']}). 'within spread': |difference of means| <= "
                 "the larger of the two standard deviations.", "",
                 "| dataset | clusters | metric | " + " | ".join(impls) + " | within spread |",
                 "|---|---|---|" + "---|" * len(impls) + "---|"]
        for mode in args.mode:
            for d in args.datasets:
                for m in ("ari", "nmi", "acc", "k"):
                    cells = [summary.get((i, mode), {}).get(d) for i in impls]
                    if any(c is None for c in cells):
                        continue
                    means = [c[m]["mean"] for c in cells]
                    spread = max(c[m]["sd"] for c in cells)
                    ok = max(means) - min(means) <= spread
                    lines.append(f"| {d} | {mode} | {m} | " + " | ".join(f"{c[m]['mean']:.3f} ± {c[m]['sd']:.3f}"
                                 for c in cells) + f" | {'yes' if ok else 'no'} |")
        with open(os.path.join(out_dir, f"accuracy_compare{args.tag}.md"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print("\n".join(lines))


def _ms(v) -> str:
    v = [x for x in v if x is not None and np.isfinite(x)]
    if not v:
        return "–"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"


def write_ensemble_summary(rows, args, out_dir):
    """``accuracy_ensemble<tag>.{md,json}``: consensus vs single members, criteria vs ARI, k."""
    from scipy.stats import spearmanr

    cmd = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    lines = [f"# Seed ensembles of scDeepCluster ({rows[0]['impl']}): consensus against single models", "",
             f"`{cmd}` ({rows[0]['device']}, {time.strftime('%Y-%m-%d')}).  Single model: the ensembles' members, each "
             "trained as the single run of its seed (up to the rounding of batched products) when the ensembles started "
             "each member from its own k-means "
             "(`--ensemble-init member`; from a common start (joint or consensus) the members are not single runs, so "
             "no distance is given: `benchmarks/ensemble_init.py` compares the starts on the same members).  Best by X: the member an ensemble would keep by criterion X "
             "(agreement: mean ARI with the other members; silhouette: of its labels in its latent; zinb: its "
             "final ZINB NLL, lower kept).  Spearman: rank correlation of the criterion with the members' ARI, "
             "within each ensemble, averaged.  Time: an ensemble's wall time and its time per member.  Consensus "
             "method: the one the runs used (`benchmarks/consensus.py` compares all of them on saved members).", "",
             "| dataset | clusters | ensembles | single model ARI | consensus ARI | consensus - single (in single sd) "
             "| consensus method | best by agreement | best by silhouette | best by zinb | member agreement | k | s / ensemble "
             "| s / member |", "|---" * 14 + "|"]
    corr_lines = ["", "| dataset | clusters | Spearman agreement-ARI | silhouette-ARI | -zinb-ARI |", "|---|---|---|---|---|"]
    summary = {}
    for mode in args.mode:
        for d in args.datasets:
            rs = [r for r in rows if r["dataset"] == d and r["mode"] == mode]
            if not rs:
                continue
            single = [m["ari"] for r in rs for m in r["members"]]
            cons = [r["ari"] for r in rs]
            sd = np.std(single, ddof=1) if len(single) > 1 else float("nan")
            starts = sorted({r.get("ensemble_init", "member") for r in rs})
            # members that started from a common partition are not single runs: no distance from single runs then
            gap = (np.mean(cons) - np.mean(single)) / sd if sd > 0 and starts == ["member"] else float("nan")
            corr = {}
            for c, sign in (("agreement", 1), ("silhouette", 1), ("zinb", -1)):
                rho = [spearmanr([sign * m[c] for m in r["members"]], [m["ari"] for m in r["members"]])[0]
                       for r in rs]
                corr[c] = float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")
            ks = [r["k"] for r in rs]
            n_mem = len(rs[0]["members"])
            summary[f"{d}/{mode}"] = {"single_ari": single, "consensus_ari": cons, "gap_in_single_sd": gap,
                                      "spearman": corr, "k": ks, "k_estimates": [r.get("k_estimate") for r in rs],
                                      "best_by": [r["best_by"] for r in rs]}
            methods = ", ".join(sorted({r.get("consensus_method", "not recorded") for r in rs}))
            methods += " (" + ", ".join(starts) + " start)"
            summary[f"{d}/{mode}"]["consensus_method"] = [r.get("consensus_method") for r in rs]
            lines.append(f"| {d} | {mode} | {len(rs)} x {n_mem} | {_ms(single)} | {_ms(cons)} | {gap:+.2f} | {methods} | "
                         + " | ".join(_ms([r['best_by'][c] for r in rs]) for c in ("agreement", "silhouette", "zinb"))
                         + f" | {_ms([r['agreement'] for r in rs])} | {_ms(ks)} | {np.mean([r['wall_s'] for r in rs]):.0f} "
                         f"| {np.mean([r['wall_s'] for r in rs]) / n_mem:.0f} |")
            corr_lines.append(f"| {d} | {mode} | " + " | ".join(f"{corr[c]:+.2f}" for c in ("agreement", "silhouette", "zinb"))
                              + " |")
    ks_lines = ["", "Numbers of clusters (estimated mode): the members' Louvain counts at resolution 0.8 and the "
                "ensemble's estimate.", "", "| dataset | ensemble seed | Louvain k of the members | estimate | k | consensus ARI |",
                "|---|---|---|---|---|---|"]
    ks_lines += [f"| {r['dataset']} | {r['seed']} | {r['k_estimate']['louvain_k']} | {r['k_estimate']['method']} | "
                 f"{r['k']} | {r['ari']:.3f} |" for r in rows if r.get("k_estimate")]
    text = "\n".join(lines + corr_lines + (ks_lines if len(ks_lines) > 5 else [])) + "\n"
    with open(os.path.join(out_dir, f"accuracy_ensemble{args.tag}.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(out_dir, f"accuracy_ensemble{args.tag}.json"), "w") as fh:
        json.dump({"command": cmd, "summary": summary, "rows": rows}, fh, indent=2)
    print(text)


def load_rows(path: str, runs: list) -> dict:
    """Finished rows (the JSON lines this script prints) of an earlier run, keyed like ``runs``."""
    if not os.path.isfile(path):
        sys.exit(f"--resume: {path} is not a file")
    wanted, found = set(runs), {}
    with open(path) as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            key = (row.get("impl"), row.get("dataset"), row.get("seed"), row.get("mode"))
            if key in wanted and all(m in row for m in METRICS):
                found[key] = row
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["bladder", "worm", "pbmc"], choices=list(DATASETS),
                    help="the scDeepCluster paper's three files (default) and pbmc68k, scanpy's bundled PBMCs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--mode", nargs="+", choices=["given", "estimated"], default=["given"],
                    help="number of clusters: the true one, or estimated by Louvain")
    ap.add_argument("--impl", nargs="+", choices=["scdc_jax", "torch_f32", "torch_f64"], default=["scdc_jax"])
    ap.add_argument("--precision", nargs="+", choices=list(SCDC_JAX.values()), default=["f32"],
                    help="scdc_jax's precision(s); bf16 runs are named scdc_jax_bf16 (for GPUs; slower on CPUs)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="PyTorch's device")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, each its own process")
    ap.add_argument("--data-dir", default=DATA)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="", help="suffix of the results files, e.g. _gpu")
    ap.add_argument("--matmul", choices=["float32", "tf32"], default="float32",
                    help="float32 matmul precision of both implementations (GPUs only)")
    ap.add_argument("--pretrain-epochs", type=int, help="override (smoke tests only: not the published setting)")
    ap.add_argument("--maxiter", type=int, help="override (smoke tests only: not the published setting)")
    ap.add_argument("--resume", metavar="LOG",
                    help="a saved stdout of an earlier, interrupted run: its finished rows are kept, only the rest run")
    ap.add_argument("--ensemble", type=int, default=0, metavar="N",
                    help="run scdc_jax as seed ensembles of N members (scdc_jax_ens<N>) instead of single models")
    ap.add_argument("--k-estimate", choices=["louvain", "stability"], default="stability",
                    help="the ensembles' estimate of the number of clusters in 'estimated' mode (default %(default)s)")
    ap.add_argument("--ensemble-init", choices=["joint", "consensus", "member"], default="joint",
                    help="where the ensembles' DEC stage starts (default %(default)s); with member, every member is "
                         "the single run of its seed and the summary compares the consensus with them")
    ap.add_argument("--save-members", metavar="DIR",
                    help="with --ensemble: save each ensemble's members (labels, soft assignments) to "
                         "DIR/<dataset>_<mode>_seed<seed>.npz, for benchmarks/consensus.py")
    ap.add_argument("--worker", nargs=4, metavar=("IMPL", "DATASET", "SEED", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, dataset, seed, mode = args.worker
        from benchmarks.common import set_matmul_precision

        set_matmul_precision(args.matmul)
        overrides = {k: v for k, v in (("pretrain_epochs", args.pretrain_epochs), ("maxiter", args.maxiter)) if v}
        row = one_run(impl, dataset, int(seed), mode, args.data_dir, args.device, overrides,
                      {"k_estimate": args.k_estimate, "ensemble_init": args.ensemble_init}, args.save_members)
        print("RESULT " + json.dumps(row), flush=True)
        return
    if not os.path.isdir(args.data_dir):
        sys.exit(f"skipped: {args.data_dir} is absent (real data lives only on developer machines and CI)")

    if args.save_members:
        os.makedirs(args.save_members, exist_ok=True)
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # several runs share one GPU
    if args.jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    impls = [n for i in args.impl for n in ([n for n, p in SCDC_JAX.items() if p in args.precision]
                                            if i == "scdc_jax" else [i])]
    if args.ensemble > 1:
        impls = [f"scdc_jax_ens{args.ensemble}" if i == "scdc_jax" else i for i in impls]
    runs = [(i, d, s, m) for m in args.mode for d in args.datasets for i in impls for s in args.seeds]
    done = load_rows(args.resume, runs) if args.resume else {}
    if done:
        print(f"resuming: {len(done)} of {len(runs)} runs already finished in {args.resume}", flush=True)

    def launch(spec):
        if spec in done:
            print(json.dumps(done[spec]), flush=True)
            return done[spec]
        impl, d, s, m = spec
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, d, str(s), m,
               "--data-dir", args.data_dir, "--device", args.device, "--matmul", args.matmul,
               "--k-estimate", args.k_estimate, "--ensemble-init", args.ensemble_init]
        if args.save_members:
            cmd += ["--save-members", os.path.abspath(args.save_members)]
        cmd += [a for k, v in (("--pretrain-epochs", args.pretrain_epochs), ("--maxiter", args.maxiter)) if v
                for a in (k, str(v))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not found:
            raise RuntimeError(f"{spec} failed:\n{proc.stderr[-3000:]}")
        row = {"impl": impl, "dataset": d, "seed": s, "mode": m, **json.loads(found[-1][7:])}
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(launch, runs))
    os.makedirs(args.out, exist_ok=True)
    write_results(rows, args, args.out)
    if any("members" in r for r in rows):
        write_ensemble_summary([r for r in rows if "members" in r], args, args.out)


if __name__ == "__main__":
    main()
