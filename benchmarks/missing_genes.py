"""New cells that lack some of a model's genes: what counting them as zero does to ``predict``.

    python benchmarks/missing_genes.py --datasets pbmc worm --seeds 0 1 2

A query from another source often lacks some of the genes a model was trained on (another
annotation release, another gene filter).  ``python -m scdc_jax.cluster predict
--fill-missing-genes`` (``predict(..., fill_missing_genes=True)``) counts them as zero.  This script
measures what that costs.  For each data set and seed, a model (published defaults, the true
number of types) is trained on a random 70% of the cells and assigns the other 30%.  Each of
several fractions of the model's genes (three random draws each) is then removed from those cells,
and the cells are assigned again with the missing genes counted as zero, through the product's own
path.  Reported (mean ± sd over seeds x draws): the agreement (ARI) of those labels with the
full-gene labels, and both labels' ARI against the cell types.

For comparison, one alternative not offered: ``mean``, where each missing gene enters the encoder
at its training mean (0 after the z-scoring) and the cell's total is estimated as the counted total
divided by the training share of counts in the present genes.  Computed here from the training
cells; a saved model does not keep those shares.  Writes
``benchmarks/results/missing_genes<tag>.{md,json}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.accuracy import DATA, DATASETS, read_dataset  # noqa: E402
from benchmarks.common import write_results  # noqa: E402

FRACTIONS = (0.02, 0.05, 0.1, 0.25, 0.4)  # predict refuses a query lacking half or more
DRAWS = 3
TRAIN_SHARE = 0.7


def load_model(model_dir: str) -> dict:
    """The saved model's network, parameters and training normalisation, read once per model."""
    import jax
    import jax.numpy as jnp

    from scdc_jax import checkpoint
    from scdc_jax.cluster import ClusterConfig
    from scdc_jax.cluster.inference import _model_dir
    from scdc_jax.cluster.train import abstract_model, make_assign

    where = _model_dir(model_dir)
    meta = checkpoint.read_meta(where)
    cfg, g, k = ClusterConfig(**meta["config"]), int(meta["n_genes"]), int(meta["n_clusters"])
    graphdef, ae = abstract_model(cfg, g, n_batches=0)
    template = {"params": {"ae": ae, "mu": jax.ShapeDtypeStruct((k, cfg.latent), jnp.float32)},
                "norm_mean": jax.ShapeDtypeStruct((g,), jnp.float32), "norm_std": jax.ShapeDtypeStruct((g,), jnp.float32)}
    state, _ = checkpoint.restore(where, template)
    norm = {"median_total": meta["median_total"], "mean": np.asarray(state["norm_mean"], np.float64),
            "std": np.asarray(state["norm_std"])}
    return {"assign": make_assign(graphdef, cfg.alpha), "params": state["params"], "norm": norm, "n_genes": g}


