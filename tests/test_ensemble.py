"""Seed ensembles: the vmapped epochs, the consensus and criteria, the estimate of k, the run and the CLI."""
from __future__ import annotations

import json
import os
from functools import partial
from types import SimpleNamespace

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_module, synthetic_counts
from sklearn.metrics import adjusted_rand_score

from scdc_jax.cluster import ClusterConfig, run
from scdc_jax.cluster.ensemble import (CONSENSUS, RESOLUTIONS, best_member, consensus_labels, consensus_start,
                                       estimate_k, joint_latent, joint_start, membership, pairwise_ari, stack,
                                       stability_curve, start_partition)
from scdc_jax.cluster.init import centres_of
from scdc_jax.cluster.train import build_model, device_data, make_epoch, pretrain_loss, stage_key
from scdc_jax.io import CountData
from scdc_jax.optim import amsgrad_torch
from scdc_jax.preprocess import prepare


def _noisy_labelings(truth, n_members, flip, rng):
    """Labelings of ``truth``, each with its own label names and ``flip`` of the cells relabelled at random."""
    k = truth.max() + 1
    out = []
    for _ in range(n_members):
        lab = rng.permutation(k)[truth]
        wrong = rng.random(len(truth)) < flip
        lab[wrong] = rng.integers(0, k, wrong.sum())
        out.append(lab)
    return np.stack(out)


def test_membership_rows_give_the_coassociation_matrix():
    labels = np.array([[0, 0, 1, 1, 2], [1, 1, 1, 0, 0], [0, 1, 0, 1, 0]])
    h = membership(labels)
    co = (labels[:, :, None] == labels[:, None, :]).mean(0)
    np.testing.assert_allclose(h @ h.T, co, atol=1e-6)


@pytest.mark.parametrize("method", CONSENSUS)
def test_consensus_recovers_a_partition_better_than_any_noisy_member(method):
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(5), 60)
    members = _noisy_labelings(truth, 7, 0.3, rng)
    cons = consensus_labels(members, 5, method=method, seed=0)
    member_ari = [adjusted_rand_score(truth, m) for m in members]
    assert adjusted_rand_score(truth, cons) > max(member_ari) + 0.1, (member_ari, adjusted_rand_score(truth, cons))
    assert len(np.unique(cons)) == 5 and np.all(np.diff(np.bincount(cons)) <= 0)  # 0..4 by decreasing size


def test_vote_matches_clusters_across_members_and_weighs_their_soft_assignments():
    truth = np.repeat(np.arange(3), [50, 30, 20])
    rng = np.random.default_rng(3)
    members = np.stack([rng.permutation(3)[truth] for _ in range(4)])  # one partition, four namings
    np.testing.assert_array_equal(consensus_labels(members, 3, method="vote"), truth)
    # cell 0: two members put it in cluster 0, two in cluster 1, and the latter two are sure of it
    members[2:, 0] = members[2:, 60]
    q = np.stack([np.eye(3)[m] * 0.6 + 0.4 / 3 for m in members])
    q[2:, 0] = np.eye(3)[members[2:, 0]]
    assert consensus_labels(members, 3, method="vote", member_q=q)[0] == 1
    q[:2, 0] = np.eye(3)[members[:2, 0]]
    q[2:, 0] = np.eye(3)[members[2:, 0]] * 0.4 + 0.6 / 3
    assert consensus_labels(members, 3, method="vote", member_q=q)[0] == 0


def test_average_linkage_on_a_subsample_assigns_the_other_cells_by_co_association():
    rng = np.random.default_rng(2)
    truth = np.repeat(np.arange(4), 150)
    members = _noisy_labelings(truth, 6, 0.2, rng)
    whole = consensus_labels(members, 4, method="average", seed=1)
    part = consensus_labels(members, 4, method="average", seed=1, max_cells=200)
    assert adjusted_rand_score(truth, whole) > 0.95 and adjusted_rand_score(truth, part) > 0.95
    np.testing.assert_array_equal(part, consensus_labels(members, 4, method="average", seed=1, max_cells=200))
    with pytest.raises(ValueError, match="unknown consensus method"):
        consensus_labels(members, 4, method="median")


