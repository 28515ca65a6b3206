"""The command line as a user meets it: a full small run, and bad input answered in one sentence.

Every bad-input case runs the real CLI in a subprocess and checks: exit code 2, one line on
stderr starting with 'error:', no traceback, and no output folder left behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import ROOT, synthetic_counts


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "scdc_jax.cluster", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
                          timeout=600)


def make_h5(path, X=None, **extra):
    if X is None:
        X, groups, _ = synthetic_counts(60, 40)
        extra.setdefault("Y", (groups + 1).astype(np.float64))
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)
        for k, v in extra.items():
            f.create_dataset(k, data=v)
    return str(path)


TINY = ["--pretrain-epochs", "3", "--maxiter", "3", "--batch-size", "32", "--quiet"]


def test_help_lists_reference_flags():
    out = cli("--help")
    assert out.returncode == 0
    for flag in ("--n-clusters", "--knn", "--resolution", "--select-genes", "--batch-size", "--data-file",
                 "--maxiter", "--pretrain-epochs", "--gamma", "--sigma", "--update-interval", "--tol",
                 "--ae-weights", "--save-dir", "--final-latent-file", "--predict-label-file", "--seed",
                 "--config", "--label-key", "--layer", "--out", "--resume"):
        assert flag in out.stdout


def test_small_run_writes_outputs(tmp_path):
    data = make_h5(tmp_path / "d.h5")
    out = cli("--data-file", data, "--n-clusters", "3", "--save-dir", tmp_path / "res", "--out",
              tmp_path / "res.h5ad", "--plot", tmp_path / "plots", *TINY)
    assert out.returncode == 0, out.stderr
    labels = np.loadtxt(tmp_path / "res" / "pred_labels.txt")
    latent = np.loadtxt(tmp_path / "res" / "final_latent_file.txt", delimiter=",")
    assert labels.shape == (60,) and set(np.unique(labels)) <= {0, 1, 2}
    assert latent.shape == (60, 32)
    run = json.loads((tmp_path / "res" / "run.json").read_text())
    assert run["seed"] == 0 and run["config"]["n_clusters"] == 3 and "jax" in run["versions"]
    assert "ARI" in out.stdout
    for png in ("umap.png", "losses.png", "scores.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import anndata

    ad = anndata.read_h5ad(tmp_path / "res.h5ad")
    assert ad.obsm["X_scdc"].shape == (60, 32) and "scdc_cluster" in ad.obs
    assert ad.uns["scdc"]["params"]["n_clusters"] == 3


def test_config_file_and_paper_config(tmp_path):
    data = make_h5(tmp_path / "d.h5")
    out = cli("--config", os.path.join(ROOT, "configs", "scdeepcluster_paper.toml"), "--data-file", data,
              "--n-clusters", "2", "--save-dir", tmp_path / "r", *TINY)
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert cfg["sigma"] == 2.5 and cfg["pretrain_epochs"] == 3 and cfg["n_clusters"] == 2


def bad_cases(tmp):
    X, groups, _ = synthetic_counts(60, 40)
    rnd = tmp / "random.h5"
    rnd.write_bytes(os.urandom(2048))
    good = make_h5(tmp / "good.h5")
    trunc = tmp / "trunc.h5"
    trunc.write_bytes(open(good, "rb").read()[:1500])
    neg = X.copy()
    neg[0, 0] = -1
    frac = X.astype(float)
    frac[0, 0] = 0.5
    nan = X.astype(float)
    nan[0, 0] = np.nan
    B_bad = np.zeros((60, 2))
    B_bad[:, 0] = 1
    B_bad[0, 1] = 1
    return {
        "missing file": (["--data-file", tmp / "nope.h5"], "does not exist"),
        "random bytes": (["--data-file", rnd], "not an HDF5"),
        "truncated hdf5": (["--data-file", trunc], "truncated"),
        "no X": (["--data-file", make_h5(tmp / "nox.h5", X=np.zeros(0), Y=groups)], None),
        "X not 2-D": (["--data-file", make_h5(tmp / "x1.h5", X=np.ones(5))], "2-D"),
        "negative": (["--data-file", make_h5(tmp / "neg.h5", X=neg)], "negative"),
        "non-integer": (["--data-file", make_h5(tmp / "frac.h5", X=frac)], "non-integer"),
        "nan": (["--data-file", make_h5(tmp / "nan.h5", X=nan)], "NaN"),
        "labels length": (["--data-file", make_h5(tmp / "y.h5", X=X, Y=np.ones(59))], "59 entries"),
        "B not one-hot": (["--data-file", make_h5(tmp / "b.h5", X=X, B=B_bad)], "not one-hot"),
        "B length": (["--data-file", make_h5(tmp / "bl.h5", X=X, B=np.eye(2)[np.zeros(50, int)])], "50 entries"),
        "all zero": (["--data-file", make_h5(tmp / "z.h5", X=np.zeros((10, 5)))], "all zeros"),
        "more clusters than cells": (["--data-file", good, "--n-clusters", "100"], "more than the number of cells"),
        "select genes > genes": (["--data-file", good, "--select-genes", "500"], "larger than the number of genes"),
        "batch size 0": (["--data-file", good, "--batch-size", "0"], "--batch-size must be positive"),
        "epochs negative": (["--data-file", good, "--pretrain-epochs", "-1"], "--pretrain-epochs must be positive"),
        "sigma 0": (["--data-file", good, "--sigma", "0"], "--sigma must be positive"),
        "tol 0": (["--data-file", good, "--tol", "0"], "--tol must be positive"),
        "devices": (["--data-file", good, "--devices", "64"], "--devices 64"),
        "unwritable save dir": (["--data-file", good, "--save-dir", good + "/sub"], "cannot be created"),
        "bad config": (["--data-file", good, "--config", tmp / "nope.toml"], "does not exist"),
        "layer on h5": (["--data-file", good, "--layer", "counts"], "--layer applies to .h5ad"),
        "missing label dataset": (["--data-file", good, "--label-key", "celltype"], "no dataset 'celltype'"),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, bad_cases(tmp)


@pytest.mark.parametrize("name", [
    "missing file", "random bytes", "truncated hdf5", "no X", "X not 2-D", "negative", "non-integer", "nan",
    "labels length", "B not one-hot", "B length", "all zero", "more clusters than cells", "select genes > genes",
    "batch size 0", "epochs negative", "sigma 0", "tol 0", "devices", "unwritable save dir", "bad config",
    "layer on h5", "missing label dataset"])
def test_bad_input_one_sentence_exit_2(cases, name):
    tmp, table = cases
    args, expected = table[name]
    save = tmp / f"out_{name.replace(' ', '_')}"
    out = cli(*TINY, *args) if "--save-dir" in args else cli(*TINY, "--save-dir", save, *args)
    assert out.returncode == 2, (name, out.returncode, out.stderr[-2000:])
    err = out.stderr.strip()
    assert "Traceback" not in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    if expected:
        assert expected in err, err
    assert not save.exists(), f"{name}: output folder left behind"
