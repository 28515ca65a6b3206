"""GsRCL annotation: gene alignment, calls with a cutoff, and a reference -> query round trip."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_counts
from test_gsrcl import cli_error, run_cli, write_h5

from scdc_jax.errors import InputError
from scdc_jax.errors import run_cli as wrap
from scdc_jax.gsrcl.__main__ import main
from scdc_jax.gsrcl.annotate import UNASSIGNED, align_genes, annotate, call_types, train_reference
from scdc_jax.gsrcl.config import load_config
from scdc_jax.io import CountData


def test_align_genes_reorders_zero_fills_and_drops():
    X = np.array([[1, 2, 3], [4, 5, 6]])
    out = align_genes(X, ["b", "a", "extra"], ["a", "b", "c"])
    np.testing.assert_array_equal(out, [[2, 1, 0], [5, 4, 0]])
    assert out.dtype == np.float32


def test_align_genes_refuses_duplicates_and_poor_overlap():
    with pytest.raises(InputError, match="duplicate"):
        align_genes(np.ones((1, 3)), ["a", "a", "b"], ["a", "b"])
    with pytest.raises(InputError, match="duplicate"):
        align_genes(np.ones((1, 2)), ["a", "b"], ["a", "a", "b"])
    with pytest.raises(InputError, match="more than half"):  # exactly half matching is refused
        align_genes(np.ones((1, 4)), ["a", "b", "x", "y"], ["a", "b", "c"])
    align_genes(np.ones((1, 3)), ["a", "b", "x"], ["a", "b", "c"])


def test_calls_normalise_and_respect_the_cutoff():
    raw = np.array([[0.9, 0.1, 0.0], [0.4, 0.4, 0.2], [0.3, 0.6, 0.1], [0.0, 0.0, 0.0]])
    probs, calls = call_types(raw, ["a", "b", "c"], cutoff=0.5)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert list(calls) == ["a", UNASSIGNED, "b", UNASSIGNED]
    _, calls = call_types(np.array([[0.5, 0.5, 0.0]]), ["a", "b", "c"], cutoff=0.5)
    assert list(calls) == [UNASSIGNED]  # at the cutoff is Unassigned


def _split_data():
    """Reference (90 cells) and query (60 cells) of the same three gene programmes."""
    counts, y, _ = synthetic_counts(150, 100, n_groups=3, seed=0)
    genes = np.array([f"g{i}" for i in range(100)])

    def part(rows):
        return CountData(X=counts[rows], labels=y[rows], label_names=["alpha", "beta", "delta"], gene_names=genes,
                         cell_names=np.array([f"c{i}" for i in range(150)])[rows], source="synthetic")

    return part(slice(0, 90)), part(slice(90, 150))


def test_reference_round_trip(tmp_path):
    cfg = load_config(None, encoder=[64, 32], head=[16, 8], epochs=60, eval_every=60, lr=1e-3, svm_cv=3,
                      svm_gamma=["scale"], svm_c=[1.0, 10.0])
    ref, query = _split_data()
    meta = train_reference(ref, cfg, str(tmp_path / "ref"), log=lambda m: None)
    assert meta["cell_types"] == ["alpha", "beta", "delta"]
    truth = np.array(query.label_names)[query.labels]
    perm = np.random.default_rng(0).permutation(100)[:95]  # reordered, 5 genes missing
    query = query.subset(genes=perm)
    df, h = annotate(str(tmp_path / "ref"), query, cutoff=0.5)
    np.testing.assert_allclose(df[["alpha", "beta", "delta"]].sum(1), 1.0, rtol=1e-6)
    assert list(df.index) == list(query.cell_names) and h.shape == (60, 32)
    assert (df["call"].to_numpy() == truth).mean() > 0.8
    df99, _ = annotate(str(tmp_path / "ref"), query, cutoff=0.99)
    assert (df99["call"] == UNASSIGNED).sum() > (df["call"] == UNASSIGNED).sum()
    assert (df99["call"].to_numpy() == np.where(df.max(1, numeric_only=True) > 0.99, df["call"], UNASSIGNED)).all()
    train_reference(ref, cfg, str(tmp_path / "ref"), log=lambda m: None)  # retraining replaces it


def test_cli_train_reference_and_annotate_record_their_provenance(tmp_path, capsys):
    import json

    import anndata

    counts, y, _ = synthetic_counts(60, 30, n_groups=2, seed=5)
    ref = write_h5(tmp_path / "ref.h5", counts, y, ["T", "B"])
    toml = tmp_path / "t.toml"
    toml.write_text("[gsrcl]\nencoder = [16, 8]\nhead = [8, 4]\nepochs = 10\neval_every = 10\nsvm_cv = 2\n"
                    "svm_gamma = ['scale']\nsvm_c = [1.0]\nlr = 1e-3\n")
    r = run_cli(["train-reference", "--data-file", ref, "--out", str(tmp_path / "model"), "--config", str(toml),
                 "--seed", "7"])
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "model" / "reference.json").read_text())
    assert meta["seed"] == 7 and meta["config"]["seed"] == 7 and meta["config"]["encoder"] == [16, 8]
    assert meta["n_devices"] == 1 and {"jax", "flax", "scikit-learn"} <= set(meta["versions"])
    assert "--seed 7" in meta["command"] and not (tmp_path / "model" / ".partial").exists()
    adata = anndata.AnnData(X=counts[:20].astype(np.float32))
    adata.var_names = [f"g{i}" for i in range(30)]
    adata.obs_names = [f"q{i}" for i in range(20)]
    adata.write_h5ad(tmp_path / "q.h5ad")
    r = run_cli(["annotate", "--reference", str(tmp_path / "model"), "--data-file", str(tmp_path / "q.h5ad"),
                 "--out", str(tmp_path / "out.h5ad"), "--plot", str(tmp_path / "calls.png"), "--cutoff", "0.6"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = anndata.read_h5ad(tmp_path / "out.h5ad")
    assert "gsrcl_call" in out.obs and {"gsrcl_prob_T", "gsrcl_prob_B"} <= set(out.obs)
    prov = out.uns["gsrcl"]
    assert prov["seed"] == 7 and prov["config"]["cutoff"] == 0.6 and prov["config"]["reference_config"]["seed"] == 7
    assert prov["n_devices"] == 1 and "jax" in prov["versions"] and prov["n_cells"] == 20
    assert os.path.getsize(tmp_path / "calls.png") > 1000
    with pytest.raises(SystemExit) as exc:
        wrap(main, ["annotate", "--reference", str(tmp_path / "model"), "--data-file", str(tmp_path / "q.h5ad"),
                    "--out", str(tmp_path / "calls.csv")])
    assert exc.value.code == 0
    df = pd.read_csv(tmp_path / "calls.csv", index_col=0)
    assert list(df.columns) == ["T", "B", "call"] and len(df) == 20 and df.index[0] == "q0"
    side = json.loads((tmp_path / "calls.json").read_text())
    assert side["seed"] == 7 and side["config"]["cutoff"] == 0.5 and side["cell_types"] == ["T", "B"]
    assert side["n_devices"] == 1 and "numpy" in side["versions"] and side["data"].endswith("q.h5ad")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    err = cli_error(["annotate", "--reference", str(tmp_path / "nothing"), "--data-file", str(tmp_path / "q.h5ad")],
                    capsys)
    assert "not a GsRCL reference" in err


def test_sigkill_during_train_reference_then_resume_gives_the_same_reference(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    from scdc_jax import checkpoint

    counts, y, _ = synthetic_counts(60, 30, n_groups=2, seed=5)
    data = write_h5(tmp_path / "ref.h5", counts, y, ["T", "B"])
    toml = tmp_path / "t.toml"
    toml.write_text("[gsrcl]\nencoder = [16, 8]\nhead = [8, 4]\nepochs = 400\neval_every = 20\nsvm_cv = 2\n"
                    "svm_gamma = ['scale']\nsvm_c = [1.0]\nlr = 1e-3\n")
    common = ["train-reference", "--data-file", data, "--config", str(toml)]
    r = run_cli([*common, "--out", str(tmp_path / "ref")])
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed"
    ckpt = out / ".partial" / "encoder"
    proc = subprocess.Popen([sys.executable, "-m", "scdc_jax.gsrcl", *common, "--out", str(out)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not [p for p in ckpt.glob("*") if p.name.isdigit() and int(p.name) < 400]:
        assert proc.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 20 <= checkpoint.latest_step(str(ckpt)) < 400 and not (out / "reference.json").exists()
    changed = run_cli([*common, "--out", str(out), "--resume", "--lr", "0.01"])
    assert changed.returncode == 2 and "different configuration" in changed.stderr
    r = run_cli([*common, "--out", str(out), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "from its checkpoint at epoch" in r.stdout and not (out / ".partial").exists()
    metas = [json.loads((d / "reference.json").read_text()) for d in (tmp_path / "ref", out)]
    assert metas[0]["final_loss"] == metas[1]["final_loss"]
    query = CountData(X=counts, gene_names=np.array([f"g{i}" for i in range(30)]), source="query")
    pd.testing.assert_frame_equal(annotate(str(out), query)[0], annotate(str(tmp_path / "ref"), query)[0],
                                  check_exact=True)