def _member_spaces(truth, n_members, rng, d=6, spread=1.6):
    """Each member's latent space: the groups of ``truth`` at random centres of its own, with noise."""
    k = truth.max() + 1
    return np.stack([rng.normal(size=(k, d))[truth] * 3.0 + rng.normal(scale=spread, size=(len(truth), d))
                     for _ in range(n_members)]).astype(np.float32)


def test_a_consensus_start_is_one_partition_at_each_members_own_centres():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(4), [80, 60, 40, 20])
    z = _member_spaces(truth, 4, rng)
    setup = SimpleNamespace(cfg=ClusterConfig(ensemble=4, ensemble_init="member", kmeans_n_init=3), say=print)
    c_own, own, used, agreement = start_partition(setup, z, 4, [0, 1, 2, 3])
    assert used == "member" and c_own.shape == (4, 4, 6)
    assert agreement == pytest.approx(pairwise_ari(own)[np.triu_indices(4, 1)].mean())
    setup.cfg = ClusterConfig(ensemble=4, ensemble_init="consensus", kmeans_n_init=3)
    centres, start, used, _ = start_partition(setup, z, 4, [0, 1, 2, 3])
    assert used == "consensus" and start.shape == (4, 200)
    assert all(np.array_equal(start[0], lab) for lab in start)  # every member starts from one partition
    for m in range(4):  # ... at that partition's centres in its own latent space
        np.testing.assert_allclose(centres[m], centres_of(z[m], start[0]), rtol=1e-5, atol=1e-5)
    own_ari = [adjusted_rand_score(truth, lab) for lab in own]
    assert adjusted_rand_score(truth, start[0]) >= np.mean(own_ari), own_ari


def test_the_joint_latent_weighs_every_member_alike():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(3, 50, 4)).astype(np.float32)
    moved = z.copy()
    moved[1] = moved[1] * 40.0 + 7.0  # one member's latent shifted and on a larger scale
    joint = joint_latent(moved)
    assert joint.shape == (50, 12)
    np.testing.assert_allclose(joint, joint_latent(z), atol=1e-5)
    for m in range(3):  # each block centred, mean squared norm 1
        block = joint[:, 4 * m:4 * m + 4]
        np.testing.assert_allclose(block.mean(0), 0.0, atol=1e-5)
        assert (block ** 2).sum(1).mean() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("init_cells", [0, 150])
def test_a_joint_start_sees_through_the_members_own_noise(init_cells):
    # four members whose own spaces separate the groups poorly, each with noise of its own
    rng = np.random.default_rng(5)
    truth = np.repeat(np.arange(5), [120, 80, 60, 40, 30])
    z = _member_spaces(truth, 4, rng, spread=3.5)
    setup = SimpleNamespace(cfg=ClusterConfig(ensemble=4, ensemble_init="member", kmeans_n_init=5), say=print)
    _, own, _, _ = start_partition(setup, z, 5, [0, 1, 2, 3])
    setup.cfg = ClusterConfig(ensemble=4, ensemble_init="joint", kmeans_n_init=5, init_cells=init_cells)
    centres, start, used, _ = start_partition(setup, z, 5, [0, 1, 2, 3])
    assert used == "joint" and start.shape == (4, 330)
    assert all(np.array_equal(start[0], lab) for lab in start)
    for m in range(4):
        np.testing.assert_allclose(centres[m], centres_of(z[m], start[0]), rtol=1e-5, atol=1e-5)
    own_ari = [adjusted_rand_score(truth, lab) for lab in own]
    joint_ari = adjusted_rand_score(truth, start[0])
    assert joint_ari > max(own_ari) + 0.1, (own_ari, joint_ari)
    assert np.all(np.diff(np.bincount(start[0])) <= 0)  # numbered by decreasing size
    # the same partition as joint_start itself gives
    np.testing.assert_array_equal(start[0], joint_start(z, 5, n_init=5, seed=0, init_cells=init_cells)[1])


def test_a_vote_with_fewer_clusters_than_k_leaves_each_member_its_own_start():
    # members agree on two groups; each puts a different single cell alone in its third cluster
    truth = np.repeat([0, 1], 30)
    labels = np.stack([truth.copy() for _ in range(3)])
    for m, cell in enumerate((0, 1, 2)):
        labels[m, cell] = 2
    z = np.stack([np.eye(3, dtype=np.float32)[lab] * 50.0 for lab in labels])  # sharp soft assignments
    centres = np.stack([np.eye(3, dtype=np.float32) * 50.0] * 3)
    assert consensus_start(z, centres, labels, 3) is None
    two = consensus_start(z[:, :, :2], centres[:, :2, :2], np.minimum(labels, 1) * (labels != 2), 2)
    assert two is not None and adjusted_rand_score(truth, two[1]) > 0.8


