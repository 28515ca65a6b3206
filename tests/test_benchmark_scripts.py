"""The benchmark scripts' own bookkeeping (no training here)."""

from __future__ import annotations

import json

import pytest

from benchmarks import accuracy


def _row(impl, dataset, seed, mode="estimated", **extra):
    return {"impl": impl, "dataset": dataset, "seed": seed, "mode": mode,
            "ari": 0.5, "nmi": 0.6, "acc": 0.7, "k": 9, "wall_s": 1.0, **extra}


def test_resume_keeps_only_finished_requested_runs(tmp_path):
    log = tmp_path / "run.log"
    incomplete = _row("torch_f32", "pbmc", 1)
    del incomplete["ari"]
    lines = ["resuming: something", json.dumps(_row("scdc_jax", "bladder", 0)), "Traceback (most recent call last):",
             json.dumps(_row("scdc_jax", "bladder", 7)),            # a seed not asked for now
             json.dumps(_row("scdc_jax", "worm", 0, mode="given")),  # another mode
             json.dumps(incomplete), "[1, 2]", "{not json"]
    log.write_text("\n".join(lines) + "\n")
    runs = [(i, d, s, "estimated") for d in ("bladder", "pbmc") for i in ("scdc_jax", "torch_f32") for s in (0, 1)]
    done = accuracy.load_rows(str(log), runs)
    assert list(done) == [("scdc_jax", "bladder", 0, "estimated")]
    assert done[("scdc_jax", "bladder", 0, "estimated")]["ari"] == 0.5


def test_resume_from_a_missing_log_is_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="is not a file"):
        accuracy.load_rows(str(tmp_path / "nope.log"), [])


UPSTREAM = "/tmp/upstream_scdc"  # a scratch checkout of ttgump/scDeepCluster_pytorch, never in the repository


def test_upstream_folder_without_the_reference_is_one_sentence(tmp_path):
    from benchmarks import speed

    (tmp_path / "layers.py").write_text("")
    with pytest.raises(SystemExit) as err:
        speed.main(["--upstream", str(tmp_path)])
    msg = str(err.value.code)
    assert msg == (f"--upstream {tmp_path} must be a checkout of ttgump/scDeepCluster_pytorch, but it lacks "
                   "scDeepCluster.py.")


def test_upstream_pretraining_epoch_runs_on_its_own_model():
    import os

    if not os.path.isfile(os.path.join(UPSTREAM, "scDeepCluster.py")):
        pytest.skip(f"no upstream checkout in {UPSTREAM} (put ttgump/scDeepCluster_pytorch there to run this)")
    from conftest import synthetic_counts

    from benchmarks import speed
    from scdc_jax.cluster import ClusterConfig
    from scdc_jax.io import CountData
    from scdc_jax.preprocess import prepare

    module = speed.load_upstream(UPSTREAM)
    prep = prepare(CountData(X=synthetic_counts(100, 40)[0]))
    cfg = ClusterConfig(encoder=[16, 8], latent=4, decoder=[8, 16], batch_size=32)
    model, run = speed.upstream_pretrain(module, prep, cfg, "cpu")
    assert model._enc_mu.out_features == 4 and model._dec_mean[0].out_features == prep.shape[1]
    before = [p.detach().clone() for p in model.parameters()]
    run()
    assert all(not (a == b.detach()).all() for a, b in zip(before, model.parameters()))  # it trained


