"""Bad input to both command lines, each case answered by one sentence.

Every case runs the real CLI (its ``main`` through ``run_cli``, in this process; the cases of
:data:`SUBPROCESS` in a fresh interpreter, as a user runs them) from an empty folder that its
outputs are aimed into, and checks: exit code 2, one line on stderr starting with 'error: '
(holding the expected words), no traceback, and nothing left behind: the folder is still empty
and the input files are untouched.  The inputs, good and bad, are written once by
:func:`write_inputs`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from conftest import ROOT, crafted_pickle, flip_byte, largest_file, run_module, synthetic_counts

CLUSTER_TINY = ["--pretrain-epochs", "3", "--maxiter", "3", "--batch-size", "32", "--quiet"]
GSRCL_TINY = {"encoder": [16, 8], "head": [8, 4], "n_folds": 2, "svm_cv": 2, "svm_gamma": ["scale"],
              "svm_c": [1.0], "epochs": 2, "eval_every": 1}


def _h5(path, **datasets) -> str:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return str(path)


def _h5ad(path, X, genes, obs=None) -> str:
    ad = anndata.AnnData(X=np.asarray(X, np.float32), obs=obs)
    ad.obs_names = [f"c{i}" for i in range(len(X))]
    ad.var_names = genes
    ad.write_h5ad(path)
    return str(path)


def write_inputs(tmp) -> dict[str, str]:
    """Write every input file of the cases into ``tmp``; returns their paths by name."""
    X, groups, _ = synthetic_counts(60, 40)
    genes = [f"g{i}" for i in range(40)]
    cells = [f"c{i}" for i in range(60)]
    f = {"dir": str(tmp), "nope": str(tmp / "nope.h5")}
    f["good"] = _h5(tmp / "good.h5", X=X, Y=(groups + 1).astype(np.float64), gene_names=np.array(genes, "S"),
                    cell_names=np.array(cells, "S"))
    f["random"] = str(tmp / "random.h5")
    f["random_bin"] = str(tmp / "random.bin")
    rng = np.random.default_rng(0)
    for key in ("random", "random_bin"):
        with open(f[key], "wb") as fh:
            fh.write(b"\xff\xfe" + rng.bytes(2046))  # not UTF-8, so not CSV either
    f["trunc"] = str(tmp / "trunc.h5")
    with open(f["good"], "rb") as src, open(f["trunc"], "wb") as dst:
        dst.write(src.read()[:1500])
    f["x_empty"] = _h5(tmp / "x_empty.h5", X=np.zeros(0), Y=groups)
    f["no_x"] = _h5(tmp / "no_x.h5", Y=groups)
    f["x1"] = _h5(tmp / "x1.h5", X=np.ones(5))
    for key, value in (("neg", -1), ("frac", 0.5), ("nan", np.nan), ("inf", np.inf)):
        bad = X.astype(float)
        bad[0, 0] = value
        f[key] = _h5(tmp / f"{key}.h5", X=bad)
    f["y59"] = _h5(tmp / "y59.h5", X=X, Y=np.ones(59))
    y_nan = groups.astype(float)
    y_nan[3] = np.nan
    f["y_nan"] = _h5(tmp / "y_nan.h5", X=X, Y=y_nan)
    b_bad = np.zeros((60, 2))
    b_bad[:, 0] = 1
    b_bad[0, 1] = 1
    f["b_bad"] = _h5(tmp / "b_bad.h5", X=X, B=b_bad)
    f["b_len"] = _h5(tmp / "b_len.h5", X=X, B=np.eye(2)[np.zeros(50, int)])
    f["zero"] = _h5(tmp / "zero.h5", X=np.zeros((10, 5)), Y=np.arange(10) % 2, gene_names=np.array(genes[:5], "S"))
    f["no_genes"] = _h5(tmp / "no_genes.h5", X=X, Y=groups)
    # cell types too small for GsRCL's splits (2 folds x 2-fold inner CV): 56 vs 4 cells, and a
    # third type of 4 cells beside two large ones; and a single type
    f["rare"] = _h5(tmp / "rare.h5", X=X, Y=(np.arange(60) < 4).astype(np.int64))
    f["rare3"] = _h5(tmp / "rare3.h5", X=X, Y=np.where(np.arange(60) < 4, 2, groups % 2),
                     cell_types=np.array(["alpha", "beta", "rare"], "S"))
    f["one_type"] = _h5(tmp / "one_type.h5", X=X, Y=np.zeros(60), gene_names=np.array(genes, "S"))
    obs = pd.DataFrame({"celltype": [f"t{g}" for g in groups]}, index=cells)
    f["h5ad"] = _h5ad(tmp / "cells.h5ad", X, genes, obs)
    f["dup_h5ad"] = _h5ad(tmp / "dup.h5ad", X, ["g0", "g0"] + genes[2:])
    f["half_h5ad"] = _h5ad(tmp / "half.h5ad", X, genes[:20] + [f"other{i}" for i in range(20)])
    gaps = obs.assign(celltype=obs["celltype"].where(np.arange(60) >= 3),  # three cells without an annotation
                      plate=np.where(np.arange(60) % 2, "p1", None))  # and thirty without a batch
    f["gaps_h5ad"] = _h5ad(tmp / "gaps.h5ad", X, genes, gaps)
    f["csv"] = str(tmp / "cells.csv")
    pd.DataFrame(X, index=cells, columns=genes).to_csv(f["csv"])
    f["tall_csv"] = str(tmp / "tall.csv")  # 400 rows x 40 columns, names telling nothing: genes as rows?
    pd.DataFrame(synthetic_counts(40, 400)[0].T, index=[f"r{i}" for i in range(400)], columns=genes).to_csv(f["tall_csv"])
    f["loom"] = _h5(tmp / "cells.loom", matrix=X.T)
    with h5py.File(f["loom"], "a") as h:
        h.create_group("row_attrs"), h.create_group("col_attrs")
    f["mex_no_barcodes"] = str(tmp / "mex")  # a Cell Ranger folder without its barcodes.tsv
    os.makedirs(f["mex_no_barcodes"])
    scipy.io.mmwrite(os.path.join(f["mex_no_barcodes"], "matrix.mtx"), sp.coo_matrix(X.T))
    with open(os.path.join(f["mex_no_barcodes"], "features.tsv"), "w") as fh:
        fh.write("".join(f"id{g}\t{g}\tGene Expression\n" for g in genes))
    f["dup_csv"] = str(tmp / "dup.csv")
    pd.DataFrame(X, index=cells, columns=["g0", "g0"] + genes[2:]).to_csv(f["dup_csv"])
    f["text_csv"] = str(tmp / "text.csv")
    pd.DataFrame(X, index=cells, columns=genes).astype(str).replace("0", "none").to_csv(f["text_csv"])
    f["ids_csv"] = str(tmp / "wrong_ids.csv")
    pd.DataFrame({"cell": [f"x{i}" for i in range(60)], "label": groups}).to_csv(f["ids_csv"], index=False)
    f["gaps_csv"] = str(tmp / "gap_labels.csv")  # one empty label
    pd.DataFrame({"label": [""] + [f"t{g}" for g in groups[1:]]}).to_csv(f["gaps_csv"], index=False)
    f["short_csv"] = str(tmp / "short_labels.csv")
    pd.DataFrame({"label": groups[:59]}).to_csv(f["short_csv"], index=False)
    f["tiny"] = str(tmp / "tiny.toml")
    with open(f["tiny"], "w") as fh:
        fh.write("[gsrcl]\n" + "".join(f"{k} = {v!r}\n" for k, v in GSRCL_TINY.items()))
    f["unknown_toml"] = str(tmp / "unknown.toml")
    with open(f["unknown_toml"], "w") as fh:
        fh.write("[gsrcl]\nepochz = 3\n")
    f["wrong_type_toml"] = str(tmp / "wrong_type.toml")
    with open(f["wrong_type_toml"], "w") as fh:
        fh.write('[scdeepcluster]\npretrain_epochs = "twenty"\n')
    f["not_ref"] = str(tmp / "not_ref")
    os.makedirs(f["not_ref"])
    f["model_dir"] = str(tmp / "has_model")  # a folder with a 'model' folder that is no reference
    os.makedirs(os.path.join(f["model_dir"], "model"))
    f["interrupted"] = str(tmp / "interrupted")  # an evaluation killed with its folds kept
    os.makedirs(os.path.join(f["interrupted"], "folds"))
    f["ref"] = str(tmp / "ref")
    _train_reference(f["good"], f["ref"])
    f["cluster_model"] = str(tmp / "cluster_model")
    _train_cluster_model(f["h5ad"], f["cluster_model"])
    # shared folders someone changed; a pickle that, were it ever loaded, would leave a file in tmp
    f["old_ref"] = str(shutil.copytree(f["ref"], tmp / "old_ref"))
    with open(os.path.join(f["old_ref"], "svms.joblib"), "wb") as fh:
        fh.write(crafted_pickle(tmp / "unpickled"))
    f["altered_ref"] = str(shutil.copytree(f["ref"], tmp / "altered_ref"))
    flip_byte(os.path.join(f["altered_ref"], "svms.npz"))
    f["altered_model"] = str(shutil.copytree(f["cluster_model"], tmp / "altered_model"))
    flip_byte(largest_file(os.path.join(f["altered_model"], "model")))
    f["truncated_pretrain"] = str(shutil.copytree(f["cluster_model"], tmp / "truncated_pretrain"))
    os.remove(largest_file(os.path.join(f["truncated_pretrain"], "pretrain")))
    return f


def _train_cluster_model(data_file: str, save_dir: str) -> None:
    from scdc_jax.cluster import ClusterConfig, run
    from scdc_jax.io import read_counts

    cfg = ClusterConfig(n_clusters=2, pretrain_epochs=2, maxiter=1, batch_size=32, encoder=[8], decoder=[8],
                        latent=4, kmeans_n_init=1)
    run(read_counts(data_file), cfg, save_dir=save_dir, progress=False)


def _train_reference(data_file: str, out: str) -> None:
    from scdc_jax.gsrcl.annotate import train_reference
    from scdc_jax.gsrcl.config import load_config
    from scdc_jax.io import read_counts

    train_reference(read_counts(data_file), load_config(None, **GSRCL_TINY), out, log=lambda m: None)


# name: (command, arguments with {input} placeholders, words the error must hold)
CASES = {
    # scDeepCluster
    "cluster missing file": ("cluster", ["--data-file", "{nope}"], "does not exist"),
    "cluster random bytes": ("cluster", ["--data-file", "{random}"], "not an HDF5"),
    "cluster truncated hdf5": ("cluster", ["--data-file", "{trunc}"], "truncated"),
    "cluster no X": ("cluster", ["--data-file", "{x_empty}"], None),
    "cluster hdf5 without X": ("cluster", ["--data-file", "{no_x}"], "no dataset 'X'"),
    "cluster X not 2-D": ("cluster", ["--data-file", "{x1}"], "2-D"),
    "cluster negative": ("cluster", ["--data-file", "{neg}"], "negative"),
    "cluster non-integer": ("cluster", ["--data-file", "{frac}"],
                            "non-integer values but raw counts are required; pass raw (unnormalised) counts, e.g. "
                            "--layer counts or --layer raw"),
    "cluster nan": ("cluster", ["--data-file", "{nan}"], "NaN"),
    "cluster labels length": ("cluster", ["--data-file", "{y59}"], "59 entries"),
    "cluster B not one-hot": ("cluster", ["--data-file", "{b_bad}"], "not one-hot"),
    "cluster B length": ("cluster", ["--data-file", "{b_len}"], "50 entries"),
    "cluster all zero": ("cluster", ["--data-file", "{zero}"], "all zeros"),
    "cluster more clusters than cells": ("cluster", ["--data-file", "{good}", "--n-clusters", "100"],
                                         "more than the number of cells"),
    "cluster select genes > genes": ("cluster", ["--data-file", "{good}", "--select-genes", "500"],
                                     "larger than the number of genes"),
    "cluster batch size 0": ("cluster", ["--data-file", "{good}", "--batch-size", "0"], "--batch-size must be positive"),
    "cluster epochs negative": ("cluster", ["--data-file", "{good}", "--pretrain-epochs", "-1"],
                                "--pretrain-epochs must be positive"),
    "cluster sigma 0": ("cluster", ["--data-file", "{good}", "--sigma", "0"], "--sigma must be positive"),
    "cluster tol 0": ("cluster", ["--data-file", "{good}", "--tol", "0"], "--tol must be positive"),
    "cluster devices": ("cluster", ["--data-file", "{good}", "--devices", "64"], "--devices 64"),
    "cluster stream csv": ("cluster", ["--data-file", "{csv}", "--stream"], "reads .h5ad files"),
    "cluster stream with out": ("cluster", ["--data-file", "{good}", "--stream", "--out", "o.h5ad"],
                                "need the cells in memory"),
    "cluster coordinator alone": ("cluster", ["--data-file", "{good}", "--coordinator", "localhost:1234"],
                                  "go together"),
    "cluster coordinator no port": ("cluster", ["--data-file", "{good}", "--coordinator", "localhost",
                                                "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    "cluster process id out of range": ("cluster", ["--data-file", "{good}", "--coordinator", "localhost:1234",
                                                    "--num-processes", "2", "--process-id", "2"],
                                        "--process-id 2 must be between 0 and 1"),
    "evaluate coordinator alone": ("evaluate", ["--data-file", "{good}", "--coordinator", "localhost:1234"],
                                   "go together"),
    "train-reference process id out of range": ("train-reference", ["--data-file", "{good}", "--coordinator",
                                                "localhost:1234", "--num-processes", "2", "--process-id", "-1"],
                                                "--process-id -1 must be between 0 and 1"),
    "cluster unwritable save dir": ("cluster", ["--data-file", "{good}", "--save-dir", "{good}/sub"],
                                    "cannot be created"),
    "cluster save dir holding another run": ("cluster", ["--data-file", "{good}", "--save-dir", "{cluster_model}"],
                                             "cluster_model already holds a scdc_jax run; give --overwrite to replace "
                                             "it, --resume to continue it, or choose another --save-dir."),
    "cluster overwrite and resume": ("cluster", ["--data-file", "{good}", "--overwrite", "--resume"],
                                     "give one of them"),
    "cluster loom": ("cluster", ["--data-file", "{loom}"], "is a .loom file, which scdc_jax does not read; convert "
                     "it once to .h5ad"),
    "cluster 10x folder without barcodes": ("cluster", ["--data-file", "{mex_no_barcodes}"],
                                            "has no barcodes.tsv; it needs matrix.mtx, features.tsv"),
    "evaluate 10x folder with --label-key": ("evaluate", ["--data-file", "{mex_no_barcodes}/matrix.mtx",
                                                          "--label-key", "celltype"],
                                             "holds no cell annotations for --label-key"),
    "cluster bad config": ("cluster", ["--data-file", "{good}", "--config", "{dir}/nope.toml"], "does not exist"),
    "cluster config value of the wrong type": ("cluster", ["--data-file", "{good}", "--config", "{wrong_type_toml}"],
                                               "wrong_type.toml: pretrain_epochs must be an integer, got 'twenty'."),
    "cluster layer on h5": ("cluster", ["--data-file", "{good}", "--layer", "counts"], "--layer applies to .h5ad"),
    "cluster missing label dataset": ("cluster", ["--data-file", "{good}", "--label-key", "celltype"],
                                      "no dataset 'celltype'"),
    "cluster infinite": ("cluster", ["--data-file", "{inf}"], "infinite"),
    "cluster labels csv for an h5ad": ("cluster", ["--data-file", "{h5ad}", "--labels-csv", "{short_csv}"],
                                       "applies to CSV and 10x Genomics data only"),
    "cluster labels csv streamed": ("cluster", ["--data-file", "{csv}", "--labels-csv", "{short_csv}", "--stream"],
                                    "which are read whole; --stream reads"),
    "cluster labels csv length": ("cluster", ["--data-file", "{csv}", "--labels-csv", "{short_csv}"],
                                  "59 entries but X has 60 cells"),
    "cluster tol above 1": ("cluster", ["--tol", "2"], "must lie in (0, 1]; got 2.0"),
    "cluster h5ad labels with gaps": ("cluster", ["--data-file", "{gaps_h5ad}", "--label-key", "celltype"],
                                      "3 of 60 cells have no value for the labels 'celltype'"),
    "cluster h5ad batches with gaps": ("cluster", ["--data-file", "{gaps_h5ad}", "--batch-key", "plate"],
                                       "30 of 60 cells have no value for the batch 'plate'"),
    "cluster h5ad missing label key": ("cluster", ["--data-file", "{h5ad}", "--label-key", "cell_type"],
                                       "no .obs column 'cell_type'"),
    "cluster h5ad missing batch key": ("cluster", ["--data-file", "{h5ad}", "--batch-key", "plate"],
                                       "no .obs column 'plate'"),
    "cluster h5ad missing layer": ("cluster", ["--data-file", "{h5ad}", "--layer", "counts"], "no layer 'counts'"),
    "cluster truncated ae-weights": ("cluster", ["--data-file", "{h5ad}", "--ae-weights", "{truncated_pretrain}"],
                                     "is incomplete"),
    "predict duplicate genes": ("predict", ["--model", "{cluster_model}", "--data-file", "{dup_h5ad}"],
                                "duplicate gene names"),
    "predict missing genes": ("predict", ["--model", "{cluster_model}", "--data-file", "{half_h5ad}"],
                              "the query lacks 20 of the model's 40 genes"),
    "predict folder that is no model": ("predict", ["--model", "{not_ref}", "--data-file", "{h5ad}"],
                                        "holds no final scdc_jax model"),
    "predict negative counts": ("predict", ["--model", "{cluster_model}", "--data-file", "{neg}"], "negative"),
    "predict altered model": ("predict", ["--model", "{altered_model}", "--data-file", "{h5ad}"],
                              "was altered or damaged after it was saved"),
    "cluster flag not a number": ("cluster", ["--data-file", "{good}", "--n-clusters", "three"],
                                  "argument --n-clusters: invalid int value: 'three'"),
    "cluster unknown flag": ("cluster", ["--data-file", "{good}", "--clusters", "3"], "unrecognized arguments: --clusters"),
    "cluster abbreviated flag": ("cluster", ["--data-file", "{good}", "--n-cluster", "3"],
                                 "unrecognized arguments: --n-cluster 3"),
    # GsRCL evaluate: the data file
    "evaluate no data file": ("evaluate", [], "labelled data file"),
    "evaluate missing file": ("evaluate", ["--data-file", "{nope}"], "does not exist"),
    "evaluate random bytes": ("evaluate", ["--data-file", "{random}"], "not an HDF5"),
    "evaluate random bytes, no extension": ("evaluate", ["--data-file", "{random_bin}"], "neither HDF5, .h5ad nor CSV"),
    "evaluate truncated hdf5": ("evaluate", ["--data-file", "{trunc}"], "truncated"),
    "evaluate hdf5 without X": ("evaluate", ["--data-file", "{no_x}"], "no dataset 'X'"),
    "evaluate X not 2-D": ("evaluate", ["--data-file", "{x1}"], "2-D"),
    "evaluate negative": ("evaluate", ["--data-file", "{neg}"], "negative"),
    "evaluate nan": ("evaluate", ["--data-file", "{nan}"], "NaN"),
    "evaluate infinite": ("evaluate", ["--data-file", "{inf}"], "infinite"),
    "evaluate all zero": ("evaluate", ["--data-file", "{zero}"], "all zeros"),
    "evaluate labels length": ("evaluate", ["--data-file", "{y59}"], "59 entries"),
    "evaluate nan labels": ("evaluate", ["--data-file", "{y_nan}"], "labels 'Y' contain NaN"),
    "evaluate h5ad without --label-key": ("evaluate", ["--data-file", "{h5ad}"], "needs cell-type labels"),
    "evaluate h5ad missing label key": ("evaluate", ["--data-file", "{h5ad}", "--label-key", "cell_type"],
                                        "no .obs column 'cell_type'"),
    "evaluate h5ad missing layer": ("evaluate", ["--data-file", "{h5ad}", "--label-key", "celltype", "--layer",
                                                 "counts"], "no layer 'counts'"),
    "evaluate layer on h5": ("evaluate", ["--data-file", "{good}", "--layer", "counts"], "--layer applies to .h5ad"),
    "evaluate csv non-numeric": ("evaluate", ["--data-file", "{text_csv}"], "non-numeric"),
    "evaluate csv without labels": ("evaluate", ["--data-file", "{csv}"], "needs cell-type labels"),
    "evaluate labels csv ids": ("evaluate", ["--data-file", "{csv}", "--labels-csv", "{ids_csv}"],
                                "do not match the cell ids"),
    "evaluate labels csv with a gap": ("evaluate", ["--data-file", "{csv}", "--labels-csv", "{gaps_csv}"],
                                       "1 of 60 cells have no value"),
    "train-reference h5ad labels with gaps": ("train-reference", ["--data-file", "{gaps_h5ad}", "--label-key",
                                                                  "celltype"], "3 of 60 cells have no value"),
    "evaluate labels csv length": ("evaluate", ["--data-file", "{csv}", "--labels-csv", "{short_csv}"],
                                   "59 entries but X has 60 cells"),
    "evaluate csv orientation unclear": ("evaluate", ["--data-file", "{tall_csv}"],
                                         "may hold genes as rows and cells as columns (it has 400 rows and 40 columns, "
                                         "and neither the row names nor the header tell cells from genes); give "
                                         "--transpose if its rows are genes or --no-transpose if they are cells."),
    "cluster transpose of an h5": ("cluster", ["--data-file", "{good}", "--genes-as-rows"],
                                   "--transpose applies to CSV data files only"),
    "evaluate labels csv for h5": ("evaluate", ["--data-file", "{good}", "--labels-csv", "{short_csv}"],
                                   "--labels-csv applies to CSV"),
    "evaluate labels csv missing": ("evaluate", ["--data-file", "{csv}", "--labels-csv", "{dir}/nope.csv"],
                                    "could not be read"),
    # GsRCL evaluate: the cell types
    "evaluate unknown cell type": ("evaluate", ["--data-file", "{good}", "--cell-type", "9"], "'9' are not among"),
    "evaluate no type large enough": ("evaluate", ["--data-file", "{rare}"], "no cell type has enough cells"),
    "evaluate chosen type too small": ("evaluate", ["--data-file", "{rare3}", "--cell-type", "rare"],
                                       "no chosen cell type has enough cells"),
    "evaluate one cell type": ("evaluate", ["--data-file", "{one_type}"], "single cell type"),
    # GsRCL evaluate: settings and outputs
    "evaluate batch size 0": ("evaluate", ["--data-file", "{good}", "--batch-size", "0"], "--batch-size must be positive"),
    "evaluate epochs 0": ("evaluate", ["--data-file", "{good}", "--epochs", "0"], "--epochs must be positive"),
    "evaluate epochs negative": ("evaluate", ["--data-file", "{good}", "--epochs", "-2"], "--epochs must be positive"),
    "evaluate eval-every 0": ("evaluate", ["--data-file", "{good}", "--eval-every", "0"], "--eval-every must be positive"),
    "evaluate noise-std 0": ("evaluate", ["--data-file", "{good}", "--noise-std", "0"], "--noise-std must be positive"),
    "evaluate lr 0": ("evaluate", ["--data-file", "{good}", "--lr", "0"], "--lr must be positive"),
    "evaluate lr negative": ("evaluate", ["--data-file", "{good}", "--lr", "-0.5"], "--lr must be positive"),
    "evaluate dropout 1": ("evaluate", ["--data-file", "{good}", "--augment", "dropout", "--dropout", "1"],
                           "--dropout must lie"),
    "evaluate flag not a number": ("evaluate", ["--data-file", "{good}", "--epochs", "abc"],
                                   "argument --epochs: invalid int value: 'abc'"),
    "evaluate abbreviated flag": ("evaluate", ["--data-file", "{good}", "--cell-typ", "1"],
                                  "unrecognized arguments: --cell-typ 1"),
    "train-reference without --out": ("train-reference-bare", ["--data-file", "{good}"],
                                      "the following arguments are required: --out"),
    "evaluate devices": ("evaluate", ["--data-file", "{good}", "--devices", "64"], "--devices 64"),
    "evaluate missing config": ("evaluate", ["--data-file", "{good}", "--config", "{dir}/nope.toml"], "does not exist"),
    "evaluate config unknown setting": ("evaluate", ["--data-file", "{good}", "--config", "{unknown_toml}"],
                                        "unknown setting(s): epochz"),
    "evaluate unwritable out-dir": ("evaluate", ["--data-file", "{good}", "--out-dir", "{good}/sub"],
                                    "cannot be created"),
    "evaluate out-dir is a file": ("evaluate", ["--data-file", "{good}", "--out-dir", "{good}"],
                                   "exists and is not a folder"),
    # GsRCL train-reference
    "train-reference missing file": ("train-reference", ["--data-file", "{nope}"], "does not exist"),
    "train-reference nan": ("train-reference", ["--data-file", "{nan}"], "NaN"),
    "train-reference no gene names": ("train-reference", ["--data-file", "{no_genes}"], "needs gene names"),
    "train-reference no type large enough": ("train-reference", ["--data-file", "{one_type}"],
                                             "no cell type has enough cells to train a classifier"),
    "train-reference eval-every 0": ("train-reference", ["--data-file", "{good}", "--eval-every", "0"],
                                     "--eval-every must be positive"),
    "train-reference devices": ("train-reference", ["--data-file", "{good}", "--devices", "64"], "--devices 64"),
    "train-reference unwritable out": ("train-reference", ["--data-file", "{good}", "--out", "{good}/sub"],
                                       "cannot be created"),
    "train-reference out is a file": ("train-reference", ["--data-file", "{good}", "--out", "{good}"],
                                      "exists and is not a folder"),
    "train-reference out holds a foreign model": ("train-reference", ["--data-file", "{good}", "--out",
                                                                      "{model_dir}"], "not a GsRCL reference"),
    "train-reference out holds a reference": ("train-reference", ["--data-file", "{good}", "--out", "{ref}"],
                                              "already holds a GsRCL reference"),
    "train-reference resume and overwrite": ("train-reference", ["--data-file", "{good}", "--resume",
                                                                 "--overwrite"], "give one of them"),
    "evaluate out-dir holds an interrupted run": ("evaluate", ["--data-file", "{good}", "--out-dir",
                                                               "{interrupted}"], "already holds a GsRCL evaluation"),
    # GsRCL annotate
    "annotate no data file": ("annotate", ["--reference", "{ref}"], "a query data file is needed"),
    "annotate missing query": ("annotate", ["--reference", "{ref}", "--data-file", "{nope}"], "does not exist"),
    "annotate nan query": ("annotate", ["--reference", "{ref}", "--data-file", "{nan}"], "NaN"),
    "annotate all-zero query": ("annotate", ["--reference", "{ref}", "--data-file", "{zero}"], "all zeros"),
    "annotate query without gene names": ("annotate", ["--reference", "{ref}", "--data-file", "{no_genes}"],
                                          "no gene names"),
    "annotate duplicate genes h5ad": ("annotate", ["--reference", "{ref}", "--data-file", "{dup_h5ad}"],
                                      "duplicate gene names (g0)"),
    "annotate duplicate genes csv": ("annotate", ["--reference", "{ref}", "--data-file", "{dup_csv}"],
                                     "duplicate gene names (g0)"),
    "annotate half the genes": ("annotate", ["--reference", "{ref}", "--data-file", "{half_h5ad}"],
                                "only 20 of the reference's 40 genes are in the query"),
    "annotate missing layer": ("annotate", ["--reference", "{ref}", "--data-file", "{h5ad}", "--layer", "counts"],
                               "no layer 'counts'"),
    "annotate missing reference": ("annotate", ["--reference", "{dir}/nothing", "--data-file", "{h5ad}"],
                                   "not a GsRCL reference folder"),
    "annotate folder that is no reference": ("annotate", ["--reference", "{not_ref}", "--data-file", "{h5ad}"],
                                             "not a GsRCL reference folder"),
    "annotate old reference with svms.joblib": ("annotate", ["--reference", "{old_ref}", "--data-file", "{h5ad}"],
                                                ("re-create it from its data with 'python -m scdc_jax.gsrcl "
                                                 "train-reference'")),
    "annotate altered reference": ("annotate", ["--reference", "{altered_ref}", "--data-file", "{h5ad}"],
                                   "was altered or damaged after it was saved"),
    "annotate cutoff 1": ("annotate", ["--reference", "{ref}", "--data-file", "{h5ad}", "--cutoff", "1"],
                          "--cutoff must lie in [0, 1)"),
    "annotate cutoff negative": ("annotate", ["--reference", "{ref}", "--data-file", "{h5ad}", "--cutoff", "-0.1"],
                                 "--cutoff must lie in [0, 1)"),
    "annotate unwritable out": ("annotate", ["--reference", "{ref}", "--data-file", "{h5ad}", "--out",
                                             "{good}/calls.csv"], "exists and is not a folder"),
    "annotate out is a folder": ("annotate", ["--reference", "{ref}", "--data-file", "{h5ad}", "--out", "{not_ref}"],
                                 "is a folder"),
    "annotate unwritable plot": ("annotate", ["--reference", "{ref}", "--data-file", "{h5ad}", "--plot",
                                              "{good}/calls.png"], "exists and is not a folder"),
}
if os.path.isdir("/proc/self"):  # Linux: a file system that refuses new folders even to root
    CASES["cluster save dir on a read-only file system"] = (
        "cluster", ["--data-file", "{good}", "--save-dir", "/proc/scdc_out"], "cannot be written")
    CASES["evaluate out-dir on a read-only file system"] = (
        "evaluate", ["--data-file", "{good}", "--out-dir", "/proc/scdc_out"], "cannot be written")


def command(kind: str, args: list[str], f: dict[str, str]) -> list[str]:
    """The full command line of a case; outputs default to the current folder and a case's own
    flags come last, so they override."""
    args = [a.format(**f) for a in args]
    if kind == "predict":
        return ["-m", "scdc_jax.cluster", "predict", "--save-dir", "out", "--out", "calls.h5ad", *args]
    if kind == "cluster":
        return ["-m", "scdc_jax.cluster", *CLUSTER_TINY, "--save-dir", "out", *args]
    if kind == "annotate":
        return ["-m", "scdc_jax.gsrcl", "annotate", "--out", "calls.csv", "--plot", "calls.png", *args]
    if kind == "train-reference-bare":
        return ["-m", "scdc_jax.gsrcl", "train-reference", *args]
    out = ["--out-dir", "out"] if kind == "evaluate" else ["--out", "ref_out"]
    return ["-m", "scdc_jax.gsrcl", kind, "--config", f["tiny"], "--quiet", *out, *args]


# cases run as real subprocesses too: one per command, and those whose error comes from the interpreter's start
SUBPROCESS = {"cluster missing file", "cluster devices", "predict folder that is no model", "evaluate nan",
              "train-reference no gene names", "annotate folder that is no reference", "cluster abbreviated flag"}


def run_case(argv: list[str], cwd, capfd) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m MODULE ARGS`` given as ``["-m", MODULE, *ARGS]``, run
    in this process from ``cwd``."""
    code, _, err = run_module(argv, capfd, cwd)
    return code, err


def listing(folder: str) -> list[tuple[str, int, float]]:
    return sorted((os.path.join(d, n), os.path.getsize(os.path.join(d, n)), os.path.getmtime(os.path.join(d, n)))
                  for d, dirs, files in os.walk(folder) for n in files + dirs)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_sentence_exit_2_nothing_left(inputs, name, tmp_path, capfd):
    kind, args, expected = CASES[name]
    before = listing(inputs["dir"])
    argv = command(kind, args, inputs)
    if name in SUBPROCESS:
        out = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
        code, err = out.returncode, out.stderr
    else:
        code, err = run_case(argv, tmp_path, capfd)
    assert code == 2, (name, code, err[-2000:])
    err = err.strip()
    assert "Traceback" not in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    if expected:
        assert expected in err, err
    assert os.listdir(tmp_path) == [], f"{name}: left {os.listdir(tmp_path)} behind"
    assert listing(inputs["dir"]) == before, f"{name}: changed the input files"
