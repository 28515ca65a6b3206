"""The batch MMD term, the batch-mixing metrics (kNN mixing, iLISI) and ``batch_mmd`` in a run."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import synthetic_counts

from scdc_jax.losses import batch_mmd
from scdc_jax.metrics import batch_mixing, ilisi, knn_mixing


def mmd_reference(z, batch, groups=None, scales=(0.25, 1.0, 4.0)):
    """float64 transcription: sum over (group, batch) pairs of the pair's share of the cells times
    MMD^2 between the pair's cells and the group's cells, Gaussian kernels scaled by the mean
    squared distance of all cells."""
    z = np.asarray(z, np.float64)
    n = len(z)
    groups = np.zeros(n, int) if groups is None else np.asarray(groups)
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    m = d2.mean()
    kern = sum(np.exp(-d2 / (s * m)) for s in scales)

    def mean_k(a, b):
        return kern[np.ix_(a, b)].mean()

    total = 0.0
    for g in np.unique(groups):
        in_g = np.flatnonzero(groups == g)
        for b in np.unique(batch[in_g]):
            pair = in_g[batch[in_g] == b]
            total += len(pair) / n * (mean_k(pair, pair) - 2 * mean_k(pair, in_g) + mean_k(in_g, in_g))
    return total


@pytest.fixture
def shifted():
    rng = np.random.default_rng(0)
    types = rng.integers(0, 3, 120)
    batch = rng.integers(0, 2, 120)
    z = rng.normal(size=(120, 5)) + 4.0 * np.eye(5)[types] + 3.0 * np.eye(5)[3 + batch]
    return z.astype(np.float32), batch, types


def test_batch_mmd_matches_the_float64_formula(shifted):
    z, batch, types = shifted
    onehot = np.eye(2, dtype=np.float32)[batch]
    np.testing.assert_allclose(float(batch_mmd(z, onehot)), mmd_reference(z, batch), rtol=2e-4)
    np.testing.assert_allclose(float(batch_mmd(z, onehot, groups=np.eye(3, dtype=np.float32)[types])),
                               mmd_reference(z, batch, types), rtol=2e-4)
    three = np.eye(3, dtype=np.float32)[np.arange(120) % 3]
    np.testing.assert_allclose(float(batch_mmd(z, three)), mmd_reference(z, np.arange(120) % 3), rtol=2e-4)


def test_batch_mmd_masks_scale_and_limits(shifted):
    z, batch, types = shifted
    onehot = np.eye(2, dtype=np.float32)[batch]
    full = float(batch_mmd(z, onehot))
    assert full > 0.05
    mask = np.arange(120) < 90
    np.testing.assert_allclose(float(batch_mmd(z, onehot, mask)), float(batch_mmd(z[:90], onehot[:90])), rtol=1e-5)
    np.testing.assert_allclose(float(batch_mmd(10.0 * z, onehot)), full, rtol=1e-4)  # scale-free
    assert abs(float(batch_mmd(z, np.eye(2, dtype=np.float32)[np.zeros(120, int)]))) < 1e-5  # one batch
    # the same cells with the batch shift removed are (nearly) mixed
    unshifted = z - 3.0 * np.eye(5, dtype=np.float32)[3 + batch]
    assert float(batch_mmd(unshifted, onehot)) < full / 5


def test_grouped_mmd_ignores_composition_differences():
    """Batches holding the types in other proportions, but each type the same in both: the plain
    MMD sees a discrepancy, the MMD within types almost none."""
    rng = np.random.default_rng(1)
    types = rng.integers(0, 2, 300)
    batch = np.where(rng.random(300) < 0.8, types, 1 - types)  # batch 0 mostly type 0
    z = (rng.normal(size=(300, 4)) + 5.0 * np.eye(4)[types]).astype(np.float32)
    onehot = np.eye(2, dtype=np.float32)[batch]
    plain = float(batch_mmd(z, onehot))
    within = float(batch_mmd(z, onehot, groups=np.eye(2, dtype=np.float32)[types]))
    assert within < plain / 4, (plain, within)


def test_knn_mixing_and_ilisi_from_mixed_to_apart(shifted):
    z, batch, types = shifted
    rng = np.random.default_rng(2)
    mixed = z - 3.0 * np.eye(5, dtype=np.float32)[3 + batch]
    apart = mixed + 30.0 * np.eye(5, dtype=np.float32)[3 + batch]
    m_mixed, m_apart = knn_mixing(mixed, batch, k=15, groups=types), knn_mixing(apart, batch, k=15, groups=types)
    assert m_mixed["ratio"] > 0.8 and m_apart["observed"] == 0.0 and m_apart["ratio"] == 0.0
    assert m_mixed["expected"] == m_apart["expected"]
    assert 1.6 < ilisi(mixed, batch, perplexity=10) <= 2.0
    assert ilisi(apart, batch, perplexity=10) < 1.01
    three = rng.integers(0, 3, 120)
    assert 2.0 < ilisi(mixed, three, perplexity=10) <= 3.0  # above what two batches can reach


def test_knn_mixing_expected_value_within_groups():
    """Hand-counted: group 0 holds batches (a, a, b), group 1 (b, b): a cell's chance of an
    other-batch neighbour drawn from its group is 1/2, 1/2, 1, 0, 0 -> mean 0.4."""
    z = np.array([[0.0], [0.1], [0.2], [10.0], [10.1]])
    m = knn_mixing(z, np.array(["a", "a", "b", "b", "b"]), k=1, groups=np.array([0, 0, 0, 1, 1]))
    assert m["expected"] == pytest.approx(0.4)
    assert m["observed"] == pytest.approx(np.mean([0, 0, 1, 0, 0]))  # nearest neighbours 1, 0, 1, 4, 3
    assert m["ratio"] == pytest.approx(0.5)


def test_batch_mixing_subsamples_reproducibly(shifted):
    z, batch, types = shifted
    a = batch_mixing(z, batch, groups=types, max_cells=80, k=10, perplexity=5, seed=3)
    b = batch_mixing(z, batch, groups=types, max_cells=80, k=10, perplexity=5, seed=3)
    assert a == b and a["cells"] == 80 and a["n_batches"] == 2
    whole = batch_mixing(z, batch, groups=types, k=10, perplexity=5)
    assert whole["cells"] == 120  # one neighbour search serves both measures, as separate calls give them
    assert whole["knn_mixing"] == knn_mixing(z, batch, k=10, groups=types)
    assert whole["ilisi"] == ilisi(z, batch, perplexity=5)


FAST = dict(pretrain_epochs=60, maxiter=20, batch_size=64, kmeans_n_init=5, encoder=[64, 32], decoder=[32, 64],
            latent=8, checkpoint_every=10)


def test_cluster_loss_adds_the_mmd_within_clusters():
    import jax

    from scdc_jax.cluster import ClusterConfig
    from scdc_jax.cluster.train import _take, build_model, cluster_loss, device_data
    from scdc_jax.io import CountData
    from scdc_jax.preprocess import prepare

    X, groups, batches = synthetic_counts(200, 60, seed=3, n_batches=2, batch_effect=1.0)
    onehot = np.eye(2, dtype=np.float32)[batches]
    prep = prepare(CountData(X=X, batch=onehot, batch_names=["p", "q"]))
    graphdef, ae = build_model(ClusterConfig(**FAST), prep.shape[1], 0, n_batches=2)
    p = np.eye(3, dtype=np.float32)[groups[:64]] * 0.9 + 0.1 / 3
    params = {"ae": ae, "mu": np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)}
    batch = {**_take(device_data(prep), np.arange(64)), "mask": np.ones(64, bool), "p": p}
    key = jax.random.key(0)
    kw = dict(graphdef=graphdef, sigma=2.5, gamma=1.0)
    base, m0 = cluster_loss(params, batch, key, **kw)
    with_mmd, m1 = cluster_loss(params, batch, key, batch_mmd=2.0, **kw)
    assert "mmd" not in m0 and float(m1["mmd"]) > 0
    np.testing.assert_allclose(float(with_mmd), float(base) + 2.0 * float(m1["mmd"]), rtol=1e-6)
    z = nnx_encode(graphdef, ae, batch)
    np.testing.assert_allclose(float(m1["mmd"]), float(batch_mmd(z, onehot[:64], groups=p)), rtol=1e-5)
    assert float(m1["zinb"]) == float(m0["zinb"]) and float(m1["kl"]) == float(m0["kl"])


def nnx_encode(graphdef, state, batch):
    from flax import nnx

    return nnx.merge(graphdef, state).encode(batch["x"], batch["b"])


def test_run_with_batch_mmd_pulls_clusters_together_across_batches():
    """One batch sequenced at a fifth of the depth (binomial thinning, which the batch-conditioned
    model alone does not fully undo): the clustering stage with the MMD term ends with a much
    smaller MMD between the batches within the clusters, better kNN mixing, and the clusters kept."""
    from scdc_jax.cluster import ClusterConfig, run
    from scdc_jax.io import CountData

    X, groups, _ = synthetic_counts(300, 120, seed=6)
    rng = np.random.default_rng(0)
    batches = rng.permutation(np.arange(300) % 2)
    X[batches == 1] = rng.binomial(X[batches == 1], 0.2)
    onehot = np.eye(2, dtype=np.float32)[batches]
    data = CountData(X=X, labels=groups, label_names=["a", "b", "c"], batch=onehot, batch_names=["p", "q"])
    cfg = dict(n_clusters=3, **{**FAST, "tol": 1e-9})  # every one of the maxiter clustering epochs
    with_b = run(data, ClusterConfig(**cfg), progress=False)
    mixed = run(data, ClusterConfig(batch_mmd=5.0, **cfg), progress=False)
    assert with_b.mixing["n_batches"] == 2 and "mmd" not in with_b.history["cluster"][0]
    assert all("mmd" in e for e in mixed.history["cluster"])

    def within(res):
        return float(batch_mmd(res.latent, onehot[res.cells], groups=np.eye(3, dtype=np.float32)[res.labels]))

    assert within(mixed) < 0.3 * within(with_b), (within(mixed), within(with_b))
    assert mixed.mixing["knn_mixing"]["ratio"] > with_b.mixing["knn_mixing"]["ratio"] + 0.05
    assert mixed.scores["ari"] > with_b.scores["ari"] - 0.1, (mixed.scores, with_b.scores)
    assert run(CountData(X=X), ClusterConfig(n_clusters=3, **FAST), progress=False).mixing is None


def test_batch_mmd_without_batches_is_refused_before_any_output(tmp_path):
    from scdc_jax.cluster import ClusterConfig, run
    from scdc_jax.errors import InputError
    from scdc_jax.io import CountData

    X, _, _ = synthetic_counts(100, 40, seed=1)
    with pytest.raises(InputError, match="the data has none"):
        run(CountData(X=X), ClusterConfig(n_clusters=3, batch_mmd=1.0, **FAST), save_dir=str(tmp_path / "out"),
            progress=False)
    assert not os.path.exists(tmp_path / "out")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="batch_mmd"):
            ClusterConfig(batch_mmd=bad).validate()


def test_cli_reports_batch_mixing(tmp_path, capfd):
    import h5py
    from conftest import run_module

    X, groups, batches = synthetic_counts(200, 60, seed=2, n_batches=2, batch_effect=1.0)
    path = str(tmp_path / "b.h5")
    with h5py.File(path, "w") as f:
        f["X"], f["Y"], f["B"] = X, groups, np.eye(2)[batches]
    out = tmp_path / "run"
    code, stdout, stderr = run_module(["-m", "scdc_jax.cluster", "--data-file", path, "--n-clusters", "3",
                                       "--pretrain-epochs", "5", "--maxiter", "3", "--batch-mmd", "1",
                                       "--save-dir", str(out)], capfd)
    assert code == 0, stderr
    assert "iLISI" in stdout
    summary = json.load(open(out / "run.json"))
    assert summary["config"]["batch_mmd"] == 1.0 and 1.0 <= summary["batch_mixing"]["ilisi"] <= 2.0