def test_ensemble_summary_compares_the_consensus_with_its_members(tmp_path):
    import argparse

    def members(aris):
        return [{"seed": i, "ari": a, "nmi": a, "acc": a, "agreement": a, "silhouette": -a, "zinb": -a,
                 "cluster_epochs": 5} for i, a in enumerate(aris)]

    rows = [_row("scdc_jax_ens3", "worm", s, mode="given", members=members(aris), agreement=0.5, k_estimate=None,
                 best_by={"agreement": max(aris), "silhouette": min(aris), "zinb": max(aris)}, ari=cons, device="cpu")
            for s, aris, cons in ((0, [0.4, 0.5, 0.6], 0.7), (3, [0.45, 0.5, 0.55], 0.8))]
    args = argparse.Namespace(mode=["given"], datasets=["worm", "pbmc"], tag="_t")
    accuracy.write_ensemble_summary(rows, args, str(tmp_path))
    out = json.load(open(tmp_path / "accuracy_ensemble_t.json"))["summary"]["worm/given"]
    single = [0.4, 0.5, 0.6, 0.45, 0.5, 0.55]
    import numpy as np

    assert out["single_ari"] == single and out["consensus_ari"] == [0.7, 0.8]
    assert out["gap_in_single_sd"] == pytest.approx((0.75 - np.mean(single)) / np.std(single, ddof=1))
    # agreement and -zinb rise with ARI in these members, silhouette falls
    assert out["spearman"] == pytest.approx({"agreement": 1.0, "silhouette": -1.0, "zinb": 1.0})
    md = (tmp_path / "accuracy_ensemble_t.md").read_text()
    assert "| worm | given | 2 x 3 |" in md and "pbmc" not in md and "(member start)" in md
    # members that started from the vote are not single runs: no distance from single runs
    for r in rows:
        r["ensemble_init"] = "consensus"
    accuracy.write_ensemble_summary(rows, args, str(tmp_path))
    out = json.load(open(tmp_path / "accuracy_ensemble_t.json"))["summary"]["worm/given"]
    assert np.isnan(out["gap_in_single_sd"]) and "(consensus start)" in (tmp_path / "accuracy_ensemble_t.md").read_text()


def test_ensemble_init_summary_pairs_the_starts_on_the_same_members():
    from benchmarks import ensemble_init

    def start(members, vote):
        return {"member_ari": members, "vote_ari": vote, "cluster_s": 10.0}

    rows = [{"dataset": "worm", "seed": s, "members": 2, "member": start(m, vm), "consensus": start(c, vc),
             "joint": start(c, vj)}
            for s, m, vm, c, vc, vj in ((0, [0.4, 0.6], 0.55, [0.6, 0.62], 0.65, 0.5),
                                        (4, [0.5, 0.5], 0.5, [0.5, 0.52], 0.45, 0.6))]
    out, lines = ensemble_init.summarise(rows)
    import numpy as np

    single = [0.4, 0.6, 0.5, 0.5]
    assert out["worm"]["single_ari"] == single  # the member start's members: the single runs
    assert out["worm"]["paired_difference"]["consensus-member"] == pytest.approx([0.10, -0.05])
    assert out["worm"]["paired_difference"]["joint-member"] == pytest.approx([-0.05, 0.10])
    assert out["worm"]["paired_difference"]["joint-consensus"] == pytest.approx([-0.15, 0.15])
    sd = np.std(single, ddof=1)
    assert out["worm"]["gap_in_single_sd"]["consensus"] == pytest.approx((0.55 - 0.5) / sd)
    assert out["worm"]["gap_in_single_sd"]["joint"] == pytest.approx((0.55 - 0.5) / sd)
    assert "| worm | 2 x 2 |" in lines[2] and lines[2].count("1 of 2") == 3 and "joint - consensus start" in lines[0]
    assert len(lines[0].split("|")) == len(lines[1].split("|")) == len(lines[2].split("|"))
    # rows without a start (an older cache) are summarised over the starts they all have
    out, lines = ensemble_init.summarise([{k: v for k, v in r.items() if k != "joint"} for r in rows])
    assert set(out["worm"]["paired_difference"]) == {"consensus-member"} and "joint" not in lines[0]


def test_k_estimate_dec_summary_pairs_each_estimate_with_louvain_on_the_same_members():
    from benchmarks import k_estimate_dec

    def row(seed, k_l, k_r, votes):
        return {"dataset": "pbmc", "seed": seed, "true_k": 8, "members": 4,
                "estimates": {"louvain": {"k": k_l}, "resolution": {"k": k_r}},
                "runs": {str(k): {"vote_ari": v} for k, v in votes.items()}}

    # seed 4: the resolution estimate is the true k, so its run is the true k's
    rows = [row(0, 11, 6, {8: 0.75, 11: 0.58, 6: 0.66}), row(4, 12, 8, {8: 0.74, 12: 0.56})]
    out, lines = k_estimate_dec.summarise(rows, ["louvain", "resolution"])
    assert out["pbmc"]["k"] == {"louvain": [11, 12], "resolution": [6, 8]}
    assert out["pbmc"]["vote_ari"]["resolution"] == [0.66, 0.74] and out["pbmc"]["true_k_vote_ari"] == [0.75, 0.74]
    assert out["pbmc"]["paired_difference"]["resolution"] == pytest.approx([0.08, 0.18])
    assert "| pbmc | 8 | 2 x 4 | 11/12 | 0.570 ± 0.014 | 6/8 | 0.700 ± 0.057 |" in lines[2] and "2 of 2" in lines[2]
    assert len(lines[0].split("|")) == len(lines[1].split("|")) == len(lines[2].split("|"))


