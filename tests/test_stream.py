"""scDeepCluster on cells streamed from disk: a streamed epoch is the in-memory epoch run over the
file's blocks in the documented order, and the command line trains and writes a streamed run."""
from __future__ import annotations

import json
import os
from functools import partial

import jax
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import synthetic_counts

from scdc_jax.cluster import ClusterConfig
from scdc_jax.cluster.source import InMemory, Streamed
from scdc_jax.cluster.train import (ClusterData, build_model, cluster_loss, device_data, make_epoch, pretrain_loss,
                                    stage_key)
from scdc_jax.io import read_counts
from scdc_jax.optim import adadelta_torch, amsgrad_torch
from scdc_jax.preprocess import prepare
from scdc_jax.store import CellStore, stream_prepare

SMALL = dict(encoder=[32, 16], decoder=[16, 32], latent=8)
BLOCK = 100


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    import anndata
    import pandas as pd

    X, groups, _ = synthetic_counts(260, 60, seed=8)
    X[7] = 0  # a cell without counts: the blocks are cut among the kept cells
    path = str(tmp_path_factory.mktemp("stream") / "d.h5ad")
    anndata.AnnData(X=sp.csr_matrix(X.astype(np.float32)),
                    obs=pd.DataFrame({"type": pd.Categorical([f"t{g}" for g in groups])},
                                     index=[f"c{i}" for i in range(len(X))])).write_h5ad(path)
    return path


def rows(data: ClusterData, a: int, b: int) -> ClusterData:
    """Cells ``a .. b - 1`` of in-memory device data."""
    per_cell = {f: getattr(data, f) for f in ("counts", "cols", "scale", "sf", "const", "b")}
    return data._replace(**{f: None if v is None else v[a:b] for f, v in per_cell.items()})


@pytest.mark.parametrize("sparse", [True, False])
def test_a_streamed_epoch_is_the_in_memory_epoch_over_its_blocks(stored, sparse):
    cfg = ClusterConfig(batch_size=32, **SMALL)
    mem_prep = prepare(read_counts(stored))
    store = CellStore(stored)
    source = Streamed(store, stream_prepare(store, block=BLOCK), batch_size=cfg.batch_size, block=BLOCK,
                      sparse=sparse)
    assert source.spans == [(0, 100), (100, 200), (200, 259)]
    whole = device_data(mem_prep, sparse=sparse)
    graphdef, ae = build_model(cfg, mem_prep.shape[1], seed=0)
    loss = partial(pretrain_loss, graphdef=graphdef, sigma=2.5)
    tx = amsgrad_torch()
    key = stage_key(0, 1, 3)

    copy = partial(jax.tree.map, lambda a: a.copy())  # the epochs donate their inputs
    got, _, got_means = source.epoch(loss, tx, shuffle=True)(copy(ae), tx.init(ae), key)
    params, opt = copy(ae), tx.init(ae)
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 3))
    assert sorted(order) == [0, 1, 2]
    total = 0.0
    for i in order:
        a, b = source.spans[i]
        block = rows(whole, a, b)
        np.testing.assert_array_equal(np.asarray(source.block_data(i).counts), np.asarray(block.counts))
        epoch = make_epoch(loss, tx, n=b - a, batch_size=cfg.batch_size, shuffle=True)
        params, opt, means = epoch(params, opt, block, jax.random.fold_in(jax.random.fold_in(key, 1), i))
        total += float(means["loss"]) * (b - a)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_allclose(float(got_means["loss"]), total / 259, rtol=1e-6)

    # the DEC stage: blocks in file order, each with its rows of the target p
    mu = jax.numpy.asarray(np.random.default_rng(0).normal(size=(3, cfg.latent)).astype(np.float32))
    state = {"ae": got, "mu": mu}
    z0, q, p, labels = source.assigner(graphdef, 1.0)(state)
    assert z0.shape == (259, cfg.latent) and q.shape == (259, 3) and labels.shape == (259,)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(p).sum(1), 1.0, rtol=1e-5)
    tx2 = adadelta_torch()
    closs = partial(cluster_loss, graphdef=graphdef, sigma=2.5, gamma=1.0)
    streamed, _, _ = source.epoch(closs, tx2, shuffle=False)(copy(state), tx2.init(state), key, {"p": p})
    params, opt = copy(state), tx2.init(state)
    for i, (a, b) in enumerate(source.spans):
        epoch = make_epoch(closs, tx2, n=b - a, batch_size=cfg.batch_size, shuffle=False)
        params, opt, _ = epoch(params, opt, rows(whole, a, b), jax.random.fold_in(jax.random.fold_in(key, 1), i),
                               {"p": p[a:b]})
    for x, y in zip(jax.tree.leaves(streamed), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    store.close()


def test_the_command_line_streams_a_file_and_writes_every_output(stored, tmp_path, capfd):
    from scdc_jax.cluster.__main__ import main
    from scdc_jax.errors import run_cli

    save = str(tmp_path / "run")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--data-file", stored, "--label-key", "type", "--stream", "--block-cells", str(BLOCK),
                       "--n-clusters", "3", "--pretrain-epochs", "3", "--maxiter", "2", "--batch-size", "32",
                       "--init-cells", "120",
                       "--save-dir", save, "--quiet"])
    assert exc.value.code in (0, None), capfd.readouterr().err
    labels = np.loadtxt(os.path.join(save, "pred_labels.txt"))
    assert labels.shape == (260,) and labels[7] == -1 and set(np.unique(labels[labels >= 0])) <= {0, 1, 2}
    assert np.isnan(np.loadtxt(os.path.join(save, "final_latent_file.txt"), delimiter=",")[7]).all()
    with open(os.path.join(save, "run.json")) as fh:
        run = json.load(fh)
    assert run["streamed"] == {"block_cells": BLOCK} and run["n_cells_kept"] == 259
    assert run["config"]["init_cells"] == 120
    assert os.path.isfile(os.path.join(save, "model", "manifest.json"))


