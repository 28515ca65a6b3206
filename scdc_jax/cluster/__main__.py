"""Command line of scDeepCluster: ``python -m scdc_jax.cluster [--data-file FILE] [options]``.

Without ``--data-file`` it clusters scanpy's bundled pbmc68k_reduced cells (700 PBMCs, counts
recovered from their log-normalised values) and scores the result against their bulk labels.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..errors import CliParser, InputError, run_cli
from ..distributed import add_distributed_arguments
from .config import CHOICES

EPILOG = """subcommand:
  python -m scdc_jax.cluster predict --model SAVE_DIR --data-file NEW.h5ad   # assign new cells

examples:
  python -m scdc_jax.cluster                                   # bundled PBMC demo, Louvain estimate
  python -m scdc_jax.cluster --data-file data.h5 --n-clusters 16 --select-genes 2000
  python -m scdc_jax.cluster --config configs/scdeepcluster_paper.toml --data-file data.h5
  python -m scdc_jax.cluster --data-file cells.h5ad --layer counts --label-key cell_type --out out.h5ad
  python -m scdc_jax.cluster --data-file data.h5 --ae-weights scdc_results --save-dir rerun   # reuse pretraining
  python -m scdc_jax.cluster --data-file data.h5 --n-clusters 8 --overwrite   # replace the run in scdc_results