def test_pairwise_ari_and_best_member_directions():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(3), 50)
    members = np.stack([truth, truth, rng.integers(0, 3, 150)])
    ari = pairwise_ari(members)
    assert ari.shape == (3, 3) and np.allclose(np.diag(ari), 1) and np.allclose(ari, ari.T)
    assert ari[0, 1] == pytest.approx(1.0) and abs(ari[0, 2]) < 0.1
    crit = [{"agreement": 0.5, "silhouette": 0.1, "zinb": 2.0}, {"agreement": 0.7, "silhouette": float("nan"), "zinb": 1.0},
            {"agreement": 0.2, "silhouette": 0.3, "zinb": 3.0}]
    assert best_member(crit, "agreement") == 1
    assert best_member(crit, "silhouette") == 2  # nan never wins
    assert best_member(crit, "zinb") == 1  # the lowest loss


def _member_latents(k_true, n_members=3, n=400, seed=0):
    """Latent spaces of ``n_members`` "models" of the same ``k_true`` well separated groups: each its
    own random rotation, scale and noise of the group centres."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n) % k_true
    centres = rng.normal(0, 6, (k_true, 8))
    out = []
    for _ in range(n_members):
        rot = np.linalg.qr(rng.normal(size=(8, 8)))[0]
        out.append(((centres[groups] + rng.normal(0, 1, (n, 8))) @ rot * rng.uniform(0.5, 2)).astype(np.float32))
    return np.stack(out), groups


def test_stability_peaks_at_the_number_of_separated_groups_and_estimate_k_finds_it():
    z, groups = _member_latents(6)
    curve = stability_curve(z, range(2, 11), seed=0)
    # merging separated groups is as stable as finding them; cutting a group is not
    assert curve[6] > 0.95 and max(curve[k] for k in range(7, 11)) < curve[6] - 0.05, curve
    cfg = ClusterConfig(ensemble=3, k_estimate="stability", knn=15)
    k, info = estimate_k(z, cfg, [0, 1, 2])
    assert k == 6 and info["stability"][6] == curve[6] and len(info["louvain_k"]) == 3
    k_l, info_l = estimate_k(z, ClusterConfig(ensemble=3, knn=15), [0, 1, 2])
    assert k_l == int(np.round(np.median(info_l["louvain_k"]))) and "stability" not in info_l


def test_resolution_estimate_finds_the_groups_louvain_at_its_resolution_cuts_up():
    # 3 separated round groups in 2 dimensions, each member with its own noise and rotation: at
    # resolution 0.8 Louvain cuts every group into pieces (12-14 communities), differently in
    # each member; at low resolutions every member finds the 3 groups
    rng = np.random.default_rng(0)
    groups = np.arange(600) % 3
    centres = rng.normal(0, 1, (3, 2))
    centres *= 12 / np.linalg.norm(centres[0] - centres[1])
    z = np.stack([((centres[groups] + rng.normal(0, 1, (600, 2))) @ np.linalg.qr(rng.normal(size=(2, 2)))[0])
                  for _ in range(3)]).astype(np.float32)
    said = []
    k, info = estimate_k(z, ClusterConfig(ensemble=3, k_estimate="resolution", knn=15), [0, 1, 2], said.append)
    assert min(info["louvain_k"]) > 6, info["louvain_k"]
    assert k == 3 and info["resolution"][str(info["chosen_resolution"])]["k"] == [3, 3, 3]
    curve = info["resolution"]
    assert set(curve) == {str(r) for r in RESOLUTIONS}
    assert curve[str(info["chosen_resolution"])]["stability"] == max(v["stability"] for v in curve.values())
    assert curve["0.8"]["stability"] < 0.5 and "resolution 0.1" in said[0] and "estimate: 3 clusters" in said[0]


SMALL = dict(pretrain_epochs=8, maxiter=15, batch_size=64)


@pytest.fixture(scope="module")
def small_data():
    counts, groups, _ = synthetic_counts(240, 80, n_groups=3)
    return CountData(X=counts, labels=groups)


def test_a_vmapped_epoch_trains_each_member_as_it_trains_alone(small_data):
    # the shapes and settings of the pipeline's pretraining in the runs below (one compilation)
    prep = prepare(small_data)
    data = device_data(prep)
    cfg = ClusterConfig(**SMALL)
    tx = amsgrad_torch(cfg.lr_pretrain)
    graphdef, _ = build_model(cfg, prep.shape[1], 0)
    loss = partial(pretrain_loss, graphdef=graphdef, sigma=cfg.sigma, ridge_lambda=cfg.ridge_lambda)
    seeds = [5, 6, 7]
    alone = []
    epoch = make_epoch(loss, tx, n=prep.shape[0], batch_size=cfg.batch_size, shuffle=True)
    for s in seeds[:2]:
        params = build_model(cfg, prep.shape[1], s)[1]
        opt = tx.init(params)
        for e in range(2):
            params, opt, means = epoch(params, opt, data, stage_key(s, 1, e))
        alone.append((params, float(means["loss"])))
    params = stack([build_model(cfg, prep.shape[1], s)[1] for s in seeds])
    opt = jax.vmap(tx.init)(params)
    epoch = make_epoch(loss, tx, n=prep.shape[0], batch_size=cfg.batch_size, shuffle=True, members=True)
    for e in range(2):
        params, opt, means = epoch(params, opt, data, jnp.stack([stage_key(s, 1, e) for s in seeds]))
    assert means["loss"].shape == (3,)
    for m, (p_alone, loss_alone) in enumerate(alone):
        assert float(means["loss"][m]) == pytest.approx(loss_alone, rel=1e-5)
        for a, b in zip(jax.tree.leaves(p_alone), jax.tree.leaves(params)):
            np.testing.assert_allclose(np.asarray(b[m]), np.asarray(a), rtol=2e-4, atol=2e-5)
    assert abs(float(means["loss"][0]) - float(means["loss"][1])) > 1e-4  # the members differ


def test_an_ensemble_run_holds_single_runs_and_their_consensus(small_data, tmp_path):
    ens = run(small_data, ClusterConfig(n_clusters=3, seed=5, ensemble=3, ensemble_init="member", **SMALL),
              save_dir=str(tmp_path / "e"), progress=False)
    single = run(small_data, ClusterConfig(n_clusters=3, seed=6, **SMALL), progress=False)
    e = ens.ensemble
    assert e["seeds"] == [5, 6, 7] and e["member_labels"].shape == (3, 240) and e["init"] == "member"
    # member 1 is the single run of seed 6
    assert adjusted_rand_score(e["member_labels"][1], single.labels) == pytest.approx(1.0)
    assert e["criteria"][1]["cluster_epochs"] == len(single.history["cluster"])
    assert e["criteria"][1]["final_pretrain_loss"] == pytest.approx(single.history["pretrain_loss"][-1], rel=1e-5)
    assert e["criteria"][1]["ari"] == pytest.approx(single.scores["ari"])
    # the returned labels are the consensus; the latent and centres those of the member closest to it
    np.testing.assert_array_equal(ens.labels, e["consensus"])
    rep = e["representative"]
    assert ens.latent.shape == (240, 32) and ens.centers.shape == (3, 32) and np.isfinite(ens.latent).all()
    assert ens.scores["ari"] == pytest.approx(adjusted_rand_score(small_data.labels, e["consensus"]))
    ari = np.asarray(e["pairwise_ari"])
    assert e["agreement"] == pytest.approx(ari[np.triu_indices(3, 1)].mean())
    for c in e["criteria"]:
        assert {"agreement", "silhouette", "zinb", "seed", "stop_reason"} <= set(c)
        assert np.isfinite(c["zinb"]) and -1 <= c["silhouette"] <= 1
    # the saved model is that member, and predict reproduces its assignments of the training cells
    from scdc_jax.cluster.inference import predict

    pred = predict(str(tmp_path / "e"), small_data)
    q_rep = np.asarray(pred["q"])
    np.testing.assert_allclose(q_rep, ens.q, atol=2e-4)
    assert rep in range(3)


def test_best_member_selection_returns_that_members_labels(small_data):
    ens = run(small_data, ClusterConfig(n_clusters=3, seed=5, ensemble=3, ensemble_select="zinb", **SMALL),
              progress=False)
    e = ens.ensemble
    assert e["init"] == "joint" and -1.0 <= e["init_agreement"] <= 1.0  # the default start
    rep = best_member(e["criteria"], "zinb")
    assert e["representative"] == rep
    np.testing.assert_array_equal(ens.labels, e["member_labels"][rep])


def _h5(path, counts, labels):
    with h5py.File(path, "w") as f:
        f["X"] = counts
        f["Y"] = labels
    return str(path)


@pytest.mark.parametrize("init, says", [("joint", "started from k-means on their joint latent space (their own "
                                                 "k-means partitions agreed 0.420, mean ARI)"),
                                        ("consensus", "started from the vote of their k-means partitions (which "
                                                      "agreed 0.420, mean ARI)"),
                                        ("member", "started from their own k-means partitions (which agreed 0.420")])
def test_the_ensemble_line_names_the_start(init, says):
    from scdc_jax.cluster.__main__ import ensemble_line

    e = {"members": 4, "init": init, "init_agreement": 0.42, "agreement": 0.9, "select": "zinb", "representative": 2}
    line = ensemble_line(e)
    assert line.startswith("ensemble of 4: members " + says) and line.endswith("labels: zinb (member 2)")
    assert ensemble_line({**e, "select": "consensus"}).endswith("labels: consensus")


def test_cli_ensemble_writes_member_labels_and_criteria(small_data, tmp_path, capfd):
    data = _h5(tmp_path / "d.h5", small_data.X, small_data.labels)
    save = tmp_path / "run"
    code, out, err = run_module(["-m", "scdc_jax.cluster", "--data-file", data, "--ensemble", "3", "--n-clusters", "0",
                                 "--k-estimate", "stability", "--knn", "10", "--pretrain-epochs", "8", "--maxiter", "15",
                                 "--batch-size", "64", "--seed", "5", "--save-dir", save, "--quiet",
                                 "--consensus", "average", "--ensemble-init", "consensus", "--out", tmp_path / "o.h5ad"],
                                capfd)
    assert code == 0, err
    assert "ensemble of 3: members started from the vote of their k-means partitions (which agreed" in out
    assert "members' ARI" in out
    members = np.loadtxt(save / "ensemble_labels.csv", delimiter=",", dtype=np.int64)
    labels = np.loadtxt(save / "pred_labels.txt", dtype=np.int64)
    assert members.shape == (240, 3) and labels.shape == (240,)
    summary = json.load(open(save / "run.json"))
    e = summary["ensemble"]
    assert e["seeds"] == [5, 6, 7] and len(e["criteria"]) == 3 and e["k_estimate"]["method"] == "stability"
    assert e["consensus_method"] == "average" and summary["config"]["consensus"] == "average"
    assert e["init"] == summary["config"]["ensemble_init"] == "consensus"
    assert summary["n_clusters"] == e["k"] == len(np.unique(labels))
    assert set(e["k_estimate"]["stability"]) == {str(k) for k in range(2, max(e["k_estimate"]["louvain_k"]) + 1)}
    import anndata

    ad = anndata.read_h5ad(tmp_path / "o.h5ad")
    np.testing.assert_array_equal(ad.obsm["scdc_members"], members)
    assert list(ad.uns["scdc"]["ensemble"]["seeds"]) == [5, 6, 7]
    assert ad.uns["scdc"]["ensemble"]["consensus_method"] == "average"


@pytest.mark.parametrize("flags,message", [
    (["--ensemble", "0"], "--ensemble must be positive"),
    (["--ensemble", "2", "--resume"], "cannot be combined with --resume"),
    (["--k-estimate", "stability"], "compares the members of an ensemble"),
    (["--k-estimate", "resolution"], "compares the members of an ensemble"),
    (["--ensemble", "2", "--consensus", "median"], "invalid choice: 'median'"),
    (["--ensemble", "2", "--ensemble-init", "best"], "invalid choice: 'best'"),
    (["--ensemble", "2", "--ae-weights", "."], "cannot be combined with --ae-weights"),
])
def test_impossible_ensemble_flags_get_one_sentence(small_data, tmp_path, capfd, flags, message):
    data = _h5(tmp_path / "d.h5", small_data.X, small_data.labels)
    code, out, err = run_module(["-m", "scdc_jax.cluster", "--data-file", data, "--save-dir", tmp_path / "r", *flags],
                                capfd)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "r") or not os.listdir(tmp_path / "r")
