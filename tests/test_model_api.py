"""The user-facing Python API: the SCDeepCluster model object (scvi-tools style), the scanpy-style
``scdc_jax.tl`` functions and the bundled example data."""
from __future__ import annotations

import contextlib
import os
import sys

import anndata
import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_counts

import scdc_jax
from scdc_jax.cluster import SCDeepCluster, predict
from scdc_jax.errors import InputError
from scdc_jax.io import from_anndata

# checkpoint_every above the epochs: one checkpoint per stage, as few orbax writes as possible
TINY = dict(pretrain_epochs=60, maxiter=20, batch_size=64, kmeans_n_init=3, encoder=[32, 16], decoder=[16, 32],
            latent=8, checkpoint_every=1000)


def make_adata(n_cells=240, seed=0):
    """Counts in the layer 'counts' and log-normalised values in .X (which training refuses), so
    that only the registered layer can make a run succeed."""
    X, groups, _ = synthetic_counts(n_cells, 100, seed=seed)
    ad = anndata.AnnData(np.log1p(X).astype(np.float32),
                         obs=pd.DataFrame({"group": pd.Categorical(groups.astype(str))},
                                          index=[f"c{i}" for i in range(n_cells)]),
                         var=pd.DataFrame(index=[f"g{i}" for i in range(100)]))
    ad.layers["counts"] = X.astype(np.float32)
    return ad


@contextlib.contextmanager
def all_output_to(path):
    """Send whatever is printed to ``path``: Python's sys.stdout and sys.stderr (which pytest
    replaces) and file descriptors 1 and 2 (C and XLA logs)."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        os.dup2(fh.fileno(), 1), os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            fh.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def one_sentence(exc) -> bool:
    msg = str(exc.value)
    return msg.endswith(".") and "\n" not in msg and ". " not in msg.rstrip(".").replace("e.g. ", "")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on 200 cells (the other 40 held out) with verbose=False, saved and loaded
    again; ``printed``: what the training printed."""
    full = make_adata()
    adata, new = full[:200].copy(), full[200:].copy()
    SCDeepCluster.setup_anndata(adata, layer="counts", labels_key="group")
    log = tmp_path_factory.mktemp("log") / "printed.txt"
    with all_output_to(log):
        model = SCDeepCluster(adata, n_clusters=3, **TINY).train(verbose=False)
    before = {"latent": model.get_latent_representation(new), "labels": model.predict(new)}  # from the run folder
    folder = str(tmp_path_factory.mktemp("saved") / "model")
    model.save(folder)
    return model, SCDeepCluster.load(folder), adata, new, folder, before, log.read_text()


def test_setup_anndata_records_the_registry_and_train_uses_it(trained):
    model, _, adata, _, _, _, _ = trained
    assert dict(adata.uns["_scdc_jax"]) == {"model": "SCDeepCluster", "layer": "counts", "labels_key": "group"}
    assert model.registry == {"layer": "counts", "batch_key": None, "labels_key": "group"}
    # trained on the counts layer (.X holds log values, refused as counts) and scored on labels_key
    assert set(model.summary["scores"]) == {"ari", "nmi", "acc"} and model.summary["scores"]["ari"] > 0.3
    assert model.get_latent_representation().shape == (200, 8)
    assert set(model.predict().tolist()) == {0, 1, 2}
    np.testing.assert_allclose(model.predict(soft=True).sum(1), 1.0, rtol=1e-5)
    with pytest.raises(InputError, match=r"^adata is not set up for SCDeepCluster; call SCDeepCluster\.setup_"):
        SCDeepCluster(make_adata(20))