def test_cells_held_with_padding_rows_train_and_assign_as_without_them(stored):
    """A run over several processes holds the cells split by rows over the devices, padded to a
    multiple of them (:meth:`InMemory.process_rows`): the epochs never draw a padding row, and the
    encoder, the soft assignments and the DEC target's cluster frequencies leave them out."""
    prep = prepare(read_counts(stored))
    n = prep.shape[0]
    whole = device_data(prep)
    pad = 5
    padded = whole._replace(**{f: jax.numpy.concatenate([getattr(whole, f), jax.numpy.zeros_like(getattr(whole, f)[:pad])
                                                         + (1.0 if f in ("scale", "sf") else 0)])
                               for f in ("counts", "scale", "sf", "const")})
    assert padded.n_cells == n + pad
    cfg = ClusterConfig(batch_size=32, **SMALL)
    graphdef, ae = build_model(cfg, prep.shape[1], seed=0)
    tx = amsgrad_torch()
    loss = partial(pretrain_loss, graphdef=graphdef, sigma=2.5)
    copy = partial(jax.tree.map, lambda a: a.copy())
    plain, held = InMemory(whole, batch_size=32), InMemory(padded, batch_size=32, n_cells=n)
    assert held.n_cells == n
    key = stage_key(0, 1, 0)
    (a, _, ma), (b, _, mb) = (src.epoch(loss, tx, shuffle=True)(copy(ae), tx.init(ae), key) for src in (plain, held))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert float(ma["loss"]) == float(mb["loss"])
    np.testing.assert_array_equal(held.encoder(graphdef)(a), plain.encoder(graphdef)(a))
    mu = jax.numpy.asarray(np.random.default_rng(0).normal(size=(3, cfg.latent)).astype(np.float32))
    got, want = (src.assigner(graphdef, 1.0)({"ae": a, "mu": mu}) for src in (held, plain))
    for x, y in zip(got, want):
        assert np.asarray(x).shape[0] == n
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    # ensemble members (stacked parameters): the same, member by member (to float32 rounding: the
    # members' products are batched)
    two = jax.tree.map(lambda x: jax.numpy.stack([x, x]), {"ae": a, "mu": mu})
    z_two = held.encoder(graphdef, members=True)(two["ae"])
    assert z_two.shape == (2, n, cfg.latent)
    np.testing.assert_allclose(z_two[1], plain.encoder(graphdef)(a), rtol=1e-5, atol=1e-6)
    for x, y in zip(held.assigner(graphdef, 1.0, members=True)(two), want):
        assert np.asarray(x).shape[:2] == (2, n)
        np.testing.assert_allclose(np.asarray(x)[1], np.asarray(y), rtol=1e-5, atol=1e-6)


def test_initial_clusters_of_a_subsample_put_the_rest_in_the_nearest_centre():
    from scdc_jax.cluster.init import nearest_centre, subsample

    rng = np.random.default_rng(1)
    z, c = rng.normal(size=(1000, 5)), rng.normal(size=(4, 5))
    brute = np.argmin(((z[:, None] - c[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest_centre(z, c, chunk=128), brute)
    some = subsample(1000, 100, seed=3)
    assert len(some) == 100 and len(np.unique(some)) == 100 and np.all(np.diff(some) > 0)
    np.testing.assert_array_equal(subsample(1000, 100, seed=3), some)  # the seed decides
    np.testing.assert_array_equal(subsample(50, 100, seed=3), np.arange(50))
