"""The scDeepCluster command line as a user meets it: a full small run and a config file (bad
input: tests/test_bad_input.py).  The help and the full small run run as subprocesses, as a user
runs them; the other runs call the same ``main`` in this process (:func:`conftest.run_module`),
which spares each the import of jax, scanpy and the package."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
from conftest import ROOT, run_module, synthetic_counts


def cli(*args, cwd=None, env=None, umask=-1):
    return subprocess.run([sys.executable, "-m", "scdc_jax.cluster", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
                          timeout=600, umask=umask)


def cli_here(capfd, *args):
    """:func:`cli` in this process: the result has the same returncode, stdout and stderr."""
    code, out, err = run_module(["-m", "scdc_jax.cluster", *map(str, args)], capfd)
    return subprocess.CompletedProcess(args, code, out, err)


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


def modes(*paths) -> dict[str, int]:
    """Permission bits of ``paths`` and of everything below the folders among them."""
    found = {}
    for top in map(str, paths):
        found[top] = os.stat(top).st_mode & 0o777
        for d, dirs, files in os.walk(top):
            for name in dirs + files:
                found[os.path.join(d, name)] = os.stat(os.path.join(d, name)).st_mode & 0o777
    return found


def test_small_run_writes_outputs(tmp_path):
    data = make_h5(tmp_path / "d.h5")
    # under umask 027 every output is group-readable: the files 0640, the folders 0750
    out = cli("--data-file", data, "--n-clusters", "3", "--save-dir", tmp_path / "res", "--out",
              tmp_path / "res.h5ad", "--plot", tmp_path / "plots", *TINY, umask=0o027)
    assert out.returncode == 0, out.stderr
    written = modes(tmp_path / "res", tmp_path / "plots", tmp_path / "res.h5ad")
    assert len(written) > 10 and all(m == (0o750 if os.path.isdir(p) else 0o640) for p, m in written.items()), \
        {p: oct(m) for p, m in written.items()}
    labels = np.loadtxt(tmp_path / "res" / "pred_labels.txt")
    latent = np.loadtxt(tmp_path / "res" / "final_latent_file.txt", delimiter=",")
    assert labels.shape == (60,) and set(np.unique(labels)) <= {0, 1, 2}
    assert latent.shape == (60, 32)
    run = json.loads((tmp_path / "res" / "run.json").read_text())
    assert run["seed"] == 0 and run["config"]["n_clusters"] == 3 and "jax" in run["versions"]
    assert "ARI" in out.stdout
    for png in ("umap.png", "confusion.png", "losses.png", "scores.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import anndata

    ad = anndata.read_h5ad(tmp_path / "res.h5ad")
    assert ad.obsm["X_scdc"].shape == (60, 32) and "scdc_cluster" in ad.obs
    assert ad.uns["scdc"]["params"]["n_clusters"] == 3


def test_rerun_into_a_save_dir_is_refused_or_replaces_the_run_whole(tmp_path, capfd):
    """The quick start run twice: the second is refused at once (nothing touched); with --overwrite
    another data set replaces the run, and the folder holds that run's checkpoints only."""
    first, second = make_h5(tmp_path / "a.h5"), make_h5(tmp_path / "b.h5", synthetic_counts(50, 30, seed=1)[0])
    save = tmp_path / "res"
    args = ["--n-clusters", "2", "--save-dir", save, "--checkpoint-every", "2", *TINY]
    assert cli_here(capfd, "--data-file", first, *args).returncode == 0
    (save / "notes.txt").write_text("mine")  # not the run's: stays
    before = sorted((p, p.stat().st_mtime_ns) for p in save.rglob("*"))
    again = cli_here(capfd, "--data-file", first, *args)
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: {save} already holds a scdc_jax run; give --overwrite to replace it, --resume to continue it, "
        "or choose another --save-dir.")
    assert sorted((p, p.stat().st_mtime_ns) for p in save.rglob("*")) == before
    replaced = cli_here(capfd, "--data-file", second, *args[:-len(TINY)], "--pretrain-epochs", "4", *TINY[2:],
                        "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(os.listdir(save / "pretrain")) == ["2", "4", "manifest.json"]  # the first run's step 3 is gone
    assert json.loads((save / "run.json").read_text())["data"] == second
    from scdc_jax import checkpoint

    assert checkpoint.read_meta(str(save / "model"))["n_input_genes"] == 30
    assert (save / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["a.h5", "b.h5", "res"]  # no staging folder left


def test_out_writes_an_anndata_input_back_whole_with_the_results_added(tmp_path, capfd):
    """An .h5ad user's file: log-normalised .X, counts in a layer, their own obs/var/obsm/uns and
    a cell without counts; --out of the run and of predict hold all of it as it was, plus the
    results."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    counts, groups, _ = synthetic_counts(60, 40)
    counts[5] = 0  # removed before training: no cluster
    logn = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    ad = anndata.AnnData(X=sp.csr_matrix(logn), layers={"counts": counts.astype(np.float32)},
                         obs=pd.DataFrame({"cell_type": pd.Categorical([f"t{g}" for g in groups]),
                                           "donor": ["d1", "d2"] * 30}, index=[f"c{i}" for i in range(60)]),
                         var=pd.DataFrame({"symbol": [f"S{j}" for j in range(40)]}, index=[f"g{j}" for j in range(40)]))
    ad.obsm["X_umap"] = np.arange(120, dtype=np.float32).reshape(60, 2)
    ad.uns["mine"] = {"note": "kept"}
    ad.write_h5ad(tmp_path / "in.h5ad")
    out = cli_here(capfd, "--data-file", tmp_path / "in.h5ad", "--layer", "counts", "--label-key", "cell_type",
                   "--n-clusters", "3", "--save-dir", tmp_path / "r", "--out", tmp_path / "out.h5ad", *TINY)
    assert out.returncode == 0, out.stderr
    res = anndata.read_h5ad(tmp_path / "out.h5ad")
    assert sp.issparse(res.X) and np.allclose(res.X.toarray(), logn)  # the user's .X, not the counts
    np.testing.assert_array_equal(res.layers["counts"], counts)
    assert list(res.obs_names) == list(ad.obs_names) and list(res.var["symbol"]) == list(ad.var["symbol"])
    assert list(res.obs["cell_type"]) == list(ad.obs["cell_type"]) and list(res.obs["donor"]) == list(ad.obs["donor"])
    np.testing.assert_array_equal(res.obsm["X_umap"], ad.obsm["X_umap"])
    assert res.uns["mine"]["note"] == "kept" and res.uns["scdc"]["params"]["n_clusters"] == 3
    assert "label" not in res.obs  # no second copy of the labels
    clusters = res.obs["scdc_cluster"]
    assert pd.isna(clusters.iloc[5]) and clusters.drop(index="c5").notna().all()
    assert np.isnan(res.obsm["X_scdc"][5]).all() and np.isfinite(np.delete(res.obsm["X_scdc"], 5, axis=0)).all()
    labels = np.loadtxt(tmp_path / "r" / "pred_labels.txt")
    assert labels[5] == -1 and (clusters.drop(index="c5").astype(int).to_numpy() == np.delete(labels, 5)).all()
    # predict --out on the same file: written back whole too, the training cells in their clusters
    pred = cli_here(capfd, "predict", "--model", tmp_path / "r", "--data-file", tmp_path / "in.h5ad", "--layer",
                    "counts", "--save-dir", tmp_path / "p", "--out", tmp_path / "pred.h5ad")
    assert pred.returncode == 0, pred.stderr
    back = anndata.read_h5ad(tmp_path / "pred.h5ad")
    assert sp.issparse(back.X) and list(back.obs["donor"]) == list(ad.obs["donor"]) and "X_umap" in back.obsm
    np.testing.assert_array_equal(back.layers["counts"], counts)
    assert back.obs["scdc_cluster"].astype(str).tolist() == clusters.astype(str).tolist()
    refused = cli_here(capfd, "predict", "--model", tmp_path / "r", "--data-file", tmp_path / "in.h5ad",
                       "--out", tmp_path / "pred.csv")
    assert refused.returncode == 2 and refused.stderr.strip() == f"error: --out {tmp_path / 'pred.csv'} must end in .h5ad."


def test_config_file_and_paper_config(tmp_path, capfd):
    """The paper config holds the defaults, so a run of it could not tell whether the file was read:
    the run takes a copy of it with two values changed (flags still override the file)."""
    from scdc_jax.cluster.config import ClusterConfig, load_config

    paper = os.path.join(ROOT, "configs", "scdeepcluster_paper.toml")
    assert load_config(paper).to_dict() == ClusterConfig().to_dict()
    text = open(paper).read()
    assert "\nsigma = 2.5\n" in text and "\nknn = 20\n" in text
    changed = tmp_path / "changed.toml"
    changed.write_text(text.replace("\nsigma = 2.5\n", "\nsigma = 1.5\n").replace("\nknn = 20\n", "\nknn = 7\n"))
    data = make_h5(tmp_path / "d.h5")
    out = cli_here(capfd, "--config", changed, "--data-file", data, "--n-clusters", "2", "--save-dir",
                   tmp_path / "r", *TINY)
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert cfg["sigma"] == 1.5 and cfg["knn"] == 7  # from the file
    assert cfg["pretrain_epochs"] == 3 and cfg["n_clusters"] == 2  # the flags over the file's 300 and 0


def test_system_refusal_mid_run_is_one_sentence(capsys):
    import pytest

    from scdc_jax.errors import run_cli

    def full_disk(argv):
        raise OSError(28, "No space left on device", "out/final_latent_file.txt")

    with pytest.raises(SystemExit) as exc:
        run_cli(full_disk, [])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: the system refused an operation: No space left on device (out/final_latent_file.txt)."


def test_labels_csv_scores_a_csv_run_and_its_predict(tmp_path, capfd):
    """A CSV of counts with its annotation in a second CSV (cell id, label): the run is scored
    against those labels, and so is ``predict`` on the same file."""
    import pandas as pd

    from scdc_jax.metrics import clustering_scores

    X, groups, _ = synthetic_counts(60, 30, n_groups=3, seed=2)
    cells = [f"cell{i}" for i in range(60)]
    pd.DataFrame(X, index=cells, columns=[f"g{j}" for j in range(30)]).to_csv(tmp_path / "counts.csv")
    order = np.random.default_rng(0).permutation(60)  # rows in another order than the counts: matched by id
    pd.DataFrame({"cell": np.array(cells)[order], "type": np.array(["a", "b", "c"])[groups[order]]}).to_csv(
        tmp_path / "labels.csv", index=False)
    common = ["--data-file", str(tmp_path / "counts.csv"), "--labels-csv", str(tmp_path / "labels.csv")]
    r = cli_here(capfd, *common, "--n-clusters", "3", "--save-dir", str(tmp_path / "res"), *TINY)
    assert r.returncode == 0, r.stderr
    pred = np.loadtxt(tmp_path / "res" / "pred_labels.txt").astype(int)
    scores = json.loads((tmp_path / "res" / "run.json").read_text())["scores"]
    assert scores["ari"] == clustering_scores(groups, pred)["ari"] and f"ARI {scores['ari']:.4f}" in r.stdout
    r = cli_here(capfd, "predict", "--model", str(tmp_path / "res"), *common, "--save-dir", str(tmp_path / "pred"))
    assert r.returncode == 0, r.stderr
    again = np.loadtxt(tmp_path / "pred" / "pred_labels.txt").astype(int)
    assert f"against the known labels: ARI {clustering_scores(groups, again)['ari']:.4f}" in r.stdout
    record = json.loads((tmp_path / "pred" / "predict.json").read_text())  # what made the files beside it
    assert record["scores"] == clustering_scores(groups, again) and record["n_assigned"] == 60
    assert record["config"]["model"] == str(tmp_path / "res") and record["command"].startswith("python -m scdc_jax")
    # a query lacking two of the model's genes: refused, naming the flag that counts them as zero
    from scdc_jax.cluster import predict
    from scdc_jax.io import read_counts

    pd.read_csv(tmp_path / "counts.csv", index_col=0).drop(columns=["g4", "g9"]).to_csv(tmp_path / "fewer.csv")
    fewer = ["predict", "--model", str(tmp_path / "res"), "--data-file", str(tmp_path / "fewer.csv"), "--save-dir",
             str(tmp_path / "fewer")]
    r = cli_here(capfd, *fewer)
    assert r.returncode == 2 and "lacks 2 of the model's 30 genes (e.g. 'g4')" in r.stderr
    assert "give --fill-missing-genes to count them as zero." in r.stderr and not (tmp_path / "fewer").exists()
    r = cli_here(capfd, *fewer, "--fill-missing-genes")
    assert r.returncode == 0, r.stderr
    assert "2 of the model's 30 genes are not in the query and were counted as zero" in r.stdout
    record = json.loads((tmp_path / "fewer" / "predict.json").read_text())
    assert (record["genes_missing"], record["n_genes"], record["config"]["fill_missing_genes"]) == (2, 30, True)
    zeroed = read_counts(str(tmp_path / "counts.csv"))
    zeroed.X[:, [4, 9]] = 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "fewer" / "pred_labels.txt").astype(int),
                                  predict(str(tmp_path / "res"), zeroed)["labels"])