def test_save_load_round_trip_gives_the_same_latent_and_labels(trained, tmp_path):
    model, loaded, adata, new, folder, before, _ = trained
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    np.testing.assert_array_equal(loaded.predict(), model.predict())
    assert loaded.registry == model.registry and loaded.config == model.config
    np.testing.assert_array_equal(loaded.get_latent_representation(new), before["latent"])
    np.testing.assert_array_equal(loaded.predict(new), before["labels"])
    with pytest.raises(InputError, match="already exists; pass overwrite=True") as exc:
        model.save(folder)
    assert one_sentence(exc)
    model.save(folder, overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="other than a saved SCDeepCluster model"):
        model.save(str(tmp_path / "mine"), overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    again = SCDeepCluster.load(folder, adata=adata)
    assert again.adata is adata and again.predict().tolist() == model.predict().tolist()
    with pytest.raises(InputError, match="adata has 40 cells but the model was trained on 200"):
        SCDeepCluster.load(folder, adata=new)


def test_latent_of_new_cells_is_that_of_predict(trained):
    model, _, _, new, folder, before, _ = trained
    direct = predict(folder, from_anndata(new, layer="counts"))
    np.testing.assert_array_equal(before["latent"], direct["latent"])
    np.testing.assert_array_equal(before["labels"], direct["labels"])
    assert np.isfinite(direct["latent"]).all() and direct["latent"].shape == (40, 8)
    with pytest.raises(InputError, match=r'^layer="counts" names no layer of this AnnData \(its layers: none\)\.$'):
        model.get_latent_representation(anndata.AnnData(new.layers["counts"]))
    # genes missing from adata: refused, or with fill_missing_genes counted as zero, with a warning
    lacking, zeroed = new[:, 3:].copy(), new.copy()
    zeroed.layers["counts"][:, :3] = 0
    with pytest.raises(InputError, match="lacks 3 of the model's 100 genes .*give fill_missing_genes=True") as exc:
        model.predict(lacking)
    assert one_sentence(exc)
    with pytest.warns(UserWarning, match="^3 of the model's 100 genes are not in adata and were counted as zero"):
        filled = model.get_latent_representation(lacking, fill_missing_genes=True)
    np.testing.assert_array_equal(filled, predict(folder, from_anndata(zeroed, layer="counts"))["latent"])


def test_load_refuses_a_folder_that_is_not_a_model_in_one_sentence(tmp_path, trained):
    with pytest.raises(InputError, match="is not a saved SCDeepCluster model") as exc:
        SCDeepCluster.load(str(tmp_path))
    assert one_sentence(exc)
    folder = trained[4]
    (tmp_path / "copy").mkdir()
    import shutil

    shutil.copytree(folder, tmp_path / "copy" / "m")
    with open(tmp_path / "copy" / "m" / "training.npz", "ab") as fh:
        fh.write(b"!")
    with pytest.raises(InputError, match="altered or damaged") as exc:
        SCDeepCluster.load(str(tmp_path / "copy" / "m"))
    assert one_sentence(exc)


def test_bad_keys_are_refused_naming_the_keyword_argument():
    ad = make_adata(20)
    with pytest.raises(InputError, match=r'^labels_key="celltype" names no \.obs column of this AnnData '
                                         r'\(its columns: group\)\.$'):
        SCDeepCluster.setup_anndata(ad, layer="counts", labels_key="celltype")
    with pytest.raises(InputError, match=r'^layer="raw" asks for \.raw, which this AnnData lacks'):
        SCDeepCluster.setup_anndata(ad, layer="raw")
    assert "_scdc_jax" not in ad.uns  # nothing recorded for a refused setup
    with pytest.raises(InputError, match=r'^batch_key="plate" names no \.obs column'):
        scdc_jax.tl.scdeepcluster(ad, 2, layer="counts", batch_key="plate")
    with pytest.raises(InputError, match=r"^adata must be an AnnData, got ndarray\.$"):
        scdc_jax.tl.scdeepcluster(ad.X, 2)
    SCDeepCluster.setup_anndata(ad, layer="counts")
    with pytest.raises(InputError, match="^unknown setting"):
        SCDeepCluster(ad, 2, pretrain_epoch=3)
    with pytest.raises(InputError, match="^the model is not trained yet; call model.train"):
        SCDeepCluster(ad, 2).get_latent_representation()


def test_verbose_false_prints_nothing_and_verbose_shows_progress(trained, capfd):
    assert trained[-1] == ""
    ad = make_adata(60)
    SCDeepCluster.setup_anndata(ad, layer="counts")
    SCDeepCluster(ad, 2, **dict(TINY, pretrain_epochs=2, maxiter=1)).train()
    _, err = capfd.readouterr()
    assert "pretrain: 100%" in err and "cluster: 100%" in err


def test_tl_scdeepcluster_writes_the_scanpy_fields_and_copy_leaves_the_input():
    ad = make_adata(120, seed=1)
    ad.layers["counts"][0] = 0  # a cell without counts gets no cluster
    before = ad.copy()
    out = scdc_jax.tl.scdeepcluster(ad, 3, layer="counts", random_state=2, copy=True,
                                    **dict(TINY, pretrain_epochs=5, maxiter=2))
    assert set(ad.obs) == set(before.obs) and set(ad.obsm) == set(before.obsm) and set(ad.uns) == set(before.uns)
    np.testing.assert_array_equal(ad.layers["counts"], before.layers["counts"])
    assert out.obs["scdeepcluster"].dtype.name == "category" and pd.isna(out.obs["scdeepcluster"].iloc[0])
    assert list(out.obs["scdeepcluster"].cat.categories) == ["0", "1", "2"]
    assert out.obsm["X_scdeepcluster"].shape == (120, 8) and np.isnan(out.obsm["X_scdeepcluster"][0]).all()
    assert out.obsm["scdeepcluster_q"].shape == (120, 3)
    params = out.uns["scdeepcluster"]["params"]
    assert params["seed"] == 2 and params["n_clusters"] == 3 and params["layer"] == "counts"


def test_tl_gsrcl_annotate_writes_the_scanpy_fields_and_copy_leaves_the_input(tmp_path):
    from scdc_jax.gsrcl.annotate import UNASSIGNED, train_reference
    from scdc_jax.gsrcl.config import load_config
    from scdc_jax.io import CountData

    counts, y, _ = synthetic_counts(150, 60, n_groups=3, seed=2)
    genes = np.array([f"g{i}" for i in range(60)])
    names = ["CD4+/CD25 T Reg", "B", "NK"]  # a slash in a type name must not break .h5ad output
    cfg = load_config(None, encoder=[32, 16], head=[8, 4], epochs=20, eval_every=20, lr=1e-3, svm_cv=2,
                      svm_gamma=["scale"], svm_c=[1.0])
    train_reference(CountData(X=counts[:100], labels=y[:100], label_names=names, gene_names=genes),
                    cfg, str(tmp_path / "ref"), log=lambda m: None)
    q = anndata.AnnData(np.zeros((50, 60), np.float32), var=pd.DataFrame(index=genes),
                        obs=pd.DataFrame(index=[f"q{i}" for i in range(50)]))
    q.layers["counts"] = counts[100:].astype(np.float32)
    with pytest.raises(InputError, match=r'^layer="umi" names no layer'):
        scdc_jax.tl.gsrcl_annotate(q, str(tmp_path / "ref"), layer="umi")
    with pytest.raises(InputError, match=r"^cutoff must lie in \[0, 1\), got 1.5\.$"):
        scdc_jax.tl.gsrcl_annotate(q, str(tmp_path / "ref"), layer="counts", cutoff=1.5)
    out = scdc_jax.tl.gsrcl_annotate(q, str(tmp_path / "ref"), layer="counts", copy=True)
    assert list(q.obs.columns) == [] and len(q.obsm) == 0 and len(q.uns) == 0
    calls = out.obs["gsrcl"]
    assert calls.dtype.name == "category" and set(calls.cat.categories) <= {*names, UNASSIGNED}
    assert (calls.to_numpy() == np.array(names)[y[100:]]).mean() > 0.6  # 3 types: chance is 1/3
    assert out.obsm["X_gsrcl"].shape == (50, 16)
    probs = out.obsm["gsrcl_probs"]
    assert probs.shape == (50, 3) and out.uns["gsrcl"]["cell_types"] == names
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    top = np.array(names)[probs.argmax(1)]
    np.testing.assert_array_equal(calls.to_numpy(), np.where(probs.max(1) > 0.5, top, UNASSIGNED))
    assert out.uns["gsrcl"]["params"] == {"reference": str(tmp_path / "ref"), "cutoff": 0.5, "layer": "counts"}
    assert out.uns["gsrcl"]["cells_without_counts"] == 0
    few = q[:5].copy()
    few.layers["counts"][0] = 0  # an empty droplet
    few = scdc_jax.tl.gsrcl_annotate(few, str(tmp_path / "ref"), layer="counts", copy=True)
    assert few.uns["gsrcl"]["cells_without_counts"] == 1 and few.obs["gsrcl"].iloc[0] == UNASSIGNED
    assert np.isnan(few.obsm["gsrcl_probs"][0]).all() and not np.isnan(few.obsm["gsrcl_probs"][1:]).any()
    assert scdc_jax.tl.gsrcl_annotate(q, str(tmp_path / "ref"), layer="counts", key_added="ann") is None
    assert q.obs["ann"].tolist() == calls.tolist() and "X_ann" in q.obsm and "params" in q.uns["ann"]
    out.write_h5ad(tmp_path / "annotated.h5ad")
    assert anndata.read_h5ad(tmp_path / "annotated.h5ad").obs["gsrcl"].tolist() == calls.tolist()
    c = q.layers["counts"]
    q.X = np.log1p(c / np.maximum(c.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)  # as scanpy leaves .X
    with pytest.warns(UserWarning, match=r'log-transformed already.*layer="counts"'):
        scdc_jax.tl.gsrcl_annotate(q, str(tmp_path / "ref"), copy=True)


def test_pbmc68k_counts_are_counts_with_bulk_labels():
    ad = scdc_jax.datasets.pbmc68k_counts()
    assert ad.shape == (700, 765) and ad.obs["bulk_labels"].dtype.name == "category"
    assert ad.obs["bulk_labels"].nunique() == 10
    X = np.asarray(ad.X)
    assert (X >= 0).all() and (X == np.round(X)).all() and X.sum(1).min() > 0
