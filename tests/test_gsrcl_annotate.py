"""GsRCL annotation: gene alignment, calls with a cutoff, a reference -> query round trip, and
references as shared data (SVMs as arrays scored in JAX, manifests, no pickle ever loaded)."""
from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import crafted_pickle, flip_byte, largest_file, run_module, synthetic_counts
from test_gsrcl import cli_error, write_h5

from scdc_jax.errors import InputError
from scdc_jax.errors import run_cli as wrap
from scdc_jax.gsrcl.__main__ import main
from scdc_jax.gsrcl.annotate import UNASSIGNED, annotate, call_types, train_reference, zero_fill_genes
from scdc_jax.gsrcl.config import load_config
from scdc_jax.io import CountData


def cli_here(args, capfd):
    """``python -m scdc_jax.gsrcl ARGS`` in this process (test_gsrcl's ``run_cli`` starts a
    subprocess); the result has the returncode, stdout and stderr of that subprocess."""
    import subprocess

    code, out, err = run_module(["-m", "scdc_jax.gsrcl", *args], capfd)
    return subprocess.CompletedProcess(args, code, out, err)


def test_align_genes_reorders_zero_fills_and_drops():
    X = np.array([[1, 2, 3], [4, 5, 6]])
    out = zero_fill_genes(X, ["b", "a", "extra"], ["a", "b", "c"])
    np.testing.assert_array_equal(out, [[2, 1, 0], [5, 4, 0]])
    assert out.dtype == np.float32


def test_align_genes_refuses_duplicates_and_poor_overlap():
    with pytest.raises(InputError, match="duplicate"):
        zero_fill_genes(np.ones((1, 3)), ["a", "a", "b"], ["a", "b"])
    with pytest.raises(InputError, match="duplicate"):
        zero_fill_genes(np.ones((1, 2)), ["a", "b"], ["a", "a", "b"])
    with pytest.raises(InputError, match="more than half"):  # half of the reference's genes found is refused
        zero_fill_genes(np.ones((1, 3)), ["a", "b", "x"], ["a", "b", "c", "d"])
    with pytest.raises(InputError, match="more than half"):  # a query of a few reference genes, all matching
        zero_fill_genes(np.ones((1, 1)), ["a"], ["a", "b", "c"])
    zero_fill_genes(np.ones((1, 3)), ["a", "b", "x"], ["a", "b", "c"])
    # a whole transcriptome against a reference of fewer genes: the reference's genes taken, the rest dropped
    X = np.arange(14).reshape(2, 7)
    out = zero_fill_genes(X, ["x1", "c", "x2", "a", "x3", "b", "x4"], ["a", "b", "c"])
    np.testing.assert_array_equal(out, X[:, [3, 5, 1]])
    # names repeated outside the reference's genes do not matter; a reference with repeated names
    # (trained on var_names that were not unique) takes a query with its very names in its order only
    out = zero_fill_genes(X, ["x1", "c", "x1", "a", "x3", "b", "x3"], ["a", "b", "c"])
    np.testing.assert_array_equal(out, X[:, [3, 5, 1]])
    np.testing.assert_array_equal(zero_fill_genes(X[:, :3], ["a", "b", "a"], ["a", "b", "a"]), X[:, :3])
    with pytest.raises(InputError, match=r"^the reference's genes have duplicate names \(a\), so it matches only a "):
        zero_fill_genes(X[:, :3], ["b", "a", "a"], ["a", "b", "a"])


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