def mean_fill_labels(model: dict, query, missing: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Labels of ``query`` (on the genes of ``model``, a :func:`load_model`; the columns
    ``missing`` removed and here given back) with the ``mean`` fill of the module docstring; -1
    for cells without counts."""
    from scdc_jax.cluster.train import device_data
    from scdc_jax.preprocess import Prepared

    norm = model["norm"]
    X = np.asarray(query.X, np.float64).copy()
    X[:, missing] = 0
    counted = X.sum(1)
    cells = np.flatnonzero(counted > 0)
    totals = counted[cells] / (1.0 - share[missing].sum())
    raw = X[cells]
    raw[:, missing] = np.expm1(norm["mean"][missing])[None] * (totals / float(norm["median_total"]))[:, None]
    prep = Prepared(raw=raw.astype(np.float32), totals=totals, data=query.subset(cells=cells), cells=cells,
                    genes=np.arange(model["n_genes"]), norm=norm)
    labels = np.full(query.n_cells, -1, np.int64)
    labels[cells] = np.asarray(model["assign"](model["params"], device_data(prep))[3])
    return labels


def one_seed(dataset: str, seed: int, data_dir: str) -> list[dict]:
    from dataclasses import replace

    from sklearn.metrics import adjusted_rand_score as ari

    from scdc_jax import checkpoint
    from scdc_jax.cluster import ClusterConfig, predict, run
    from scdc_jax.cluster.inference import _model_dir

    fname, k, sel = DATASETS[dataset]
    data = read_dataset(fname, data_dir)
    if data.gene_names is None:
        data = replace(data, gene_names=np.array([f"gene{i}" for i in range(data.n_genes)]))
    order = np.random.default_rng(100 + seed).permutation(data.n_cells)
    n_train = int(TRAIN_SHARE * data.n_cells)
    train, query = data.subset(cells=order[:n_train]), data.subset(cells=order[n_train:])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run(train, ClusterConfig(n_clusters=k, select_genes=sel, seed=seed), save_dir=d, progress=False)
        full = predict(d, query)
        pos = {name: i for i, name in enumerate(map(str, data.gene_names))}
        model_cols = np.array([pos[name] for name in checkpoint.read_meta(_model_dir(d))["gene_names"]])
        on_model = query.subset(genes=model_cols)
        tr = np.asarray(train.subset(genes=model_cols).X, np.float64)
        share = tr.sum(0) / tr.sum()
        n_genes, model = len(model_cols), load_model(d)
        print(f"{dataset} seed {seed}: trained and assigned in {time.perf_counter() - t0:.0f} s", flush=True)
        for frac in FRACTIONS:
            for draw in range(DRAWS):
                rng = np.random.default_rng([seed, draw, int(round(frac * 1000))])
                missing = np.sort(rng.choice(n_genes, int(round(frac * n_genes)), replace=False))
                lacking = on_model.subset(genes=np.setdiff1d(np.arange(n_genes), missing))
                zero = predict(d, lacking, fill_missing_genes=True)
                assert zero["genes_missing"] == len(missing)
                mean = mean_fill_labels(model, on_model, missing, share)
                X = np.asarray(on_model.X, np.float64)
                ok = (full["labels"] >= 0) & (zero["labels"] >= 0) & (mean >= 0)
                rows.append({"dataset": dataset, "seed": seed, "fraction": frac, "draw": draw,
                             "count_share_missing": float(np.median(X[:, missing].sum(1) / np.maximum(X.sum(1), 1))),
                             "full_ari": ari(query.labels[ok], full["labels"][ok]),
                             "zero_agreement": ari(full["labels"][ok], zero["labels"][ok]),
                             "zero_ari": ari(query.labels[ok], zero["labels"][ok]),
                             "mean_agreement": ari(full["labels"][ok], mean[ok]),
                             "mean_ari": ari(query.labels[ok], mean[ok])})
    return rows


def ms(values) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["pbmc", "worm"], choices=[d for d in DATASETS if d != "pbmc68k"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder the result files are written to")
    ap.add_argument("--tag", default="", help="suffix of the result files' names")
    args = ap.parse_args()
    if not os.path.isdir(DATA):
        sys.exit(f"skipped: {DATA} is absent (real data lives only on developer machines and CI)")
    rows = [r for ds in args.datasets for s in args.seeds for r in one_seed(ds, s, DATA)]
    table = ["| dataset | genes missing | their share of a cell's counts (median) | agreement with all genes, zero "
             "(offered) | ARI, all genes | ARI, zero | agreement, mean (not offered) | ARI, mean |",
             "|---|---|---|---|---|---|---|---|"]
    for ds in args.datasets:
        for frac in FRACTIONS:
            sel = [r for r in rows if r["dataset"] == ds and r["fraction"] == frac]
            col = lambda key: [r[key] for r in sel]  # noqa: E731
            table.append(f"| {ds} | {frac:.0%} | {np.median(col('count_share_missing')):.1%} | "
                         f"{ms(col('zero_agreement'))} | {ms(col('full_ari'))} | {ms(col('zero_ari'))} | "
                         f"{ms(col('mean_agreement'))} | {ms(col('mean_ari'))} |")
    intro = (f"`python benchmarks/missing_genes.py --datasets {' '.join(args.datasets)} --seeds "
             f"{' '.join(map(str, args.seeds))}`: a model trained on {TRAIN_SHARE:.0%} of the cells (published "
             f"defaults, k given) assigns the other cells with a fraction of its genes removed ({DRAWS} random draws "
             "each), the missing genes counted as zero (`--fill-missing-genes`), or at their training mean "
             "(`mean`, not offered). Mean ± sd over seeds x draws; ARI against the cell types of the same cells; "
             "agreement = ARI between those labels and the full-gene labels.")
    print(write_results(args.out, f"missing_genes{args.tag}", "Predict with missing genes", intro, table,
                        {"command": " ".join(sys.argv), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