def test_ensemble_init_reads_scanpys_bundled_pbmcs_without_the_shared_data():
    from benchmarks import ensemble_init

    setup, k = ensemble_init._setup("pbmc68k", 2, 3)
    assert k == 10 and setup.labels.shape == (700,) and len(set(setup.labels.tolist())) == 10
    assert setup.cfg.n_clusters == 10 and setup.cfg.ensemble == 2 and setup.cfg.seed == 3 and setup.n_genes == 765


def test_paired_synthetic_types_differ_from_their_sibling_less_than_from_other_pairs():
    import numpy as np

    from benchmarks.gsrcl_protocol import draw_paired

    counts, labels = draw_paired(0, 1600, 4)
    again, _ = draw_paired(0, 1600, 4)
    assert counts.dtype == np.int32 and counts.shape == (1600, 2000)
    np.testing.assert_array_equal(counts, again)  # redrawn exactly from the seed
    np.testing.assert_array_equal(np.bincount(labels), [400] * 4)
    centres = np.stack([np.log1p(counts[labels == t]).mean(0) for t in range(4)])
    d = ((centres[:, None] - centres[None]) ** 2).sum(-1)
    assert d[0, 1] < d[0, 2] / 3 and d[2, 3] < d[1, 3] / 3  # siblings close, pairs apart


def test_consensus_script_scores_every_method_on_saved_members(tmp_path):
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from benchmarks import consensus
    from scdc_jax.cluster.ensemble import CONSENSUS, consensus_labels

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 40)
    for seed in (0, 3):
        labels = np.stack([np.where(rng.random(120) < 0.2, rng.integers(0, 3, 120), truth) for _ in range(3)])
        q = np.eye(3)[labels] * 0.7 + 0.1
        np.savez(tmp_path / f"worm_given_seed{seed}.npz", truth=truth, member_labels=labels, member_q=q,
                 consensus=labels[0], seeds=np.arange(seed, seed + 3), k=3,
                 criteria=json.dumps([{"agreement": a, "silhouette": 0.0, "zinb": 1.0} for a in (0.1, 0.9, 0.5)]))
    out = tmp_path / "res"
    consensus.main([str(tmp_path), "--out", str(out), "--tag", "_t"])
    row = json.load(open(out / "consensus_t.json"))["rows"]["worm (given)"]
    assert row["ensembles"] == [0, 3] and len(row["single"]) == 6 and row["k"] == 3
    d = np.load(tmp_path / "worm_given_seed3.npz")
    for m in CONSENSUS:  # the library's consensus with the run's seed
        cons = consensus_labels(d["member_labels"], 3, method=m, member_q=d["member_q"], seed=3)
        assert row[m][1] == pytest.approx(adjusted_rand_score(truth, cons))
    assert row["best by agreement"][1] == pytest.approx(adjusted_rand_score(truth, d["member_labels"][1]))
    assert "| worm (given) | 3 | 2 x 3 |" in (out / "consensus_t.md").read_text()


def test_ensemble_speed_times_one_model_and_an_ensemble_on_the_same_cells():
    from benchmarks import ensemble_speed
    from conftest import synthetic_counts

    from scdc_jax.io import CountData
    from scdc_jax.preprocess import prepare

    prep = prepare(CountData(X=synthetic_counts(120, 40)[0]))
    for n in (1, 2):
        row = ensemble_speed.epoch_seconds(prep, n, 1)
        assert row["members"] == n
        assert all(row[s][t] > 0 for s in ("pretrain", "cluster") for t in ("compile_s", "epoch_s"))


SMALL = dict(pretrain_epochs=8, maxiter=15, batch_size=64)