def test_cli_train_reference_and_annotate_record_their_provenance(tmp_path, capfd):
    import json

    import anndata

    counts, y, _ = synthetic_counts(60, 30, n_groups=2, seed=5)
    ref = write_h5(tmp_path / "ref.h5", counts, y, ["T", "B/plasma"])  # a '/' cannot be an HDF5 key
    toml = tmp_path / "t.toml"
    toml.write_text("[gsrcl]\nencoder = [16, 8]\nhead = [8, 4]\nepochs = 10\neval_every = 10\nsvm_cv = 2\n"
                    "svm_gamma = ['scale']\nsvm_c = [1.0]\nlr = 1e-3\n")
    r = cli_here(["train-reference", "--data-file", ref, "--out", str(tmp_path / "model"), "--config", str(toml),
                  "--seed", "7"], capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reference encoder: 100%" in r.stderr and "10/10" in r.stderr  # the epochs' progress bar
    assert "fitting 2 calibrated SVMs (one per cell type)" in r.stdout
    meta = json.loads((tmp_path / "model" / "reference.json").read_text())
    assert meta["seed"] == 7 and meta["config"]["seed"] == 7 and meta["config"]["encoder"] == [16, 8]
    assert meta["n_devices"] == 1 and {"jax", "flax", "scikit-learn"} <= set(meta["versions"])
    assert "--seed 7" in meta["command"] and not (tmp_path / "model" / ".partial").exists()
    adata = anndata.AnnData(X=counts[:20].astype(np.float32))
    adata.var_names = [f"g{i}" for i in range(30)]
    adata.obs_names = [f"q{i}" for i in range(20)]
    adata.obs["known"] = np.array(["T", "B/plasma"])[y[:20]]
    adata.write_h5ad(tmp_path / "q.h5ad")
    r = cli_here(["annotate", "--reference", str(tmp_path / "model"), "--data-file", str(tmp_path / "q.h5ad"),
                  "--out", str(tmp_path / "out.h5ad"), "--plot", str(tmp_path / "calls.png"), "--cutoff", "0.6",
                  "--label-key", "known"], capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # anndata's warning that it will refuse '/' in a key
        out = anndata.read_h5ad(tmp_path / "out.h5ad")
    assert "gsrcl_call" in out.obs and {"gsrcl_prob_T", "gsrcl_prob_B_plasma"} <= set(out.obs)
    prov = out.uns["gsrcl"]
    assert list(prov["cell_types"]) == ["T", "B/plasma"] and prov["reference_genes_missing"] == 0
    assert prov["cells_without_counts"] == 0
    assert list(prov["prob_columns"]) == ["gsrcl_prob_T", "gsrcl_prob_B_plasma"]
    assert out.obs["known"].tolist() == adata.obs["known"].tolist()  # the query's own columns kept
    np.testing.assert_array_equal(out.obsm["gsrcl_probs"], out.obs[list(prov["prob_columns"])].to_numpy(np.float32))
    assert out.obsm["X_gsrcl"].shape == (20, 8)
    assert prov["seed"] == 7 and prov["config"]["cutoff"] == 0.6 and prov["config"]["reference_config"]["seed"] == 7
    assert prov["n_devices"] == 1 and "jax" in prov["versions"] and prov["n_cells"] == 20
    assert os.path.getsize(tmp_path / "calls.png") > 1000
    with pytest.raises(SystemExit) as exc:
        wrap(main, ["annotate", "--reference", str(tmp_path / "model"), "--data-file", str(tmp_path / "q.h5ad"),
                    "--out", str(tmp_path / "calls.csv")])
    assert exc.value.code == 0
    df = pd.read_csv(tmp_path / "calls.csv", index_col=0)
    assert list(df.columns) == ["T", "B/plasma", "call"] and len(df) == 20 and df.index[0] == "q0"
    side = json.loads((tmp_path / "calls.json").read_text())
    assert side["seed"] == 7 and side["config"]["cutoff"] == 0.5 and side["cell_types"] == ["T", "B/plasma"]
    assert side["n_devices"] == 1 and "numpy" in side["versions"] and side["data"].endswith("q.h5ad")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    capfd.readouterr()  # (pytest allows capfd or capsys in one test, not both; cli_error reads either)
    err = cli_error(["annotate", "--reference", str(tmp_path / "nothing"), "--data-file", str(tmp_path / "q.h5ad")],
                    capfd)
    assert "not a GsRCL reference" in err
    # a CSV query can be written as an .h5ad too (its counts, the calls of the .h5ad query)
    pd.DataFrame(counts[:20], index=adata.obs_names, columns=adata.var_names).to_csv(tmp_path / "q.csv")
    r = cli_here(["annotate", "--reference", str(tmp_path / "model"), "--data-file", str(tmp_path / "q.csv"),
                  "--out", str(tmp_path / "from_csv.h5ad"), "--cutoff", "0.6"], capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    csv_out = anndata.read_h5ad(tmp_path / "from_csv.h5ad")
    assert csv_out.obs["gsrcl_call"].tolist() == out.obs["gsrcl_call"].tolist()
    np.testing.assert_array_equal(csv_out.X, counts[:20])
    # a second training into the reference's folder is refused unless --overwrite
    before = (tmp_path / "model" / "reference.json").read_text()
    retrain = ["train-reference", "--data-file", ref, "--out", str(tmp_path / "model"), "--config", str(toml),
               "--seed", "8"]
    r = cli_here(retrain, capfd)
    assert r.returncode == 2 and "already holds a GsRCL reference" in r.stderr and "--overwrite" in r.stderr
    assert (tmp_path / "model" / "reference.json").read_text() == before
    r = cli_here([*retrain, "--overwrite"], capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "model" / "reference.json").read_text())["seed"] == 8


def test_sigkill_during_train_reference_then_resume_gives_the_same_reference(tmp_path, capfd):
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
    r = cli_here([*common, "--out", str(tmp_path / "ref")], capfd)
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
    changed = cli_here([*common, "--out", str(out), "--resume", "--lr", "0.01"], capfd)
    assert changed.returncode == 2 and "different configuration" in changed.stderr
    r = cli_here([*common, "--out", str(out), "--resume"], capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "from its checkpoint at epoch" in r.stdout and not (out / ".partial").exists()
    metas = [json.loads((d / "reference.json").read_text()) for d in (tmp_path / "ref", out)]
    assert metas[0]["final_loss"] == metas[1]["final_loss"]
    query = CountData(X=counts, gene_names=np.array([f"g{i}" for i in range(30)]), source="query")
    pd.testing.assert_frame_equal(annotate(str(out), query)[0], annotate(str(tmp_path / "ref"), query)[0],
                                  check_exact=True)


# ---- references as shared data ----------------------------------------------------------------

def _blobs(n, seed):
    """(n, 12) float32 encodings of three offset groups, far from the origin, and the groups."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0.0, 2.0, size=(3, 12)) + 5.0
    groups = np.arange(n) % 3
    return (centres[groups] + rng.normal(size=(n, 12))).astype(np.float32), groups


@pytest.mark.parametrize("gamma", [["scale"], [0.01, 0.1]])
def test_jax_svm_scores_equal_sklearn_and_survive_the_npz_round_trip(tmp_path, gamma):
    from scdc_jax.gsrcl.svm import calibrated_svm, svm_parameters
    from scdc_jax.gsrcl.svm_params import load_svms, save_svms, svm_arrays, svm_scores

    h, groups = _blobs(150, 0)
    query, _ = _blobs(70, 1)
    cfg = load_config(None, svm_cv=3, svm_gamma=gamma, svm_c=[1.0, 10.0])
    clfs = [calibrated_svm(h, (groups == t).astype(np.int64), cfg, t) for t in range(3)]
    arrays = svm_arrays(h, [svm_parameters(c) for c in clfs])
    f, p = svm_scores(arrays, query)
    sk_f = np.column_stack([c.calibrated_classifiers_[0].estimator.decision_function(query) for c in clfs])
    sk_p = np.column_stack([c.predict_proba(query)[:, 1] for c in clfs])
    assert f.dtype == np.float32 and np.abs(sk_f).max() > 1.0 and 0.01 < sk_p.mean() < 0.99
    np.testing.assert_allclose(f, sk_f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p, sk_p, rtol=1e-5, atol=1e-6)
    # blocks of rows (padded last block) give the same scores
    np.testing.assert_allclose(svm_scores(arrays, query, max_elements=16 * len(arrays["vectors"]))[1], p, atol=1e-6)
    save_svms(str(tmp_path / "svms.npz"), arrays)
    loaded = load_svms(str(tmp_path / "svms.npz"), 3, 12)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype
    f2, p2 = svm_scores(loaded, query)
    np.testing.assert_array_equal(f2, f)
    np.testing.assert_array_equal(p2, p)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny reference, a query of its genes (CountData and .h5ad) and a folder for copies."""
    import anndata

    d = tmp_path_factory.mktemp("shared")
    counts, y, _ = synthetic_counts(60, 30, n_groups=2, seed=5)
    genes = np.array([f"g{i}" for i in range(30)])
    ref = CountData(X=counts, labels=y, label_names=["T", "B"], gene_names=genes, source="synthetic")
    cfg = load_config(None, encoder=[16, 8], head=[8, 4], epochs=4, eval_every=4, svm_cv=2, svm_gamma=["scale"],
                      svm_c=[1.0])
    train_reference(ref, cfg, str(d / "ref"), log=lambda m: None)
    adata = anndata.AnnData(X=counts[:20].astype(np.float32))
    adata.var_names = list(genes)
    adata.write_h5ad(d / "q.h5ad")
    return {"ref": d / "ref", "cfg": cfg, "data": ref, "h5ad": str(d / "q.h5ad"),
            "query": CountData(X=counts[:20], gene_names=genes, source="query")}


def _copy(shared, dst, change=None):
    import shutil

    shutil.copytree(shared["ref"], dst)
    if change is not None:
        change(dst)
    return str(dst)


def test_reference_holds_arrays_and_json_and_a_copy_annotates_identically(shared, tmp_path):
    from scdc_jax import manifest

    names = sorted(p.name for p in shared["ref"].iterdir())
    assert names == ["genes.txt", "manifest.json", "model", "reference.json", "svms.npz"]
    listed = manifest.verify(str(shared["ref"]), "GsRCL reference", "")["files"]
    assert {"genes.txt", "reference.json", "svms.npz"} <= set(listed)
    with np.load(shared["ref"] / "svms.npz", allow_pickle=False) as z:
        assert all(z[k].dtype.kind == "f" for k in z.files)
    copy = _copy(shared, tmp_path / "sent")
    pd.testing.assert_frame_equal(annotate(copy, shared["query"])[0], annotate(str(shared["ref"]), shared["query"])[0],
                                  check_exact=True)


@pytest.mark.parametrize("change, words", [
    (lambda d: flip_byte(d / "svms.npz"), "altered or damaged"),
    (lambda d: flip_byte(largest_file(d / "model")), "altered or damaged"),
    (lambda d: os.remove(d / "genes.txt"), "incomplete: genes.txt listed"),
    (lambda d: os.remove(largest_file(d / "model")), "incomplete"),
    (lambda d: os.remove(d / "manifest.json"), "has no manifest.json"),
], ids=["svms byte changed", "model byte changed", "genes removed", "model file removed", "manifest removed"])
def test_altered_or_truncated_reference_is_refused(shared, tmp_path, capsys, change, words):
    ref = _copy(shared, tmp_path / "ref", change)
    err = cli_error(["annotate", "--reference", ref, "--data-file", shared["h5ad"], "--out",
                     str(tmp_path / "calls.csv")], capsys)
    assert words in err and "train-reference" in err, err
    assert not (tmp_path / "calls.csv").exists()


def _svms_npz_holding_a_pickle(d):
    """A forger's reference: svms.npz with a pickled object array, and a manifest that matches."""
    from scdc_jax import manifest

    np.savez(d / "svms.npz", vectors=np.array([_Unpickled(d / "marker")], dtype=object))
    manifest.write(str(d), "GsRCL reference")


class _Unpickled:
    def __init__(self, marker):
        self.blob = crafted_pickle(marker)

    def __reduce__(self):  # pickled as the crafted pickle itself
        import pickle

        return pickle.loads, (self.blob,)


@pytest.mark.parametrize("change, words", [
    (lambda d: (d / "svms.joblib").write_bytes(crafted_pickle(d / "marker")), "an older scdc_jax"),
    (lambda d: (d / "extra.pkl").write_bytes(crafted_pickle(d / "marker")), "holds a pickle (extra.pkl)"),
    (lambda d: (d / "model" / "data").write_bytes(crafted_pickle(d / "marker")), "does not list (model/data)"),
    (_svms_npz_holding_a_pickle, "is not an SVM store"),
], ids=["old svms.joblib", "extra .pkl", "extra file", "pickle inside svms.npz with a matching manifest"])
def test_a_crafted_pickle_in_a_reference_is_never_unpickled(shared, tmp_path, capsys, change, words):
    import pickle

    pickle.loads(crafted_pickle(tmp_path / "live"))  # the crafted pickle does run code when unpickled
    assert (tmp_path / "live").exists()
    ref = _copy(shared, tmp_path / "ref", change)
    with pytest.raises(InputError, match=re.escape(words)):
        annotate(ref, shared["query"])
    err = cli_error(["annotate", "--reference", ref, "--data-file", shared["h5ad"], "--out",
                     str(tmp_path / "calls.csv")], capsys)
    assert words in err
    assert not (tmp_path / "ref" / "marker").exists()


def test_old_reference_is_refused_with_how_to_remake_it_and_retraining_replaces_it(shared, tmp_path):
    ref = _copy(shared, tmp_path / "ref", lambda d: (d / "svms.joblib").write_bytes(b"\x80\x04N."))
    with pytest.raises(InputError, match=r"re-create it from its data with 'python -m scdc_jax.gsrcl train-reference'"):
        annotate(ref, shared["query"])
    train_reference(shared["data"], shared["cfg"], ref, log=lambda m: None)
    assert not (tmp_path / "ref" / "svms.joblib").exists()
    assert len(annotate(ref, shared["query"])[0]) == 20


def test_train_reference_refuses_a_folder_holding_other_files(shared, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"not part of a GsRCL reference \(notes.txt\)"):
        train_reference(shared["data"], shared["cfg"], str(tmp_path), log=lambda m: None)


def test_annotating_imports_neither_joblib_nor_scikit_learn(shared):
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys, numpy as np; from scdc_jax.io import read_counts; "
            "from scdc_jax.gsrcl.annotate import annotate; "
            f"annotate({str(shared['ref'])!r}, read_counts({shared['h5ad']!r})); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'joblib', 'sklearn'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                       capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_cells_without_counts_in_the_reference_genes_are_unassigned(shared):
    """An empty droplet, or a cell whose counts all lie in genes the reference lacks, has nothing
    to be called by: Unassigned with NaN probabilities; the other cells are called as without it."""
    q = shared["query"]
    X = np.hstack([np.asarray(q.X), np.zeros((20, 1), np.int64)])
    X[[2, 7]] = 0
    X[7, -1] = 5  # counts only in a gene the reference does not have
    with_empty = CountData(X=X, gene_names=np.append(q.gene_names, "extra"))
    df, _ = annotate(str(shared["ref"]), with_empty)
    types = ["T", "B"]
    assert df[types].iloc[[2, 7]].isna().all(axis=None) and (df["call"].iloc[[2, 7]] == UNASSIGNED).all()
    rest = np.setdiff1d(np.arange(20), [2, 7])
    alone, _ = annotate(str(shared["ref"]), q.subset(cells=rest))
    np.testing.assert_allclose(df[types].to_numpy()[rest], alone[types].to_numpy(), rtol=1e-6)
    assert list(df["call"].to_numpy()[rest]) == list(alone["call"])


def test_the_progress_bar_leaves_the_reference_as_it_is(shared, tmp_path, capfd):
    train_reference(shared["data"], shared["cfg"], str(tmp_path / "ref"), log=lambda m: None, progress=True)
    assert "reference encoder: 100%" in capfd.readouterr().err
    pd.testing.assert_frame_equal(annotate(str(tmp_path / "ref"), shared["query"])[0],
                                  annotate(str(shared["ref"]), shared["query"])[0], check_exact=True)
