"""Command line of GsRCL.

``python -m scdc_jax.gsrcl [evaluate] --data-file F`` runs the one-vs-rest evaluation protocol;
``train-reference`` and ``annotate`` build a reference and label new cells with it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time

from ..distributed import add_distributed_arguments
from ..errors import CliParser, InputError, run_cli

COMMANDS = ("evaluate", "train-reference", "annotate")
RESULTS = ("results.csv", "summary.txt", "results.json", "folds")  # what an evaluation writes in --out-dir

EPILOG = """examples:
  python -m scdc_jax.gsrcl --data-file baron_mouse1.h5 --config configs/gsrcl_cpu.toml
  python -m scdc_jax.gsrcl --data-file cells.h5ad --label-key cell_type --cell-type B --cell-type T
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m scdc_jax.gsrcl --devices 4 --data-file d.h5
  python -m scdc_jax.gsrcl train-reference --data-file ref.h5 --out ref_model --config configs/gsrcl_cpu.toml
  python -m scdc_jax.gsrcl annotate --reference ref_model --data-file query.h5ad --out query_annotated.h5ad --plot calls.png

subcommands: evaluate (default), train-reference, annotate; 'python -m scdc_jax.gsrcl SUBCOMMAND --help'
"""


SEVERAL_PROCESSES = ("GsRCL: each process runs the whole protocol; every training batch is split over all "
                     "processes' devices (NT-Xent's negatives from all of them), and each process runs the SVM "
                     "grid searches itself on the same gathered representation with the same seeds, so all "
                     "select the same epochs")


def _data_args(p: argparse.ArgumentParser, labels: bool = True) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--data-file", help="counts: scDeepCluster-style .h5 (X, Y, cell_types, gene_names), .h5ad, "
                   ".zarr, CSV (header row, first column of names), or 10x Genomics (filtered_feature_bc_matrix.h5 "
                   "or its matrix folder)")
    g.add_argument("--layer", help=".h5ad, .zarr: layer holding the counts ('raw' for .raw.X); default .X")
    g.add_argument("--transpose", "--genes-as-rows", action=argparse.BooleanOptionalAction,
                   help="CSV: the rows are genes and the columns cells (R's and GEO's layout); --no-transpose: the "
                   "rows are cells. Default: told from the names (cell barcodes, gene ids) and the shape, and a "
                   "file that cannot be told is refused")
    known = "" if labels else "the query's known labels, optional, for the second panel of --plot: "
    g.add_argument("--label-key", help=known + "labels: .obs column (.h5ad) or dataset name (.h5, default Y)")
    g.add_argument("--labels-csv", help=known + "labels for a CSV or 10x Genomics data file: (cell id or barcode, "
                   "label) or one label a line")


def _method_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("method (defaults: the published settings; flags override --config)")
    m.add_argument("--config", help="TOML settings, e.g. configs/gsrcl_paper.toml or configs/gsrcl_cpu.toml")
    m.add_argument("--loss", choices=["simclr", "supcon"], help="contrastive loss (default simclr)")
    m.add_argument("--epochs", type=int, help="training epochs (default 3000 simclr, 1000 supcon)")
    m.add_argument("--eval-every", type=int, help="epochs between model-selection evaluations (default 50)")
    m.add_argument("--batch-size", type=int, help="cells per step (default 8192; full batch when fewer)")
    m.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    m.add_argument("--temperature", type=float, help="contrastive temperature (default 0.07)")
    m.add_argument("--noise-std", type=float, help="std of the Gaussian view noise (default 1)")
    m.add_argument("--augment", choices=["gaussian", "dropout"], help="views: gaussian noise (GsRCL, default) or "
                   "dropout, the random-gene-masking baseline")
    m.add_argument("--dropout", type=float, help="masking baseline: share of genes zeroed per view (default 0.9)")
    m.add_argument("--n-top-genes", type=int, help="masking baseline: scanpy preprocessing to this many highly "
                   "variable genes (default 0: log1p of all genes)")
    m.add_argument("--encoders", choices=["shared", "per-type"], help="evaluate: 'shared' trains one encoder per "
                   "outer fold for all cell types (the default with simclr: NT-Xent uses no labels), 'per-type' one "
                   "per cell type and fold as the reference does (always, with supcon)")
    m.add_argument("--precision", choices=["f32", "bf16"], help="matmul precision of the encoder: bf16 computes "
                   "the Dense layers in bfloat16 with float32 parameters, loss and optimiser (for GPUs; default f32)")
    m.add_argument("--fold-batch", choices=["auto", "on", "off"], help="evaluate: train the outer folds' encoders "
                   "(of the shared encoder, or of each cell type) together as one vmapped program, each as it "
                   "trains alone; 'auto' (default) does so on a GPU or TPU when they fit in half its memory, never "
                   "on a CPU, where it gains nothing; works with --devices (cells split over the devices)")
    m.add_argument("--svm-workers", type=int, help="processes running the SVM grid searches while the encoder "
                   "trains (default -1: all CPU cores but one; 0 runs them in turn in this process)")
    m.add_argument("--seed", type=int, help="seed of the splits, initialisation and noise (default 0)")
    m.add_argument("--devices", type=int, help="split each batch over this many devices (default 1; with "
                   "several processes, and only then, every device of every process)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m scdc_jax.gsrcl", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="GsRCL in JAX: contrastive representations of cells learnt from "
                                "Gaussian-noise views; one-vs-rest cell-type identification with SVMs.")
    sub = p.add_subparsers(dest="command")
    ev = sub.add_parser("evaluate", help="the paper's evaluation protocol (default)",
                        description="One-vs-rest cell-type identification: SVM on GsRCL representations vs on "
                        "log genes, per cell type, stratified 5-fold CV; writes CSV, text and JSON results.")
    _data_args(ev)
    ev.add_argument("--cell-type", action="append", help="evaluate only this cell type (repeatable); default all")
    ev.add_argument("--out-dir", default="gsrcl_results", help="results folder (default: %(default)s); finished "
                    "folds, and checkpoints of the fold in training, are kept in its folds/ subfolder")
    ev.add_argument("--resume", action="store_true", help="reuse the finished folds in --out-dir/folds of an "
                    "interrupted run with the same settings and data, and continue the interrupted fold from its "
                    "last checkpoint")
    ev.add_argument("--overwrite", action="store_true", help="replace the results (and kept folds) of a previous "
                    "run in --out-dir; without it, or --resume, a folder holding them is refused")
    _method_args(ev)
    add_distributed_arguments(ev, SEVERAL_PROCESSES)
    tr = sub.add_parser("train-reference", help="train an encoder and per-type SVMs on a labelled reference",
                        description="Train one NT-Xent encoder on all reference cells and one calibrated SVM per "
                        "cell type; save them to --out for 'annotate'.")
    _data_args(tr)
    tr.add_argument("--out", required=True, help="folder for the reference model; the encoder is checkpointed in "
                    "its .partial/ subfolder while training")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted training from the checkpoint in "
                    "--out/.partial (same settings and data)")
    tr.add_argument("--overwrite", action="store_true", help="replace the reference (or the interrupted training) "
                    "in --out when it has trained; without it, or --resume, a folder holding one is refused")
    _method_args(tr)
    add_distributed_arguments(tr, SEVERAL_PROCESSES)
    an = sub.add_parser("annotate", help="label query cells with a trained reference",
                        description="Align the query's genes to the reference, encode, and call each cell the "
                        "most probable type, or Unassigned at or below --cutoff.")
    an.add_argument("--reference", required=True, help="folder made by train-reference")
    _data_args(an, labels=False)
    an.add_argument("--cutoff", type=float, default=0.5, help="top probability at or below which a cell is "
                    "Unassigned (default: %(default)s)")
    an.add_argument("--out", help="output: .csv of probabilities and calls (default annotations.csv) with the run's "
                    "provenance in a .json beside it, or .h5ad (the query with .obs columns gsrcl_call and "
                    "gsrcl_prob_<type>, a '/' in a type written '_', .obsm['X_gsrcl'] the representation and "
                    ".obsm['gsrcl_probs'] the probabilities, provenance in .uns['gsrcl']; an .h5ad or .zarr query "
                    "is written whole, any other as its counts)")
    an.add_argument("--plot", help="write a 2-D PCA picture of the query coloured by call (e.g. calls.png), with a "
                    "second panel coloured by the query's known labels when it has them (--label-key, --labels-csv, "
                    "or Y of an .h5)")
    return p


def _read(args, labels: bool = True):
    """The command's data file, with labels when it has them; ``labels``: whether the command needs
    them (for the message when no file is given)."""
    from .. import distributed
    from ..io import log_transformed_note, read_counts

    if args.data_file is None:
        raise InputError("a labelled data file is needed: give --data-file (.h5 with Y, .h5ad with "
                         "--label-key, or CSV with --labels-csv)." if labels else
                         "a query data file is needed: give --data-file.")
    data = read_counts(args.data_file, layer=args.layer, label_key=args.label_key, labels_csv=args.labels_csv,
                       transpose=args.transpose)
    from ..io import check_counts

    check_counts(data.X, require_integer=False)
    if (note := log_transformed_note(data.X)) and distributed.is_primary():
        print(f"note: {note}", file=sys.stderr)
    return data


def _check_previous(path: str, entries, what: str, args, flag: str) -> None:
    """Refuse, before any work, a folder holding ``what`` (one of ``entries``) of an earlier run
    unless ``--resume`` or ``--overwrite`` says what to do with it (:func:`~scdc_jax.outputs.check_reuse`)."""
    from ..outputs import check_reuse

    held = os.path.isdir(path) and any(os.path.lexists(os.path.join(path, e)) for e in entries)
    check_reuse(path, held, what, flag, resume=args.resume, overwrite=args.overwrite)


def _join(args) -> None:
    """Join a multi-process run when asked or launched as one (first, before any JAX work); its
    ``--devices`` default to every device of every process."""
    from .. import distributed

    if distributed.initialize(args.coordinator, args.num_processes, args.process_id) > 1 and args.devices is None:
        import jax

        args.devices = jax.device_count()


def _config(args):
    from .config import load_config

    if args.epochs is not None and args.epochs <= 0:
        raise InputError(f"--epochs must be positive, got {args.epochs}; leave it out for the published count.")
    keys = ("loss", "epochs", "eval_every", "batch_size", "lr", "temperature", "noise_std", "seed", "devices",
            "augment", "dropout", "n_top_genes", "svm_workers", "encoders", "precision", "fold_batch")
    cfg = load_config(args.config, **{k: getattr(args, k) for k in keys})
    import jax

    # a bad --devices fails here, before any data is read; one device of one process needs no check
    if cfg.devices > 1 or jax.process_count() > 1:
        from ..parallel import check_devices

        check_devices(cfg.devices)
    return cfg


def cmd_evaluate(args, argv) -> int:
    from .. import distributed
    from ..outputs import atomic_path, check_writable_dir, provenance, write_json

    _join(args)
    cfg = _config(args)
    out_dir = check_writable_dir(args.out_dir, "results folder")
    _check_previous(out_dir, RESULTS, "a GsRCL evaluation (finished, or interrupted with its folds kept)", args,
                    "--out-dir")
    distributed.barrier("results folder checked")  # by every process before the first one writes there
    data = _read(args)
    from .protocol import evaluate, results_table, text_summary

    dataset = os.path.splitext(os.path.basename(data.source))[0]
    t0 = time.perf_counter()
    results = evaluate(data, cfg, cell_types=args.cell_type, progress=not args.quiet,
                       fold_dir=os.path.join(out_dir, "folds"), resume=args.resume)
    seconds = time.perf_counter() - t0
    if not distributed.is_primary():
        return 0  # the first process writes the outputs
    os.makedirs(out_dir, exist_ok=True)
    table = results_table(results, dataset)
    with atomic_path(os.path.join(out_dir, "results.csv")) as tmp:
        table.to_csv(tmp, index=False)
    summary = text_summary(results, dataset) + (f"total time {seconds:.1f} s ({results['train_s']:.1f} s training "
                                                f"{results['encoders']} encoders) on {cfg.devices} device(s)\n")
    with atomic_path(os.path.join(out_dir, "summary.txt")) as tmp:
        with open(tmp, "w") as fh:
            fh.write(summary)
    prov = provenance(cfg.seed, cfg.to_dict(), cfg.devices, "python -m scdc_jax.gsrcl " + shlex.join(argv))
    write_json(os.path.join(out_dir, "results.json"),
               {**prov, "data": data.source, "n_cells": data.n_cells, "n_genes": data.n_genes,
                "seconds": seconds, **results})
    print(summary, end="")
    print(f"wrote {os.path.join(out_dir, 'results.csv')}, summary.txt and results.json")
    return 0


def cmd_train_reference(args, argv) -> int:
    from .. import distributed
    from ..outputs import check_writable_dir

    _join(args)
    cfg = _config(args)
    check_writable_dir(args.out, "reference folder")
    from .. import manifest
    from .annotate import OLD_SVMS

    _check_previous(args.out, ("reference.json", "svms.npz", OLD_SVMS, manifest.NAME, ".partial"),
                    "a GsRCL reference (or an interrupted training of one)", args, "--out")
    data = _read(args)
    from .annotate import train_reference

    meta = train_reference(data, cfg, args.out, resume=args.resume, progress=not args.quiet,
                           command="python -m scdc_jax.gsrcl " + shlex.join(argv))
    if not distributed.is_primary():
        return 0
    print(f"trained a reference of {len(meta['cell_types'])} cell types on {data.n_cells} cells x "
          f"{data.n_genes} genes; wrote {args.out}")
    return 0


def cmd_annotate(args, argv) -> int:
    from ..outputs import atomic_path, check_writable_file, provenance, write_h5ad, write_json
    from .annotate import UNASSIGNED, annotate, load_reference, plot_calls

    out = args.out or "annotations.csv"
    check_writable_file(out, "--out file")
    sidecar = None if out.endswith(".h5ad") else os.path.splitext(out)[0] + ".json"
    if sidecar is not None:
        check_writable_file(sidecar, "provenance file")
    if args.plot:
        check_writable_file(args.plot, "--plot file")
    ref = load_reference(args.reference)  # checked against its manifest once, before the query is read
    query = _read(args, labels=False)
    df, h = annotate(ref, query, cutoff=args.cutoff)
    prov = {**provenance(ref.cfg.seed, {"reference": os.path.abspath(args.reference), "cutoff": args.cutoff,
                                        "layer": args.layer or "", "reference_config": dataclasses.asdict(ref.cfg)},
                         1, "python -m scdc_jax.gsrcl " + shlex.join(argv)),
            "data": query.source, "n_cells": len(df), "cell_types": list(df.columns.drop("call")),
            "reference_genes_missing": len(set(map(str, ref.genes)) - set(map(str, query.gene_names))),
            "cells_without_counts": int(df[ref.cell_types].isna().all(axis=1).sum())}
    if out.endswith(".h5ad"):
        import numpy as np
        import pandas as pd

        from ..io import output_anndata

        adata = output_anndata(args.data_file, query)
        adata.obs["gsrcl_call"] = pd.Categorical(df["call"].to_numpy())
        columns = prob_columns(prov["cell_types"])
        for col, name in zip(columns, prov["cell_types"]):
            adata.obs[col] = df[name].to_numpy()
        # as scdc_jax.tl.gsrcl_annotate writes them: the representation, the probabilities as one array
        adata.obsm["X_gsrcl"] = np.asarray(h, np.float32)
        adata.obsm["gsrcl_probs"] = df[prov["cell_types"]].to_numpy(np.float32)
        adata.uns["gsrcl"] = {**prov, "prob_columns": columns}
        write_h5ad(out, adata)
    else:
        with atomic_path(out) as tmp:
            df.to_csv(tmp)
        write_json(sidecar, prov)
    if args.plot:
        import numpy as np

        known = None if query.labels is None else np.asarray(query.label_names)[query.labels]
        plot_calls(h, df["call"].to_numpy(), args.plot, labels=known)
    counts = df["call"].value_counts()
    written = [p for p in (out, sidecar, args.plot) if p]
    if missing := prov["reference_genes_missing"]:
        print(f"{missing} of the reference's {len(ref.genes)} genes are not in the query and were set to zero")
    if empty := prov["cells_without_counts"]:
        print(f"{empty} cells have no counts in the reference's genes: called {UNASSIGNED}, probabilities left empty")
    print(f"annotated {len(df)} cells ({int(counts.get(UNASSIGNED, 0))} Unassigned); wrote {', '.join(written)}")
    return 0


def prob_columns(cell_types: list[str]) -> list[str]:
    """The .obs column of each cell type's probability: ``gsrcl_prob_<type>``, a '/' in the name
    written '_' (an HDF5 key cannot hold one; anndata warns, and will refuse)."""
    columns = [f"gsrcl_prob_{t}".replace("/", "_") for t in cell_types]
    if len(set(columns)) < len(columns):
        twins = sorted({t for t, c in zip(cell_types, columns) if columns.count(c) > 1})
        raise InputError(f"the reference's cell types {', '.join(map(repr, twins))} differ only in '/' and '_', "
                         "so their .obs columns would share a name; write the annotations to a .csv --out instead.")
    return columns


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv_cmd = ["evaluate", *argv]
    else:
        argv_cmd = argv
    args = build_parser().parse_args(argv_cmd)
    run = {"evaluate": cmd_evaluate, "train-reference": cmd_train_reference, "annotate": cmd_annotate}
    return run[args.command](args, argv)


if __name__ == "__main__":
    run_cli(main)