@pytest.fixture(scope="module")
def pretrained_pair():
    """Two members (seeds 5, 6) pretrained as one ensemble on small synthetic data of 3 groups:
    (data, the ensemble's setup with k = 3, the stacked autoencoders, their latents)."""
    from conftest import synthetic_counts

    from scdc_jax.cluster import ClusterConfig, ensemble, pipeline
    from scdc_jax.cluster.source import InMemory
    from scdc_jax.cluster.train import abstract_model, device_data
    from scdc_jax.io import CountData
    from scdc_jax.preprocess import prepare

    counts, groups, _ = synthetic_counts(240, 80, n_groups=3)
    data = CountData(X=counts, labels=groups)
    cfg = ClusterConfig(n_clusters=3, ensemble=2, seed=5, **SMALL)
    prep = prepare(data)
    g = prep.shape[1]
    setup = pipeline._Setup(cfg, InMemory(device_data(prep), batch_size=cfg.batch_size), abstract_model(cfg, g)[0],
                            g, 0, prep.data.labels, None, False)
    ae, _ = ensemble._pretrain(setup, [5, 6], pipeline._Progress)
    return data, setup, ae, setup.source.encoder(setup.graphdef, members=True)(ae)


def test_epoch_choice_scores_every_epoch_and_stops_each_member_where_a_single_run_stops(pretrained_pair):
    import numpy as np

    from benchmarks import epoch_choice
    from scdc_jax.cluster import ClusterConfig, run

    data, setup, ae, z = pretrained_pair
    rec = epoch_choice.trajectory(setup, ae, z, 3, [5, 6], "member", maxiter=15, sil_cells=200)
    assert len(rec["member_ari"]) == len(rec["vote_ari"]) == len(rec["silhouette"]) == len(rec["delta"]) == 16
    assert np.shape(rec["zinb"]) == (2, 15)  # epochs 0..15 scored, 15 trained
    assert all(-1 <= a <= 1 for a in rec["agreement"])
    single = run(data, ClusterConfig(n_clusters=3, seed=6, **SMALL), progress=False)
    # member 1 is the single run of seed 6: the rule stops it where that run stopped, with its labels
    published = rec["rules"]["0.001"]
    assert single.stop_reason == "tol" and published["stop_epoch"][1] == single.history["scores"][-1]["epoch"] < 15
    assert published["member_ari"][1] == pytest.approx(single.scores["ari"], abs=1e-6)
    scored = single.history["scores"]
    assert [d[1] for d in rec["delta"][1:len(scored)]] == pytest.approx([s["delta"] for s in scored[1:]])
    # a larger tol never stops later
    assert rec["rules"]["0.01"]["stop_epoch"][1] <= rec["rules"]["0.002"]["stop_epoch"][1] <= published["stop_epoch"][1]
    assert rec["member_ari"][0][1] == pytest.approx(single.history["scores"][0]["ari"], abs=1e-6)  # its k-means start
    row = {"dataset": "toy", "members": 2, "member": rec, "joint": rec}
    c = epoch_choice.choices(row)
    assert all(lab >= stop - 1e-12 for lab, stop in zip(c["single"]["labels"], c["single"]["tol 0.001"]))
    assert c["single"]["labels"] == np.max(rec["member_ari"], axis=0).tolist()
    assert c["single"]["last"] == rec["member_ari"][-1] and c["vote"]["labels"] == max(rec["vote_ari"])
    out, lines = epoch_choice.summarise([row, {**row, "seed": 1}])
    assert out["toy"]["difference_from_published_rule"]["single"]["tol 0.001"] == 0.0
    assert len(out["toy"]["single"]["labels"]) == 4 and len(lines) == 4  # two runs of 2 members; single and vote rows
    assert len({len(line.split("|")) for line in lines}) == 1


def test_a_cached_benchmark_parses_its_flags_and_skips_in_one_sentence_without_the_data(tmp_path, monkeypatch):
    import argparse
    import sys

    from benchmarks.common import parse_cached

    monkeypatch.setattr(sys, "argv", ["bench", "--cache", str(tmp_path / "cache"), "--tag", "_x"])
    with pytest.raises(SystemExit, match=r"^skipped: .*nodata is absent"):
        parse_cached(argparse.ArgumentParser(), str(tmp_path / "nodata"), str(tmp_path / "results"))
    assert not (tmp_path / "cache").exists()
    (tmp_path / "data").mkdir()
    args = parse_cached(argparse.ArgumentParser(), str(tmp_path / "data"), str(tmp_path / "results"))
    assert (args.tag, args.out) == ("_x", str(tmp_path / "results")) and (tmp_path / "cache").is_dir()


