"""scDeepCluster training and pipeline on small synthetic data."""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import synthetic_counts

from scdc_jax.cluster import ClusterConfig, fit, run
from scdc_jax.cluster.train import build_model, device_data, make_epoch, pretrain_loss, stage_key
from scdc_jax.errors import InputError
from scdc_jax.io import CountData
from scdc_jax.optim import amsgrad_torch
from scdc_jax.preprocess import prepare

FAST = dict(pretrain_epochs=100, maxiter=30, batch_size=64, kmeans_n_init=5, encoder=[64, 32], decoder=[32, 64],
            latent=8, checkpoint_every=10)


def small_data(seed=0, **kw):
    X, groups, batches = synthetic_counts(seed=seed, **kw)
    return CountData(X=X, labels=groups, label_names=["a", "b", "c"])


def test_pretrain_epoch_reduces_loss_and_is_deterministic():
    p = prepare(small_data())
    cfg = ClusterConfig(**FAST)
    dd = device_data(p)

    def train(epochs):
        graphdef, ae = build_model(cfg, p.shape[1], seed=1)
        tx = amsgrad_torch()
        opt = tx.init(ae)
        # 240 cells in batches of 70: the last batch (30 cells) is padded and masked
        epoch = make_epoch(partial(pretrain_loss, graphdef=graphdef, sigma=2.5), tx, n=p.shape[0], batch_size=70,
                           shuffle=True)
        losses = []
        for e in range(epochs):
            ae, opt, means = epoch(ae, opt, dd, stage_key(1, 1, e))
            losses.append(float(means["loss"]))
        return ae, losses

    ae1, l1 = train(15)
    ae2, l2 = train(15)
    assert np.all(np.isfinite(l1)) and l1[-1] < 0.9 * l1[0]
    assert l1 == l2
    for a, b in zip(jax.tree.leaves(ae1), jax.tree.leaves(ae2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_epoch_scaffold_steps_every_batch_and_weighs_means_by_cells():
    """240 cells in batches of 70: three full steps and a last one of 30 cells; a batch's
    measurement counts as many times as it has cells, and every batch is one optimiser step."""
    import jax.numpy as jnp
    import optax

    from scdc_jax.losses import masked_mean

    dd = device_data(prepare(small_data()))
    y = jnp.arange(240.0)

    def loss_fn(params, batch, key):
        mean_y = masked_mean(batch["y"], batch["mask"])
        return params["w"] * mean_y, {"y": mean_y, "const": masked_mean(batch["const"], batch["mask"])}

    for shuffle in (False, True):
        epoch = make_epoch(loss_fn, optax.sgd(1.0), n=240, batch_size=70, shuffle=shuffle)
        w = {"w": jnp.ones(())}
        params, _, means = epoch(w, optax.sgd(1.0).init(w), dd, jax.random.key(0), {"y": y})
        np.testing.assert_allclose(float(means["y"]), 119.5, rtol=1e-6)  # not the mean of the batch means
        np.testing.assert_allclose(float(means["const"]), float(dd.const.mean()), rtol=1e-6)
        if not shuffle:  # four steps in order, their gradients the batch means 34.5, 104.5, 174.5, 224.5
            np.testing.assert_allclose(float(params["w"]), 1.0 - 538.0, rtol=1e-6)


def test_run_recovers_groups_with_given_k(tmp_path):
    res = run(small_data(), ClusterConfig(n_clusters=3, **FAST), save_dir=str(tmp_path), progress=False)
    assert res.labels.shape == (240,) and res.latent.shape == (240, 8)
    np.testing.assert_allclose(res.q.sum(1), 1.0, rtol=1e-5)
    assert res.scores["ari"] > 0.9, res.scores
    assert len(res.history["pretrain_loss"]) == 100
    assert res.history["scores"] and res.history["scores"][0]["epoch"] == 0
    for sub in ("pretrain", "model"):
        assert (tmp_path / sub).is_dir()


def test_same_seed_same_labels_and_ae_weights_skip_pretraining(tmp_path, monkeypatch):
    from scdc_jax.cluster import source  # where the stages' epochs are built

    cfg = ClusterConfig(n_clusters=3, seed=5, **FAST)
    a = run(small_data(1), cfg, save_dir=str(tmp_path / "a"), progress=False)
    b = run(small_data(1), cfg, progress=False)
    np.testing.assert_array_equal(a.labels, b.labels)

    real = source.make_epoch

    def no_pretraining(*args, shuffle, **kwargs):
        if shuffle:  # the pretraining epoch (the clustering stage goes through the cells in order)
            raise AssertionError("pretraining ran although ae_weights were given")
        return real(*args, shuffle=shuffle, **kwargs)

    monkeypatch.setattr(source, "make_epoch", no_pretraining)
    c = run(small_data(1), cfg, ae_weights=str(tmp_path / "a"), progress=False)
    assert c.history["pretrain_loss"] == a.history["pretrain_loss"]  # carried over from the checkpoint
    np.testing.assert_array_equal(a.labels, c.labels)


def test_louvain_estimates_number_of_clusters(tmp_path):
    cfg = ClusterConfig(n_clusters=0, knn=15, resolution=0.3, **FAST)
    res = run(small_data(2), cfg, progress=False, save_dir=str(tmp_path / "r"))
    k = res.centers.shape[0]
    assert 2 <= k <= 8
    assert res.scores["ari"] > 0.7, res.scores
    # init_from="kmeans": Louvain's count, the start of a run given that count (the same pretraining)
    km = run(small_data(2), dataclasses.replace(cfg, init_from="kmeans"), progress=False,
             ae_weights=str(tmp_path / "r"))
    given = run(small_data(2), dataclasses.replace(cfg, n_clusters=k), progress=False, ae_weights=str(tmp_path / "r"))
    assert km.centers.shape[0] == k
    np.testing.assert_array_equal(km.labels, given.labels)
    np.testing.assert_allclose(km.centers, given.centers, rtol=1e-5, atol=1e-5)
    for bad, words in ((dict(n_clusters=3), "always starts from k-means"), (dict(ensemble=2), "single runs")):
        with pytest.raises(InputError, match=words):
            ClusterConfig(init_from="kmeans", **bad).validate()


def test_fit_writes_scanpy_fields(capfd):
    import anndata
    import pandas as pd

    X, groups, _ = synthetic_counts(seed=3)
    X[0] = 0  # filtered cell gets no cluster
    ad = anndata.AnnData(X.astype(np.float32), obs=pd.DataFrame({"g": groups.astype(str)},
                                                                 index=[f"c{i}" for i in range(len(X))]))
    capfd.readouterr()
    out = fit(ad, 3, label_key="g", random_state=0, copy=True, verbose=False, **FAST)
    assert capfd.readouterr() == ("", "")  # verbose=False: no progress bars, no messages
    assert "scdc_cluster" not in ad.obs  # copy=True leaves the input alone
    assert out.obs["scdc_cluster"].dtype.name == "category"
    assert out.obs["scdc_cluster"].isna().sum() == 1 and pd.isna(out.obs["scdc_cluster"].iloc[0])
    assert out.obsm["X_scdc"].shape == (240, 8)
    assert out.uns["scdc"]["params"]["n_clusters"] == 3 and "ari" in out.uns["scdc"]["scores"]
    out.write_h5ad(__import__("tempfile").mktemp(suffix=".h5ad"))  # .uns must be writable


def test_api_errors_name_keyword_arguments_not_flags():
    """Through the Python API a message names ``layer="counts"``, not the command line's ``--layer counts``."""
    import anndata

    from scdc_jax.errors import InputError

    X, _, _ = synthetic_counts(40, 20)
    lognorm = anndata.AnnData(np.log1p(X).astype(np.float32))
    with pytest.raises(InputError, match='e.g. layer="counts" or layer="raw"') as exc:
        fit(lognorm, 2)
    assert "--" not in str(exc.value)
    counts = anndata.AnnData(X.astype(np.float32))
    with pytest.raises(InputError, match="^pretrain_epochs must be positive, got 0.$"):
        fit(counts, 2, pretrain_epochs=0)
    with pytest.raises(InputError, match="^n_clusters=50 is more than the 40 cells left after filtering.$"):
        fit(counts, 50, **FAST)


def test_more_clusters_than_cells_is_refused():
    from scdc_jax.errors import InputError

    with pytest.raises(InputError, match="more than the"):
        run(small_data(), ClusterConfig(n_clusters=500, **FAST), progress=False)


def test_predict_held_out_cells_matches_full_run(tmp_path):
    from scdc_jax.cluster import predict
    from scdc_jax.metrics import clustering_scores

    X, groups, _ = synthetic_counts(300, 120, seed=4)
    genes = np.array([f"g{i}" for i in range(120)])
    full = CountData(X=X, labels=groups, label_names=["a", "b", "c"], gene_names=genes)
    train = full.subset(cells=np.arange(240))
    res = run(train, ClusterConfig(n_clusters=3, **FAST), save_dir=str(tmp_path), progress=False)
    # held-out cells with the genes shuffled: matched back by name
    perm = np.random.default_rng(0).permutation(120)
    query = full.subset(cells=np.arange(240, 300), genes=perm)
    out = predict(str(tmp_path), query)
    assert out["q"].shape == (60, 3) and out["latent"].shape == (60, 8)
    assert clustering_scores(groups[240:], out["labels"])["ari"] > 0.9
    # the training cells themselves get the labels of the run
    again = predict(str(tmp_path), train)
    assert np.mean(again["labels"] == res.labels) > 0.95
    from scdc_jax.errors import InputError

    with pytest.raises(InputError, match="lacks 1 of the model.*; give fill_missing_genes=True to count them as zero"):
        predict(str(tmp_path), full.subset(genes=np.arange(119)))
    # fill_missing_genes: the genes the query lacks count as zero, as in a query holding them at zero,
    # from dense and CSR counts alike
    gone = np.isin(query.gene_names, ["g5", "g77"])
    lacking = query.subset(genes=np.flatnonzero(~gone))
    zeroed = query.subset(genes=np.arange(120))
    zeroed.X[:, gone] = 0
    filled, ref = predict(str(tmp_path), lacking, fill_missing_genes=True), predict(str(tmp_path), zeroed)
    assert (filled["genes_missing"], ref["genes_missing"], filled["n_genes"]) == (2, 0, 120)
    np.testing.assert_array_equal(filled["latent"], ref["latent"])
    np.testing.assert_array_equal(filled["labels"], ref["labels"])
    sparse = predict(str(tmp_path), dataclasses.replace(lacking, X=sp.csr_matrix(lacking.X)), fill_missing_genes=True)
    np.testing.assert_allclose(sparse["latent"], ref["latent"], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="^only 60 of the model's 120 genes are in the query"):
        predict(str(tmp_path), full.subset(genes=np.arange(60)), fill_missing_genes=True)
    dup = full.subset(cells=np.arange(10))
    dup.gene_names = np.array(["g0"] * 120)
    with pytest.raises(InputError, match="duplicate gene names"):
        predict(str(tmp_path), dup)
    nameless = CountData(X=X[:, :100])
    with pytest.raises(InputError, match="cannot be matched"):
        predict(str(tmp_path), nameless)


def test_a_model_trained_on_repeated_gene_names_predicts_its_training_layout(tmp_path):
    """var_names that are not unique (AnnData allows them) are trained on; the model then matches
    a query laid out as its training input (one gene without counts dropped by training), and
    refuses one in another order, whose genes it cannot tell apart."""
    from scdc_jax.cluster import predict

    X, groups, _ = synthetic_counts(200, 60, seed=4)
    X[:, 7] = 0
    genes = np.array([f"g{i}" for i in range(60)])
    genes[[3, 30]] = "dup"
    data = CountData(X=X, labels=groups, label_names=["a", "b", "c"], gene_names=genes)
    cfg = ClusterConfig(n_clusters=3, **{**FAST, "pretrain_epochs": 5, "maxiter": 2})
    res = run(data, cfg, save_dir=str(tmp_path), progress=False)
    assert len(res.genes) == 59
    assert np.mean(predict(str(tmp_path), data)["labels"] == res.labels) > 0.95
    with pytest.raises(InputError, match="^the model's genes have duplicate names \\(dup\\), so it matches only"):
        predict(str(tmp_path), data.subset(genes=np.arange(60)[::-1]))


def test_predict_without_gene_names_takes_the_training_columns_by_position(tmp_path):
    """Training dropped 6 genes without counts; the other cells of the same nameless file, with all
    its columns, get the model's columns by position."""
    from scdc_jax.cluster import predict
    from scdc_jax.errors import InputError

    X, groups, _ = synthetic_counts(300, 120, seed=4)
    X[:240, [3, 17, 40, 41, 90, 119]] = 0  # no counts in the training cells: dropped by training
    cfg = ClusterConfig(n_clusters=3, **{**FAST, "pretrain_epochs": 5, "maxiter": 2})
    res = run(CountData(X=X[:240]), cfg, save_dir=str(tmp_path), progress=False)
    assert len(res.genes) == 114
    query = X[240:]
    out = predict(str(tmp_path), CountData(X=query))
    filtered = predict(str(tmp_path), CountData(X=query[:, res.genes]))  # the model's genes alone
    np.testing.assert_array_equal(out["labels"], filtered["labels"])
    np.testing.assert_allclose(out["latent"], filtered["latent"], rtol=1e-6)
    with pytest.raises(InputError, match=r"the query has 119 genes and the model 114 \(the training data had 120 "
                                         r"before filtering\)"):
        predict(str(tmp_path), CountData(X=query[:, :119]))


def test_interrupted_overwrite_leaves_the_old_run_whole_and_resume_finishes_it(tmp_path, monkeypatch):
    import os

    from scdc_jax.cluster import source  # where the stages' epochs are built
    from scdc_jax.errors import InputError

    cfg = ClusterConfig(n_clusters=3, **{**FAST, "pretrain_epochs": 20, "maxiter": 5, "checkpoint_every": 5})
    save, staged = tmp_path / "res", tmp_path / ".res.overwrite"
    run(small_data(0), cfg, save_dir=str(save), progress=False)
    old = sorted((str(p), p.stat().st_mtime_ns) for p in save.rglob("*"))
    with pytest.raises(InputError, match=r"^.*res already holds a scdc_jax run; give overwrite=True to replace it, "
                                         r"resume=True to continue it, or choose another save_dir.$"):
        run(small_data(1), cfg, save_dir=str(save), progress=False)

    real = source.make_epoch

    def interrupted_at_epoch_12(*a, **kw):
        epoch, calls = real(*a, **kw), []
        if not kw["shuffle"]:  # only the pretraining epochs are counted
            return epoch

        def wrapped(*args):
            calls.append(1)
            if len(calls) == 12:
                raise KeyboardInterrupt
            return epoch(*args)

        return wrapped

    monkeypatch.setattr(source, "make_epoch", interrupted_at_epoch_12)
    with pytest.raises(KeyboardInterrupt):
        run(small_data(1), cfg, save_dir=str(save), overwrite=True, progress=False)
    monkeypatch.undo()
    assert sorted((str(p), p.stat().st_mtime_ns) for p in save.rglob("*")) == old  # the old run, untouched
    assert sorted(os.listdir(staged / "pretrain")) == ["10", "5"]
    with pytest.raises(InputError, match=r"\.res\.overwrite holds a run of other settings or data"):
        run(small_data(0), cfg, save_dir=str(save), resume=True, progress=False)
    resumed = run(small_data(1), cfg, save_dir=str(save), resume=True, progress=False)
    assert not staged.exists() and sorted(os.listdir(save / "pretrain")) == ["15", "20", "manifest.json"]
    np.testing.assert_array_equal(resumed.labels, run(small_data(1), cfg, progress=False).labels)


def test_batch_variant_follows_groups_not_batches():
    from scdc_jax.metrics import clustering_scores

    X, groups, batches = synthetic_counts(300, 120, seed=6, n_batches=2, batch_effect=1.0)
    onehot = np.eye(2, dtype=np.float32)[batches]
    cfg = ClusterConfig(n_clusters=3, **FAST)
    plain = run(CountData(X=X, labels=groups, label_names=["a", "b", "c"]), cfg, progress=False)
    with_b = run(CountData(X=X, labels=groups, label_names=["a", "b", "c"], batch=onehot, batch_names=["p", "q"]),
                 cfg, progress=False)
    ari_b_groups = with_b.scores["ari"]
    ari_b_batch = clustering_scores(batches, with_b.labels)["ari"]
    ari_plain_batch = clustering_scores(batches, plain.labels)["ari"]
    assert ari_b_groups > 0.9, with_b.scores
    assert ari_b_batch < 0.1
    # without B the batch effect is strong enough to pull the clusters towards the batches
    assert ari_plain_batch > 0.3 and plain.scores["ari"] < 0.7, (plain.scores, ari_plain_batch)


def test_non_finite_loss_stops_with_stage_epoch_and_checkpoint(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from scdc_jax.cluster import source  # where the stages' epochs are built
    from scdc_jax.errors import TrainingDiverged

    real = source.make_epoch

    def poisoned(*a, **kw):
        epoch = real(*a, **kw)
        calls = {"n": 0}
        if not kw["shuffle"]:  # the pretraining epochs only
            return epoch

        def wrapped(params, opt, data, key, *per_cell):
            calls["n"] += 1
            params, opt, means = epoch(params, opt, data, key, *per_cell)
            return params, opt, ({**means, "loss": jnp.nan} if calls["n"] == 14 else means)

        return wrapped

    monkeypatch.setattr(source, "make_epoch", poisoned)
    with pytest.raises(TrainingDiverged, match=r"pretraining loss became non-finite at epoch 14; the last good "
                                               r"checkpoint is epoch 10 in .*pretrain"):
        run(small_data(), ClusterConfig(n_clusters=3, **FAST), save_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "model").exists()


def test_sparse_rows_give_the_dense_batches_and_the_same_run():
    import scipy.sparse as sp

    from scdc_jax.cluster.train import batch_rows, ell_rows, use_sparse_rows

    X, groups, _ = synthetic_counts(seed=3)
    X[np.random.default_rng(0).random(X.shape) < 0.7] = 0  # sparse enough for ELL rows to be smaller
    csr = sp.csr_matrix(X)
    cols, vals = ell_rows(csr)
    assert cols.shape == (240, np.diff(csr.indptr).max()) and use_sparse_rows(csr) and not use_sparse_rows(X)
    p = prepare(CountData(X=csr))
    ell, dense = device_data(p), device_data(p, sparse=False)
    assert ell.cols is not None and ell.counts.shape[1] < p.shape[1] and dense.cols is None
    idx = jax.numpy.array([5, 0, 239, 5, 17])
    for a, b in zip(batch_rows(ell, idx), batch_rows(dense, idx)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(batch_rows(dense, idx)[0]), p.x[np.asarray(idx)], rtol=1e-5, atol=1e-5)
    # lgamma(x + 1) summed over the non-zeros or over all genes: equal up to summation order
    np.testing.assert_allclose(np.asarray(ell.const), np.asarray(dense.const), rtol=1e-5)
    cfg = ClusterConfig(n_clusters=3, **{**FAST, "pretrain_epochs": 20, "maxiter": 5})
    res_sparse = run(CountData(X=csr, labels=groups, label_names=["a", "b", "c"]), cfg, progress=False)
    res_dense = run(CountData(X=X, labels=groups, label_names=["a", "b", "c"]), cfg, progress=False)
    # The same training: equal labels, and latent values equal to float32 rounding (the two
    # programs build x in different fusions, which XLA may round differently in the last bit).
    np.testing.assert_array_equal(res_sparse.labels, res_dense.labels)
    np.testing.assert_allclose(res_sparse.latent, res_dense.latent, rtol=0, atol=1e-5)


def test_plot_colours_give_each_true_label_its_matched_clusters_colour():
    from scdc_jax.cluster.plots import label_colours, matched_order
    from scdc_jax.metrics import cluster_acc, match_clusters

    # labels 0-3 mostly in clusters 2, 0, 1, 1 (label 3 loses cluster 1 to label 2, the larger)
    y_true = np.repeat([0, 1, 2, 3], [30, 20, 25, 10])
    y_pred = np.repeat([2, 0, 1, 1], [30, 20, 25, 10])
    y_pred[:5] = 0  # some noise
    matching = match_clusters(y_true, y_pred)
    assert matching == {0: 2, 1: 0, 2: 1}
    cluster_colour, label_colour, same = label_colours(y_true, y_pred)
    assert same == matching
    for label, cluster in matching.items():
        assert label_colour[label] == cluster_colour[cluster]
    assert label_colour[3] not in cluster_colour.values()  # the unmatched label gets a colour of its own
    assert len(set(cluster_colour.values())) == 3
    rows, cols = matched_order(y_true, y_pred)
    assert cols == [0, 1, 2] and rows == [1, 2, 0, 3]  # matched pairs on the diagonal, then the rest
    assert cluster_acc(y_true, y_pred) == (25 + 20 + 25) / 85


def test_query_batches_are_placed_by_name_and_unknown_ones_refused():
    from scdc_jax.cluster.inference import _align_batches
    from scdc_jax.io import one_hot_from_labels

    meta = {"n_batches": 3, "batch_names": ["p1", "p2", "p3"]}

    def query(batches):
        onehot, names = one_hot_from_labels(np.array(batches))
        return CountData(X=np.ones((len(batches), 4)), batch=onehot, batch_names=names)

    # a query of some of the model's batches: each cell in its batch's column
    np.testing.assert_array_equal(_align_batches(query(["p3", "p1", "p3"]), meta), [[0, 0, 1], [1, 0, 0], [0, 0, 1]])
    # as many batches as the model, but other ones: refused, not matched by position
    with pytest.raises(InputError, match=r"the query's batches 'p4' are not among the model's \('p1', 'p2', 'p3'\)"):
        _align_batches(query(["p1", "p2", "p4"]), meta)
    with pytest.raises(InputError, match="trained with 3 batches; give the query's batches"):
        _align_batches(CountData(X=np.ones((2, 4))), meta)
    unnamed = CountData(X=np.ones((2, 4)), batch=np.eye(3, dtype=np.float32)[[0, 2]])  # a one-hot B without names
    np.testing.assert_array_equal(_align_batches(unnamed, meta), unnamed.batch)
    with pytest.raises(InputError, match="the query has 2 batches, the model 3"):
        _align_batches(CountData(X=np.ones((2, 4)), batch=np.eye(2, dtype=np.float32)), meta)
    assert _align_batches(CountData(X=np.ones((2, 4))), {"n_batches": 0}) is None