A --save-dir holding another run is refused unless --overwrite (replace it) or --resume (continue it).
"""


TRANSPOSE_HELP = ("CSV: the rows are genes and the columns cells (R's and GEO's layout); --no-transpose: the rows "
                  "are cells. Default: told from the names (cell barcodes, gene ids) and the shape, and a file "
                  "that cannot be told is refused")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m scdc_jax.cluster", description="scDeepCluster in JAX: ZINB autoencoder pretraining, "
        "then deep embedded clustering of single-cell RNA-seq counts.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input and output")
    io.add_argument("--data-file", help="counts: scDeepCluster .h5 (X, optional Y, B), .h5ad, .zarr, CSV, or 10x "
                    "Genomics (filtered_feature_bc_matrix.h5 or its matrix folder); default: scanpy's bundled "
                    "pbmc68k_reduced")
    io.add_argument("--layer", help=".h5ad, .zarr: layer holding the raw counts ('raw' for .raw.X); default .X")
    io.add_argument("--transpose", "--genes-as-rows", action=argparse.BooleanOptionalAction, help=TRANSPOSE_HELP)
    io.add_argument("--label-key", help="known labels: .obs column (.h5ad) or dataset name (.h5, default Y)")
    io.add_argument("--labels-csv", help="known labels of a CSV or 10x Genomics data file: (cell id or barcode, "
                    "label) rows, or one label a line in the cells' order")
    io.add_argument("--batch-key", help="batches: .obs column (.h5ad) or 1-D dataset (.h5); an .h5 with a one-hot "
                    "B uses it automatically; switches on the batch-conditioned model")
    io.add_argument("--save-dir", default="scdc_results", help="checkpoints and outputs (default: %(default)s); "
                    "one holding another run is refused unless --overwrite or --resume")
    io.add_argument("--final-latent-file", help="latent CSV, cells x latent (default: SAVE_DIR/final_latent_file.txt)")
    io.add_argument("--predict-label-file", help="one cluster a line (default: SAVE_DIR/pred_labels.txt)")
    io.add_argument("--out", help="write an .h5ad with .obs['scdc_cluster'], .obsm['X_scdc'] and the run in .uns: "
                    "the input itself when it is an .h5ad or .zarr (everything in it kept), else its counts")
    io.add_argument("--ae-weights", help="folder of a pretrained autoencoder checkpoint (a previous SAVE_DIR); "
                    "skips pretraining")
    io.add_argument("--resume", action="store_true", help="continue the run in SAVE_DIR from its checkpoints (same "
                    "data and settings; also an interrupted --overwrite run)")
    io.add_argument("--overwrite", action="store_true", help="replace the run in SAVE_DIR: the new one is built "
                    "beside it and swapped in when it has finished, so a failed run leaves the old one whole")
    io.add_argument("--plot", metavar="DIR", help="write PNGs: UMAP of the latent space by cluster (and label, "
                    "batch), loss curves, ARI/NMI trajectory")
    io.add_argument("--config", help="TOML file of settings (e.g. configs/scdeepcluster_paper.toml); flags override it")
    io.add_argument("--quiet", action="store_true", help="no progress bars")
    io.add_argument("--stream", action=argparse.BooleanOptionalAction, help="read the cells from disk a block at "
                    "a time in every pass instead of holding them in memory (.h5ad, .zarr and .h5 inputs; CSR or "
                    "dense rows); an epoch visits the blocks in a random order and shuffles the cells within "
                    "each. Default: streamed when the counts would take more than half the host's memory "
                    "(SCDC_MEMORY_BUDGET_GB sets the budget); --no-stream never streams")
    io.add_argument("--block-cells", type=int, default=65536, help="cells a streamed block (default: %(default)s)")
    m = p.add_argument_group("method (defaults: the published settings)")
    m.add_argument("--n-clusters", type=int, help="number of clusters; 0 estimates it with Louvain (default 0)")
    m.add_argument("--knn", type=int, help="neighbours of the kNN graph for Louvain (default 20)")
    m.add_argument("--resolution", type=float, help="Louvain/Leiden resolution (default 0.8)")
    m.add_argument("--community", choices=CHOICES["community"], help="community detection when --n-clusters 0")
    m.add_argument("--select-genes", type=int, help="select this many genes by zero rate vs mean (default 0 = all)")
    m.add_argument("--batch-size", type=int, help="minibatch size (default 256)")
    m.add_argument("--maxiter", type=int, help="maximum clustering epochs (default 2000)")
    m.add_argument("--pretrain-epochs", type=int, help="autoencoder pretraining epochs (default 300)")
    m.add_argument("--gamma", type=float, help="weight of the clustering loss (default 1)")
    m.add_argument("--sigma", type=float, help="std of the Gaussian input noise (default 2.5)")
    m.add_argument("--update-interval", type=int, help="epochs between target updates (default 1)")
    m.add_argument("--tol", type=float, help="stop when fewer than this fraction of labels change (default 0.001)")
    m.add_argument("--init-cells", type=int, help="find the initial clusters (k-means, or Louvain/Leiden) on this "
                   "many random cells and put every other cell in its nearest centre's cluster: for millions of "
                   "cells (default 0 = all cells)")
    m.add_argument("--init-from", choices=CHOICES["init_from"],
                   help="with --n-clusters 0: start the clustering stage from the centres of the communities "
                        "(communities, default, published) or from k-means with their number of clusters (kmeans; "
                        "higher ARI on 5 of 6 shared data sets, lower on worm: see the README)")
    m.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    e = p.add_argument_group("seed ensembles")
    e.add_argument("--ensemble", type=int, metavar="N", help="train N models (seeds SEED, SEED+1, ...) side by side as "
                   "one vmapped program (about N times one model's work on a CPU) and return their consensus "
                   "(--consensus); writes every member's labels to "
                   "SAVE_DIR/ensemble_labels.csv and its label-free criteria to run.json (default 1: one model)")
    e.add_argument("--ensemble-select", choices=CHOICES["ensemble_select"],
                   help="the labels returned: the consensus (default), or the member with the highest mean ARI "
                        "with the others (agreement), the highest silhouette in its latent space, or the lowest "
                        "final ZINB loss; the latent and model are those of that member (for the consensus: the "
                        "member closest to it)")
    e.add_argument("--consensus", choices=CHOICES["consensus"],
                   help="how the members' labelings make one: vote (default: each member's clusters matched to "
                        "those of the member agreeing best with the others, soft assignments summed), average "
                        "(average-linkage clustering of the co-association, the fraction of members that put two "
                        "cells together; on at most 5000 cells, the others joining the cluster they are most "
                        "often put with) or kmeans (k-means on the co-association)")
    e.add_argument("--ensemble-init", choices=CHOICES["ensemble_init"],
                   help="where the members' clustering stage starts: joint (default: k-means on the members' latent "
                        "spaces side by side, each scaled alike; each member from its clusters' centres in its own "
                        "latent space), consensus (the vote of the members' own k-means partitions, each member "
                        "from its clusters' centres in its own latent space) or member (each member from its own "
                        "k-means, so that each trains as the single run of its seed)")
    e.add_argument("--k-estimate", choices=CHOICES["k_estimate"],
                   help="with --n-clusters 0 and --ensemble: one number of clusters for all members, the median "
                        "of the members' Louvain counts (louvain, default), the k from 2 to the largest "
                        "Louvain count whose k-means labelings agree most between the members' latent spaces "
                        "(stability; on the shared data it did worse than louvain) or the median of the members' "
                        "Louvain counts at the resolution from 0.1 to 1.0 where their communities agree most "
                        "(resolution); see the README for how each did")
    m.add_argument("--batch-mmd", type=float, metavar="WEIGHT",
                   help="with batches (--batch-key): add WEIGHT x the maximum mean discrepancy between the batches "
                        "within each cluster (latent space) to the clustering stage's loss, to mix batches within "
                        "clusters (e.g. 1; default 0, the published model; see the README for what it did on the "
                        "shared data). run.json reports the batches' kNN mixing and iLISI either way")
    m.add_argument("--devices", type=int, help="split each minibatch over this many devices (default 1)")
    m.add_argument("--checkpoint-every", type=int, help="epochs between periodic checkpoints (default 25)")
    m.add_argument("--precision", choices=CHOICES["precision"], help="bf16 computes the autoencoder's Dense layers in "
                   "bfloat16 with float32 parameters, loss and latent: for GPUs; on CPUs it is usually slower "
                   "(default f32)")
    add_distributed_arguments(p)
    return p


def build_predict_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m scdc_jax.cluster predict",
                                description="Assign new cells with a saved model: latent coordinates, soft "
                                "assignments q and hard labels. The query needs the model's genes (matched by name "
                                "when both have names; see --fill-missing-genes).")
    p.add_argument("--model", required=True, help="a finished run's --save-dir (or its model/ folder)")
    p.add_argument("--data-file", required=True, help="query counts (.h5, .h5ad, .zarr, CSV, or a 10x Genomics "
                   ".h5 or matrix folder)")
    p.add_argument("--layer", help=".h5ad layer with the counts ('raw' for .raw.X)")
    p.add_argument("--transpose", "--genes-as-rows", action=argparse.BooleanOptionalAction, help=TRANSPOSE_HELP)
    p.add_argument("--label-key", help="known labels of the query, to score the assignment")
    p.add_argument("--labels-csv", help="the same for a CSV or 10x Genomics query: (cell id or barcode, label) rows, "
                   "or one label a line in the cells' order")
    p.add_argument("--batch-key", help="batches of the query (batch-conditioned models)")
    p.add_argument("--fill-missing-genes", action="store_true",
                   help="count the model's genes that the query lacks as zero instead of refusing the query (fewer "
                   "than half of them; with 10%% of them missing, the labels agree with the full query's at ARI 0.95 "
                   "on the shared 10X PBMC and 0.90 on worm: see the README)")
    p.add_argument("--save-dir", default="scdc_predict", help="output folder (default: %(default)s)")
    p.add_argument("--out", help="also write an .h5ad with .obs['scdc_cluster'], .obsm['X_scdc'], .obsm['scdc_q']: "
                   "the query itself when it is an .h5ad or .zarr (everything in it kept), else its counts")
    return p


def predict_main(argv: list[str]) -> int:
    args = build_predict_parser().parse_args(argv)
    from ..io import read_counts
    from ..outputs import (check_writable_dir, check_writable_file, provenance, write_json, write_labels,
                           write_matrix_csv)

    if args.out and not args.out.endswith(".h5ad"):
        raise InputError(f"--out {args.out} must end in .h5ad.")
    data = read_counts(args.data_file, layer=args.layer, label_key=args.label_key, batch_key=args.batch_key,
                       labels_csv=args.labels_csv, transpose=args.transpose)
    save_dir = check_writable_dir(args.save_dir, "save folder")
    if args.out:
        check_writable_file(args.out, "--out file")
    from .inference import predict

    res = predict(args.model, data, fill_missing_genes=args.fill_missing_genes)
    assigned = int((res["labels"] >= 0).sum())
    record = {**provenance(None, {"model": os.path.abspath(args.model), "fill_missing_genes": args.fill_missing_genes,
                                  **{k: getattr(args, k) for k in ("layer", "label_key", "labels_csv", "batch_key")
                                     if getattr(args, k)}},
                           1, "python -m scdc_jax.cluster predict " + shlex.join(argv)),
              "data": data.source, "n_cells": data.n_cells, "n_assigned": assigned, "n_clusters": res["q"].shape[1],
              "n_genes": res["n_genes"], "genes_missing": res["genes_missing"]}
    if data.labels is not None:
        from ..metrics import clustering_scores

        ok = res["labels"] >= 0
        record["scores"] = clustering_scores(data.labels[ok], res["labels"][ok])
    write_matrix_csv(os.path.join(save_dir, "latent.csv"), res["latent"])
    write_matrix_csv(os.path.join(save_dir, "q.csv"), res["q"])
    write_labels(os.path.join(save_dir, "pred_labels.txt"), res["labels"])
    write_json(os.path.join(save_dir, "predict.json"), record)
    if args.out:
        import numpy as np
        import pandas as pd

        from ..io import output_anndata
        from ..outputs import write_h5ad

        ad = output_anndata(args.data_file, data)
        lab = res["labels"]
        ad.obs["scdc_cluster"] = pd.Categorical(np.where(lab >= 0, lab.astype(str), None),
                                                categories=[str(i) for i in range(res["q"].shape[1])])
        ad.obsm["X_scdc"], ad.obsm["scdc_q"] = res["latent"], res["q"]
        ad.uns["scdc"] = record  # what made the fields above, as predict.json
        write_h5ad(args.out, ad)
    if res["genes_missing"]:
        print(f"{res['genes_missing']} of the model's {res['n_genes']} genes are not in the "
              "query and were counted as zero")
    print(f"assigned {assigned} of {data.n_cells} cells to {res['q'].shape[1]} clusters; "
          f"wrote {save_dir}/latent.csv, q.csv, pred_labels.txt, predict.json" + (f", {args.out}" if args.out else ""))
    if "scores" in record:
        s = record["scores"]
        print(f"against the known labels: ARI {s['ari']:.4f}  NMI {s['nmi']:.4f}  ACC {s['acc']:.4f}")
    return 0


def _open_store(args, n_processes: int):
    """``(store, streamed)``: a :class:`~scdc_jax.store.CellStore` of ``--data-file`` when the run
    reads it by rows, else ``(None, False)`` (read whole).  Streamed with ``--stream``, or by
    default when the counts exceed the memory budget; otherwise held in memory by a run over
    several processes, each reading only its devices' rows (not with ``--out``/``--plot``, which
    need every cell in the first process).  Only .h5ad, .zarr and .h5 files are read by rows; a
    file the store refuses is read whole, which reports it in the reader's own words (with
    ``--stream``: refused here).  The store's annotations are read at once, so that a wrong key
    is refused before any work."""
    from ..io import sniff_format
    from ..store import CellStore, memory_budget_bytes

    may_hold = n_processes > 1 and not (args.out or args.plot) and args.transpose is None
    if args.stream is False and not may_hold:
        return None, False
    if args.labels_csv is not None:  # CSV and 10x data, read whole (the reader refuses it for any other)
        if args.stream:
            raise InputError("--labels-csv applies to CSV and 10x Genomics data, which are read whole; --stream "
                             "reads .h5ad, .zarr and .h5 files, whose labels --label-key names.")
        return None, False
    if not args.stream and sniff_format(args.data_file) not in ("h5ad", "zarr", "h5"):
        return None, False
    try:
        store = CellStore(args.data_file, layer=args.layer, label_key=args.label_key, batch_key=args.batch_key)
    except InputError:
        if args.stream:
            raise
        return None, False
    streamed = bool(args.stream)
    if args.stream is None:
        need, budget = store.nbytes_in_memory(), memory_budget_bytes()
        streamed = need > budget
        if streamed:
            print(f"the counts would take {need / 2 ** 30:.1f} GiB, more than the budget of "
                  f"{budget / 2 ** 30:.1f} GiB: streaming them from disk (--no-stream holds them in memory)",
                  file=sys.stderr)
    if not (streamed or may_hold):
        store.close()
        return None, False
    store.annotations
    if streamed and args.transpose is not None:
        raise InputError("--transpose applies to CSV data files, which are not streamed.")
    return store, streamed


def ensemble_line(e: dict) -> str:
    """The printed summary of a run's ``ensemble`` record: where the members started, how they agree."""
    start = {"consensus": "the vote of their k-means partitions (which", "member": "their own k-means partitions "
             "(which", "joint": "k-means on their joint latent space (their own k-means partitions"}[e["init"]]
    return (f"ensemble of {e['members']}: members started from {start} agreed {e['init_agreement']:.3f}, mean ARI); "
            f"final member agreement {e['agreement']:.3f}; labels: {e['select']}"
            + (f" (member {e['representative']})" if e["select"] != "consensus" else ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "predict":
        return predict_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .. import distributed

    n_processes = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if n_processes > 1 and args.devices is None:
        import jax

        args.devices = jax.device_count()  # every device of every process
    from ..io import check_counts, output_anndata, pbmc68k_counts, read_counts
    from ..outputs import (check_writable_dir, check_writable_file, provenance, write_h5ad, write_json,
                           write_labels, write_matrix_csv)
    from .config import load_config
    from .layout import ENSEMBLE_FILE, LABEL_FILE, LATENT_FILE, RUN_FILE, run_folder

    overrides = {k: getattr(args, k) for k in (
        "n_clusters", "knn", "resolution", "community", "select_genes", "batch_size", "maxiter", "batch_mmd",
        "pretrain_epochs", "gamma", "sigma", "update_interval", "tol", "seed", "devices", "checkpoint_every",
        "precision", "init_cells", "ensemble", "ensemble_select", "consensus", "ensemble_init", "k_estimate",
        "init_from")}
    cfg = load_config(args.config, **overrides)
    save_dir = args.save_dir
    run_folder(save_dir, resume=args.resume, overwrite=args.overwrite)  # refuses a folder before any data is read
    distributed.barrier("save folder checked")  # by every process before the first one writes there
    streamed = False
    if args.data_file is None:
        if args.layer or args.label_key or args.labels_csv or args.batch_key or args.transpose is not None:
            raise InputError("--layer, --label-key, --labels-csv, --batch-key and --transpose need --data-file.")
        if args.stream:
            raise InputError("--stream needs --data-file (the bundled demo is held in memory).")
        data = pbmc68k_counts()
    else:
        data, streamed = _open_store(args, n_processes)
        if data is None:
            data = read_counts(args.data_file, layer=args.layer, label_key=args.label_key,
                               batch_key=args.batch_key, labels_csv=args.labels_csv, transpose=args.transpose)
    hold = not streamed and not hasattr(data, "X")  # several processes, each holding its own rows
    if streamed:
        if args.out or args.plot:
            raise InputError("--out and --plot need the cells in memory, which a streamed run never holds; the "
                             "latent and label files hold its results (or run with --no-stream).")
        if args.block_cells < 1:
            raise InputError(f"--block-cells must be at least 1, got {args.block_cells}.")
    elif not hold:
        check_counts(data.X, require_integer=True)
    if cfg.select_genes > data.n_genes:
        raise InputError(f"--select-genes {cfg.select_genes} is larger than the number of genes ({data.n_genes}).")
    if cfg.n_clusters > data.n_cells:
        raise InputError(f"--n-clusters {cfg.n_clusters} is more than the number of cells ({data.n_cells}).")

    latent_file = args.final_latent_file or os.path.join(save_dir, LATENT_FILE)
    label_file = args.predict_label_file or os.path.join(save_dir, LABEL_FILE)
    for path, what in ((latent_file, "latent file"), (label_file, "label file"), (args.out, "--out file")):
        if path:
            check_writable_file(path, what)
    if args.plot:
        check_writable_dir(args.plot, "--plot folder")
    if args.out and not args.out.endswith(".h5ad"):
        raise InputError(f"--out {args.out} must end in .h5ad.")

    from .api import write_to_adata
    from .pipeline import run

    result = run(data, cfg, save_dir=save_dir, ae_weights=args.ae_weights, resume=args.resume,
                 overwrite=args.overwrite, progress=not args.quiet, block_cells=args.block_cells, hold=hold)
    if not distributed.is_primary():
        return 0  # the first process writes the outputs
    command = "python -m scdc_jax.cluster " + shlex.join(argv)
    prov = provenance(cfg.seed, cfg.to_dict(), cfg.devices, command)
    prov["data"] = data.source
    write_matrix_csv(latent_file, result.full_latent())
    write_labels(label_file, result.full_labels())
    ensemble_file = None
    if result.ensemble is not None:
        ensemble_file = os.path.join(save_dir, ENSEMBLE_FILE)
        write_matrix_csv(ensemble_file, result.full_member_labels(), fmt="%d")
    summary = {**prov, "n_clusters": int(result.centers.shape[0]), "scores": result.scores,
               "timings": result.timings, "stop_reason": result.stop_reason,
               "n_cells_kept": int(len(result.cells)), "n_genes_kept": int(len(result.genes)),
               "outputs": {"latent": latent_file, "labels": label_file, "h5ad": args.out,
                           **({"ensemble_labels": ensemble_file} if ensemble_file else {})},
               "ensemble": result.ensemble_summary(), "batch_mixing": result.mixing,
               "streamed": {"block_cells": args.block_cells} if streamed else None,
               "read_by_process_rows": hold}
    write_json(os.path.join(save_dir, RUN_FILE), summary)
    if args.out:
        adata = output_anndata(args.data_file, data)
        write_to_adata(adata, result, "scdc", extra={"seed": cfg.seed, "versions": prov["versions"],
                                                     "n_devices": cfg.devices, "data": data.source})
        write_h5ad(args.out, adata)

    if args.plot:
        from .plots import plot_run

        kept = data.subset(cells=result.cells)
        print("wrote " + ", ".join(plot_run(result, kept, args.plot, seed=cfg.seed)))
    k = result.centers.shape[0]
    msg = f"{k} clusters ({result.stop_reason} after {result.timings['cluster_epochs']} clustering epochs); " \
          f"time: pretrain {result.timings['pretrain_s']:.1f} s, total {result.timings['total_s']:.1f} s"
    print(msg)
    if result.ensemble is not None:
        e = result.ensemble
        print(ensemble_line(e))
        if result.scores:
            print("members' ARI " + " ".join(f"{c['ari']:.3f}" for c in e["criteria"]))
    if result.mixing is not None:
        m = result.mixing
        print(f"batch mixing in the latent space: iLISI {m['ilisi']:.2f} of {m['n_batches']}; kNN mixing "
              f"{m['knn_mixing']['observed']:.3f} (fully mixed within clusters: {m['knn_mixing']['expected']:.3f})")
    if result.scores:
        s = result.scores
        print(f"ARI {s['ari']:.4f}  NMI {s['nmi']:.4f}  ACC {s['acc']:.4f}")
    print(f"wrote {latent_file}, {label_file}, {os.path.join(save_dir, RUN_FILE)}"
          + (f", {args.out}" if args.out else "") + f"; model checkpoint in {os.path.join(save_dir, 'model')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