def test_k_estimate_dec_single_runs_are_the_members_runs_without_a_number_of_clusters(pretrained_pair):
    from benchmarks import k_estimate_dec
    from scdc_jax.cluster import ClusterConfig, run

    data, setup, ae, _ = pretrained_pair
    runs = k_estimate_dec.single_runs(setup, ae, [5, 6])
    single = run(data, ClusterConfig(n_clusters=0, seed=6, **SMALL), progress=False)
    # member 1 run alone with its own Louvain estimate is the single run of seed 6 (small data: no drift)
    assert runs[1]["seed"] == 6 and runs[1]["k"] == single.centers.shape[0]
    assert runs[1]["ari"] == pytest.approx(single.scores["ari"], abs=1e-6)
    assert runs[1]["epochs"] == len(single.history["cluster"])
    assert runs[0]["seed"] == 5 and runs[0]["k"] >= 2


def test_k_estimate_dec_compares_each_estimates_vote_with_the_single_runs():
    from benchmarks import k_estimate_dec

    def row(seed, k_l, k_r, votes, single):
        return {"dataset": "pbmc", "seed": seed, "true_k": 8, "members": 2,
                "estimates": {"louvain": {"k": k_l}, "resolution": {"k": k_r}},
                "runs": {str(k): {"vote_ari": v} for k, v in votes.items()},
                "single": [{"seed": seed + i, "k": k, "ari": a} for i, (k, a) in enumerate(single)],
                "single_kmeans": [{"seed": seed + i, "k": k, "ari": a + 0.1 * i} for i, (k, a) in enumerate(single)]}

    rows = [row(0, 11, 6, {8: 0.75, 11: 0.58, 6: 0.66}, [(11, 0.5), (12, 0.6)]),
            row(2, 12, 8, {8: 0.74, 12: 0.56}, [(11, 0.55), (10, 0.55)])]
    out, lines = k_estimate_dec.against_single(rows, ["louvain", "resolution"])
    s = out["pbmc"]
    assert s["single_mean"] == pytest.approx(0.55) and s["single_sd"] == pytest.approx(0.0408248, abs=1e-6)
    assert s["single_k"] == [11, 12, 11, 10]
    # louvain: votes 0.58, 0.56 (mean 0.57, +0.49 sd, not above one sd), each above its members' 0.55
    assert s["louvain"]["sds_from_single"] == pytest.approx(0.02 / 0.0408248, abs=1e-4)
    assert not s["louvain"]["above_one_sd"] and s["louvain"]["beats_own_members"] == 2
    # resolution: 0.66, 0.74 (mean 0.70, above one sd), beats both
    assert s["resolution"]["above_one_sd"] and s["resolution"]["beats_own_members"] == 2
    assert "| pbmc | 4 | 10-12 (median 11) | 0.550 ± 0.041 |" in lines[2]
    assert len(lines[0].split("|")) == len(lines[1].split("|")) == len(lines[2].split("|"))
    # the same against the k-means-start single runs (0.5, 0.7, 0.55, 0.65)
    km, _ = k_estimate_dec.against_single(rows, ["louvain", "resolution"], "single_kmeans")
    assert km["pbmc"]["single_mean"] == pytest.approx(0.6) and km["pbmc"]["louvain"]["beats_own_members"] == 0
    starts, lines = k_estimate_dec.single_starts(rows)
    assert starts["pbmc"]["paired_difference"] == pytest.approx([0.0, 0.1, 0.0, 0.1])
    assert starts["pbmc"]["higher"] == 2 and "| 2 of 4 |" in lines[2]


def test_missing_genes_mean_fill_with_no_gene_missing_is_predict(tmp_path):
    """The benchmark's alternative fill is computed outside the product: with nothing missing it
    must give predict's own labels, so that the comparison measures the fill alone."""
    import numpy as np
    from conftest import synthetic_counts

    from benchmarks import missing_genes
    from scdc_jax.cluster import ClusterConfig, predict, run
    from scdc_jax.io import CountData

    X, groups, _ = synthetic_counts(200, 60, seed=5)
    data = CountData(X=X, labels=groups, gene_names=np.array([f"g{i}" for i in range(60)]))
    cfg = ClusterConfig(n_clusters=3, pretrain_epochs=5, maxiter=2, batch_size=64, encoder=[32, 16], decoder=[16, 32],
                        latent=4)
    run(data.subset(cells=np.arange(150)), cfg, save_dir=str(tmp_path), progress=False)
    query = data.subset(cells=np.arange(150, 200))
    share = np.full(60, 1 / 60)
    got = missing_genes.mean_fill_labels(missing_genes.load_model(str(tmp_path)), query, np.array([], np.int64), share)
    np.testing.assert_array_equal(got, predict(str(tmp_path), query)["labels"])
