"""GsRCL: configuration, batching, training, the evaluation protocol, multi-device equality, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest
from conftest import ROOT, need_devices, run_module, synthetic_counts

from scdc_jax.errors import InputError
from scdc_jax.gsrcl.config import load_config
from scdc_jax.gsrcl.protocol import evaluate, make_task, results_table, text_summary
from scdc_jax.gsrcl.train import Trainer, make_batches
from scdc_jax.preprocess import log_transform
from scdc_jax.io import CountData

TINY = dict(encoder=[16, 8], head=[8, 4], epochs=6, eval_every=3, n_folds=2, svm_cv=2,
            svm_gamma=["scale"], svm_c=[1.0], lr=1e-3)


def write_h5(path, counts, labels, names=None):
    with h5py.File(path, "w") as f:
        f["X"] = counts.astype(np.int32)
        f["Y"] = labels.astype(np.int64)
        f["cell_types"] = np.array(names or [f"type{i}" for i in range(labels.max() + 1)], dtype="S")
        f["gene_names"] = np.array([f"g{i}" for i in range(counts.shape[1])], dtype="S")
        f["cell_names"] = np.array([f"c{i}" for i in range(counts.shape[0])], dtype="S")
    return str(path)


def test_config_defaults_and_validation(tmp_path):
    cfg = load_config(None)
    assert (cfg.temperature, cfg.lr, cfg.weight_decay, cfg.batch_size) == (0.07, 1e-4, 1e-6, 8192)
    assert cfg.n_epochs == 3000 and load_config(None, loss="supcon").n_epochs == 1000
    assert cfg.encoder == [4096, 4096, 4096, 2048] and cfg.head == [512, 128]
    paper = load_config(os.path.join(ROOT, "configs", "gsrcl_paper.toml"))
    assert paper.to_dict() == cfg.to_dict()
    cpu = load_config(os.path.join(ROOT, "configs", "gsrcl_cpu.toml"))
    assert cpu.encoder == [2048, 2048, 2048, 1024] and cpu.head == cfg.head and cpu.lr == cfg.lr
    assert cpu.encoder_mode == "shared" and cpu.n_epochs == 100 and cpu.eval_every == 10
    for bad in (dict(lr=0), dict(batch_size=-1), dict(temperature=0.0), dict(loss="byol"),
                dict(encoder=[8, 0]), dict(svm_gamma=[-1.0]), dict(val_fraction=1.0), dict(fold_batch="yes")):
        with pytest.raises(InputError):
            load_config(None, **bad)
    p = tmp_path / "c.toml"
    p.write_text("[gsrcl]\nepochz = 3\n")
    with pytest.raises(InputError, match="unknown"):
        load_config(str(p))


def test_batches_keep_every_row_in_order_and_pad():
    x = np.arange(30 * 2, dtype=np.float32).reshape(30, 2)
    b = make_batches(x, np.arange(30) % 3, batch_size=8, n_devices=3)
    assert b.x.shape == (4, 9, 2) and int(b.mask.sum()) == 30
    ids = np.asarray(b.ids)[np.asarray(b.mask)]
    np.testing.assert_array_equal(ids, np.arange(30))
    np.testing.assert_array_equal(np.asarray(b.x)[np.asarray(b.mask)], x)
    full = make_batches(x, None, batch_size=8192, n_devices=4)
    assert full.x.shape == (1, 32, 2) and int(full.mask.sum()) == 30


@pytest.mark.parametrize("loss", ["simclr", "supcon"])
def test_training_lowers_the_loss(loss):
    counts, y, _ = synthetic_counts(48, 30, seed=1)
    cfg = load_config(None, **{**TINY, "epochs": 16, "eval_every": 8, "lr": 3e-3, "loss": loss})
    seen = []
    trainer = Trainer(30, cfg)
    params, losses = trainer.fit(log_transform(counts), y, seed=0, callback=lambda e, p: seen.append(e))
    assert seen == [0, 8, 16] and len(losses) == 16  # epoch 0: the untrained network
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert trainer.encode(params, log_transform(counts)).shape == (48, 8)


@pytest.mark.parametrize("loss,batch_norm", [("simclr", False), ("supcon", False), ("simclr", True)])
def test_a_fold_batch_trains_each_fold_as_it_trains_alone(loss, batch_norm):
    """Three folds of 24, 30 and 33 cells in batches of 8 (3, 4 and 5 steps: the shorter folds get
    steps of padding only) trained as one vmapped program: each fold's losses, selection points
    and encodings are those of its own run.  The two programs differ only in float32 summation
    order (batched matmuls, reductions over padded rows): about 1e-7 relative per step, so after
    24 Adam steps the losses agree to 1e-5 and the encodings to 1e-5 absolute.  With BatchNorm the
    Dense biases before it have no gradient but rounding noise, which Adam scales to full steps,
    so there the losses (which do not depend on those biases) and the kernels are compared."""
    import jax

    rng = np.random.default_rng(0)
    xs = [log_transform(synthetic_counts(n, 20, seed=n)[0]) for n in (24, 30, 33)]
    ys = [rng.integers(0, 2, len(x)) for x in xs]
    seeds = [3, 7, 11]
    cfg = load_config(None, encoder=[16, 8], head=[8, 4], epochs=6, eval_every=3, lr=1e-3, batch_size=8,
                      loss=loss, batch_norm=batch_norm)
    trainer = Trainer(20, cfg)
    seen = {k: [] for k in range(3)}
    callbacks = [lambda e, st, k=k: seen[k].append((e, trainer.encode(st, xs[k]))) for k in range(3)]
    batched = trainer.fit_folds(xs, ys, seeds, callbacks=callbacks)
    for k in range(3):
        alone, points = [], []
        state, losses = trainer.fit(xs[k], ys[k], seeds[k], callback=lambda e, st: points.append(e) or
                                    alone.append(trainer.encode(st, xs[k])))
        assert [e for e, _ in seen[k]] == points == [0, 3, 6]
        np.testing.assert_allclose(batched[k][1], losses, rtol=1e-5)
        pairs = zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(batched[k][0]))
        if batch_norm:
            pairs = [((p, a), b) for (p, a), b in pairs if "kernel" in jax.tree_util.keystr(p)]
        else:
            for (_, h), h_alone in zip(seen[k], alone):
                np.testing.assert_allclose(h, h_alone, atol=1e-5)
        for (_, a), b in pairs:
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)


def test_fold_batch_option_and_its_evaluation_match_the_sequential_one(monkeypatch):
    from scdc_jax.gsrcl.train import use_fold_batch

    cfg = load_config(None, **TINY)
    assert cfg.fold_batch == "auto" and not use_fold_batch(cfg, 30, [40, 40])  # auto: sequential on a CPU
    assert use_fold_batch(load_config(None, **TINY, fold_batch="on"), 30, [40, 40])
    assert not use_fold_batch(load_config(None, **TINY, fold_batch="on"), 30, [40])
    assert not use_fold_batch(load_config(None, **TINY, fold_batch="on", batch_norm="auto"), 30, [8192, 8193])
    counts, y, _ = synthetic_counts(60, 30, n_groups=3, seed=4)
    data = CountData(X=counts, labels=y, label_names=["a", "b", "c"], source="synthetic")
    batches = []
    fit_folds = Trainer.fit_folds
    monkeypatch.setattr(Trainer, "fit_folds", lambda self, xs, *a, **kw: batches.append(len(xs)) or
                        fit_folds(self, xs, *a, **kw))
    for loss, types in (("simclr", None), ("supcon", ["b"])):  # shared encoders; per-type SupCon encoders
        runs = {fb: evaluate(data, load_config(None, **TINY, svm_workers=0, fold_batch=fb, loss=loss),
                             cell_types=types, progress=False) for fb in ("off", "on")}
        assert batches == [2]  # "on": the encoder's two folds in one batch
        batches.clear()
        for a, b in zip(runs["off"]["tasks"], runs["on"]["tasks"], strict=True):
            for fa, fb in zip(a["folds"], b["folds"], strict=True):
                assert fa["fold"] == fb["fold"] and fa["selection"] == fb["selection"]
                assert fa["gsrcl"] == fb["gsrcl"] and fa["raw"] == fb["raw"]
                assert fa["final_loss"] == pytest.approx(fb["final_loss"], rel=1e-5)


def test_small_types_are_skipped_with_a_reason():
    labels = np.array([0] * 20 + [1] * 20 + [2] * 3)
    cfg = load_config(None, **TINY)
    task = make_task(labels, 0, "big", cfg)
    assert not isinstance(task, str) and len(task.folds) == 2
    assert len(np.intersect1d(task.val, task.train)) == 0 and len(task.val) + len(task.train) == 43
    msg = make_task(labels, 2, "rare", cfg)
    assert isinstance(msg, str) and "rare" in msg and "skipping" in msg


def test_evaluate_protocol_on_synthetic_data():
    counts, y, _ = synthetic_counts(60, 30, n_groups=3, seed=2)
    y[:2] = 3  # a type with 2 cells: too small, skipped
    data = CountData(X=counts, labels=y, label_names=["a", "b", "c", "tiny"], source="synthetic")
    cfg = load_config(None, **TINY)
    res = evaluate(data, cfg, cell_types=["a", "tiny"], progress=False, log=lambda m: None)
    assert [t["cell_type"] for t in res["tasks"]] == ["a"] and "tiny" in res["skipped"][0]
    task = res["tasks"][0]
    assert len(task["folds"]) == 2 and all(f["best_epoch"] in (0, 3, 6) for f in task["folds"])
    for method in ("raw", "gsrcl"):  # the summary is the folds' mean and standard error
        mccs = np.array([f[method]["mcc"] for f in task["folds"]])
        assert task[method]["mcc_mean"] == pytest.approx(mccs.mean())
        assert task[method]["mcc_se"] == pytest.approx(mccs.std() / np.sqrt(len(mccs)))
    assert task["raw"]["mcc_mean"] > 0.5  # the groups are separable in gene space
    table = results_table(res, "synthetic")
    assert list(table["method"]) == ["raw", "gsrcl"]
    assert "MCC GsRCL" in text_summary(res, "synthetic")
    with pytest.raises(InputError, match="not among"):
        evaluate(data, cfg, cell_types=["zzz"], progress=False)


def test_four_devices_match_one_device():
    """One step's loss, gradients and BatchNorm statistics, whole training curves and a fold batch's
    curves on 4 devices equal those on 1 (to float32 rounding)."""
    import jax

    from scdc_jax.gsrcl.train import build_model, make_loss_fn, split_params
    from scdc_jax.parallel import make_mesh, replicated

    need_devices(4)
    rng = np.random.default_rng(0)
    x = np.log1p(rng.poisson(2.0, size=(30, 20))).astype(np.float32)
    y = rng.integers(0, 2, 30)
    for loss, bn, augment in (("simclr", False, "gaussian"), ("supcon", False, "gaussian"),
                              ("simclr", True, "gaussian"), ("simclr", False, "dropout")):
        cfg = load_config(None, encoder=[16, 8], head=[8, 4], loss=loss)
        graphdef, state = build_model(cfg, 20, 0, batch_norm=bn)
        params, stats = split_params(state)
        f = jax.jit(jax.value_and_grad(make_loss_fn(graphdef, loss=loss, augment=augment), has_aux=True))
        key = jax.random.key(3)
        one = make_batches(x, y, 8192, 1)
        (l1, s1), g1 = f(params, stats, one.x[0], one.mask[0], one.ids[0], one.labels[0], key)
        mesh = make_mesh(4)
        four = make_batches(x, y, 8192, 4, mesh)
        assert four.x.shape[1] == 32 and len(four.x.sharding.device_set) == 4
        rep = lambda t: jax.device_put(t, replicated(mesh))
        (l4, s4), g4 = f(rep(params), rep(stats), four.x[0], four.mask[0], four.ids[0], four.labels[0], key)
        np.testing.assert_allclose(float(l4), float(l1), rtol=1e-5)
        # float32 tolerance relative to the gradients' scale (other gradients reach ~30-400).  With
        # BatchNorm, the gradient of a Dense bias right before one is exactly 0 (BatchNorm subtracts
        # the batch mean, which absorbs the bias): each run's value is its own rounding noise, so
        # both must be near 0 rather than near each other.
        scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(g1))
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(g1)[0]]
        split = [p.split("['norms']") for p in paths if "['norms']" in p]  # [MLP's path, "[i]['scale'].value"]
        before_norm = {mlp + "['layers']" + rest[:rest.index("]") + 1] + "['bias'].value" for mlp, rest in split}
        assert len(before_norm) == (2 if bn else 0), before_norm  # the encoder's and the head's hidden layer
        for path, a, b in zip(paths, jax.tree.leaves(g1), jax.tree.leaves(g4)):
            if path in before_norm:
                assert max(np.abs(a).max(), np.abs(b).max()) <= 1e-5 * scale, (path, a, b)
            else:
                np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6 * max(1.0, scale))
        for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s4)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6 * max(1.0, scale))
        assert len(jax.tree.leaves(s1)) == (4 if bn else 0)  # mean and var of the 2 hidden BatchNorms
    # whole training runs: the loss curve on 4 devices is the 1-device curve (batches of 8 -> 4 steps)
    curves = {}
    for n in (1, 4):
        cfg = load_config(None, encoder=[16, 8], head=[8, 4], batch_size=8, epochs=6, eval_every=3,
                          lr=1e-3, devices=n, batch_norm=True)
        curves[n] = Trainer(20, cfg).fit(x, None, seed=5)[1]
    np.testing.assert_allclose(curves[4], curves[1], rtol=2e-4)
    assert curves[1][-1] < curves[1][0]
    # a fold batch on 4 devices (folds vmapped, each step's cells split on "data") gives each fold's
    # 1-device curve; the folds have 3 and 4 steps of 8
    small = dict(encoder=[16, 8], head=[8, 4], batch_size=8, epochs=6, eval_every=3, lr=1e-3)
    folds = [x[:24], x[:30]]
    four = Trainer(20, load_config(None, **small, devices=4)).fit_folds(folds, [None, None], [5, 6])
    for (_, curve), xk, seed in zip(four, folds, (5, 6)):
        np.testing.assert_allclose(curve, Trainer(20, load_config(None, **small)).fit(xk, None, seed)[1], rtol=2e-4)


def test_cli_four_devices_tiny_run(tmp_path, capfd):
    counts, y, _ = synthetic_counts(46, 25, n_groups=2, seed=4)
    path = write_h5(tmp_path / "d.h5", counts, y)
    out = tmp_path / "res"
    need_devices(4)
    code, _, err = run_module(["-m", "scdc_jax.gsrcl", "--data-file", path, "--devices", "4", "--epochs", "4",
                               "--eval-every", "2", "--quiet", "--cell-type", "type0", "--out-dir", str(out),
                               "--config", str(tiny_toml(tmp_path))], capfd)
    assert code == 0, err[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["n_devices"] == 4 and res["tasks"][0]["cell_type"] == "type0"
    assert (out / "results.csv").read_text().startswith("dataset,cell_type")
    assert "MCC raw" in (out / "summary.txt").read_text()
    again = ["-m", "scdc_jax.gsrcl", "--data-file", path, "--epochs", "4", "--eval-every", "2", "--quiet",
             "--cell-type", "type1", "--out-dir", str(out), "--config", str(tiny_toml(tmp_path))]
    code, _, err = run_module(again, capfd)  # a second run does not replace the first unasked
    assert code == 2 and "already holds a GsRCL evaluation" in err
    assert json.loads((out / "results.json").read_text()) == res
    code, _, err = run_module([*again, "--overwrite"], capfd)
    assert code == 0, err[-3000:]
    assert [t["cell_type"] for t in json.loads((out / "results.json").read_text())["tasks"]] == ["type1"]


def test_a_note_when_the_input_looks_log_transformed_already():
    import scipy.sparse as sp

    from scdc_jax.io import log_transformed_note

    counts, _, _ = synthetic_counts(40, 30, n_groups=2, seed=1)
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    assert "log-transformed" in log_transformed_note(sp.csr_matrix(lognorm.astype(np.float32)))
    assert log_transformed_note(counts.astype(np.float32)) is None  # counts, in floats
    assert log_transformed_note(counts) is None
    assert log_transformed_note(counts / counts.sum(1, keepdims=True) * 1e6) is None  # CPM: not logged


def tiny_toml(tmp_path, n_folds=2):
    p = tmp_path / "tiny.toml"
    p.write_text(f"[gsrcl]\nencoder = [16, 8]\nhead = [8, 4]\nn_folds = {n_folds}\nsvm_cv = 2\n"
                 "svm_gamma = ['scale']\nsvm_c = [1.0]\nlr = 1e-3\n")
    return p


def cli_error(args, capsys) -> str:
    """Run the CLI in-process; it must exit with code 2 and one sentence on stderr."""
    from scdc_jax.errors import run_cli as wrap
    from scdc_jax.gsrcl.__main__ import main

    with pytest.raises(SystemExit) as exc:
        wrap(main, args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    return err


def test_svm_on_distances_matches_sklearn_svc_and_grid_search():
    from sklearn.metrics import make_scorer, matthews_corrcoef
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    from scdc_jax.gsrcl.svm import binary_mcc, sq_distances, svm_search

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    np.testing.assert_allclose(sq_distances(x[:3], x), ((x[:3, None] - x[None]) ** 2).sum(-1), atol=1e-9)
    cfg = load_config(None, svm_gamma=[0.1], svm_c=[10.0], svm_cv=3)
    grid = svm_search(x[:40], y[:40], cfg, 0)
    ref = SVC(gamma=0.1, C=10.0).fit(x[:40], y[:40])
    np.testing.assert_allclose(grid.decision_function(x[40:]), ref.decision_function(x[40:]), atol=1e-6)
    scale = load_config(None, svm_gamma=["scale"], svm_c=[1.0], svm_cv=3)
    np.testing.assert_array_equal(svm_search(x[:40], y[:40], scale, 0).predict(x[40:]),
                                  SVC(gamma="scale").fit(x[:40], y[:40]).predict(x[40:]))
    # the whole grid chooses as scikit-learn's GridSearchCV does, on noisy tasks where it matters
    full = load_config(None, svm_gamma=[1e-3, 1e-2, 0.1, 1.0], svm_c=[0.1, 1.0, 10.0, 100.0])
    chosen = set()
    for seed in range(4):
        x = rng.normal(size=(120, 6))
        y = (x[:, 0] + 0.5 * x[:, 1] + 0.8 * rng.normal(size=120) > 0.3).astype(int)
        ours = svm_search(x[:90], y[:90], full, seed)
        cv = StratifiedKFold(5, shuffle=True, random_state=seed)
        theirs = GridSearchCV(SVC(), full.svm_grid(), scoring=make_scorer(matthews_corrcoef), cv=cv,
                              error_score=0.0).fit(x[:90], y[:90])
        assert ours.best_params_ == theirs.best_params_
        np.testing.assert_allclose(ours.decision_function(x[90:]), theirs.decision_function(x[90:]), atol=1e-8)
        chosen.add(tuple(ours.best_params_.values()))
    assert len(chosen) > 1  # the tasks are not all decided by the same corner of the grid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns of single-label inputs, which are part of the check
        for _ in range(200):
            a, b = rng.integers(0, 2, 9) * (rng.random() < 0.9), rng.integers(0, 2, 9) * (rng.random() < 0.8)
            assert binary_mcc(a, b) == matthews_corrcoef(a, b)


def test_final_scoring_refits_the_selection_points_grid_choice_without_searching_again(monkeypatch):
    from scdc_jax.gsrcl import svm

    rng = np.random.default_rng(3)
    h_tr, h_val = rng.normal(size=(90, 6)), rng.normal(size=(40, 6))
    w = rng.normal(size=6)
    ys_tr = {f"t{i}": (h_tr @ np.roll(w, i) + rng.normal(size=90) > 0.4).astype(int) for i in range(3)}
    ys_val = {f"t{i}": (h_val @ np.roll(w, i) > 0.4).astype(int) for i in range(3)}
    cfg = load_config(None, svm_gamma=[1e-2, 0.1, 1.0, "scale"], svm_c=[0.1, 1.0, 10.0])
    seeds = {name: 7 + i for i, name in enumerate(ys_tr)}
    scores = svm.selection_scores(h_tr, ys_tr, h_val, ys_val, cfg, seeds)
    for name, y in ys_tr.items():  # the choice the selection reports is the one the search makes
        assert scores[name][1] == svm.svm_search(h_tr, y, cfg, seeds[name]).best_params_
    assert len({tuple(p.values()) for _, p in scores.values()}) > 1
    searched = svm.fit_and_score_tasks(h_tr, ys_tr, h_val, ys_val, cfg, seeds)
    monkeypatch.setattr(svm, "grid_search", lambda *a, **k: pytest.fail("searched again"))
    reused = svm.fit_and_score_tasks(h_tr, ys_tr, h_val, ys_val, cfg, seeds,
                                     {name: p for name, (_, p) in scores.items()})
    assert reused == searched


def test_shared_encoders_train_once_per_fold_for_all_types(monkeypatch):
    counts, y, _ = synthetic_counts(60, 30, n_groups=3, seed=4)
    data = CountData(X=counts, labels=y, label_names=["a", "b", "c"], source="synthetic")
    fits = []
    fit = Trainer.fit

    def counting_fit(self, x, labels, seed, **kw):
        fits.append((len(x), labels is None, seed))
        return fit(self, x, labels, seed, **kw)

    monkeypatch.setattr(Trainer, "fit", counting_fit)
    shared = evaluate(data, load_config(None, **TINY, svm_workers=0), progress=False)
    assert shared["encoders"] == "shared" and len(fits) == 2  # one encoder per outer fold, all three types
    assert all(unlabelled for _, unlabelled, _ in fits) and len({s for *_, s in fits}) == 2
    assert [t["cell_type"] for t in shared["tasks"]] == ["a", "b", "c"]
    for t in shared["tasks"]:  # each type's selection is read off the same trajectory: epochs 0, 3, 6
        assert [[h["epoch"] for h in f["selection"]] for f in t["folds"]] == [[0, 3, 6]] * 2
    fits.clear()
    per_type = evaluate(data, load_config(None, **TINY, svm_workers=0, encoders="per-type"), progress=False)
    assert per_type["encoders"] == "per-type" and len(fits) == 6
    fits.clear()
    supcon = evaluate(data, load_config(None, **TINY, svm_workers=0, loss="supcon"), cell_types=["b"], progress=False)
    assert supcon["encoders"] == "per-type" and len(fits) == 2 and not any(u for _, u, _ in fits)
    with pytest.raises(InputError, match="per-type"):
        load_config(None, loss="supcon", encoders="shared")


def test_bf16_selects_as_f32_on_real_pbmc_cells():
    """A short bf16 run and an f32 run on real cells: every type's MCC agrees within the folds'
    standard error (or the same epochs are selected)."""
    from conftest import shared_file

    from scdc_jax.io import read_counts

    data = read_counts(shared_file("10X_PBMC_select_2100_top2000.h5"))
    keep = np.sort(np.random.default_rng(0).choice(data.n_cells, 500, replace=False))
    data = data.subset(cells=keep)
    small = dict(encoder=[256, 256, 128], head=[64], epochs=20, eval_every=10, lr=1e-3, n_folds=3, svm_cv=3,
                 svm_workers=0)
    runs = {p: evaluate(data, load_config(None, **small, precision=p), cell_types=["1", "2"], progress=False)
            for p in ("f32", "bf16")}
    for a, b in zip(runs["f32"]["tasks"], runs["bf16"]["tasks"]):
        same_epochs = [f["best_epoch"] for f in a["folds"]] == [f["best_epoch"] for f in b["folds"]]
        se = max(a["gsrcl"]["mcc_se"], b["gsrcl"]["mcc_se"])
        assert same_epochs or abs(a["gsrcl"]["mcc_mean"] - b["gsrcl"]["mcc_mean"]) <= se, (a["gsrcl"], b["gsrcl"])
        assert a["raw"] == b["raw"]


def test_bf16_loss_and_representation_stay_float32_and_close():
    import jax

    from scdc_jax.gsrcl.train import build_model, make_encode, make_loss_fn, split_params

    x = log_transform(synthetic_counts(32, 20, seed=3)[0])
    out = {}
    for p in ("f32", "bf16"):
        cfg = load_config(None, encoder=[32, 16], head=[8], precision=p)
        graphdef, state = build_model(cfg, 20, 0)
        params, stats = split_params(state)
        loss, _ = make_loss_fn(graphdef)(params, stats, x, np.ones(32, bool), np.arange(32), np.zeros(32, int),
                                         jax.random.key(1))
        h = make_encode(graphdef)(state, x)
        assert loss.dtype == np.float32 and h.dtype == np.float32
        assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
        out[p] = (float(loss), h)
    assert abs(out["f32"][0] - out["bf16"][0]) < 0.02 * abs(out["f32"][0])
    np.testing.assert_allclose(out["bf16"][1], out["f32"][1], rtol=0.05, atol=0.02)
    assert not np.array_equal(out["bf16"][1], out["f32"][1])  # the matmuls did run in bfloat16


def test_svm_worker_processes_select_as_in_turn_and_masking_baseline_runs():
    counts, y, _ = synthetic_counts(60, 40, n_groups=3, seed=2)
    data = CountData(X=counts, labels=y, label_names=["a", "b", "c"], source="synthetic")
    inline = evaluate(data, load_config(None, **TINY, svm_workers=0), progress=False)
    processes = evaluate(data, load_config(None, **TINY, svm_workers=2), progress=False)
    assert [t["cell_type"] for t in inline["tasks"]] == ["a", "b", "c"]
    for ti, tp in zip(inline["tasks"], processes["tasks"]):
        for a, b in zip(ti["folds"], tp["folds"]):
            assert a["selection"] == b["selection"] and a["best_epoch"] == b["best_epoch"]
            assert a["gsrcl"] == b["gsrcl"] and a["raw"] == b["raw"]
    cfg = load_config(None, **TINY, augment="dropout", n_top_genes=20, svm_workers=0)
    masked = evaluate(data, cfg, cell_types=["b"], progress=False)
    assert masked["method"] == "masking_hvg20" and cfg.method in text_summary(masked, "s")
    assert list(results_table(masked, "s")["method"]) == ["raw", "masking_hvg20"]
    assert masked["tasks"][0]["raw"] == inline["tasks"][1]["raw"]  # the raw baseline is the same
    with pytest.raises(InputError, match="n_top_genes=400"):  # the API names the keyword, not the flag
        evaluate(data, load_config(None, **TINY, augment="dropout", n_top_genes=400), progress=False)


class LazyPool:
    """An executor whose jobs run only when their result is asked for, so that selection points
    stay unscored at the checkpoints."""

    class Job:
        def __init__(self, fn, args):
            self.fn, self.args, self.ran, self.value = fn, args, False, None

        def done(self):
            return self.ran

        def result(self):
            if not self.ran:
                self.value, self.ran = self.fn(*self.args), True
            return self.value

    def submit(self, fn, *args):
        return self.Job(fn, args)


def test_a_fold_interrupted_in_training_continues_to_the_uninterrupted_result(tmp_path):
    from scdc_jax import checkpoint
    from scdc_jax.gsrcl.protocol import make_shared_tasks, run_fold

    counts, y, _ = synthetic_counts(60, 30, n_groups=3, seed=2)
    cfg = load_config(None, **{**TINY, "epochs": 15, "eval_every": 3})
    tasks, _ = make_shared_tasks(y, [0, 1], ["a", "b", "c"], cfg)
    x = log_transform(counts)
    ref = run_fold(Trainer(30, cfg), x, tasks, 0, cfg, pool=LazyPool())

    trainer = Trainer(30, cfg)
    encode, calls = trainer.encode, []

    def encode_until_epoch_12(state, xs):
        calls.append(len(xs))
        if len(calls) > 12:  # three encodings per selection point (0, 3, 6, 9, 12): the 5th is epoch 12
            raise KeyboardInterrupt
        return encode(state, xs)

    trainer.encode = encode_until_epoch_12
    ckpt = str(tmp_path / "fold")
    with pytest.raises(KeyboardInterrupt):
        run_fold(trainer, x, tasks, 0, cfg, pool=LazyPool(), ckpt_dir=ckpt)
    assert checkpoint.latest_step(ckpt) == 9
    meta = checkpoint.read_meta(ckpt)
    assert len(meta["losses"]) == 9
    # epochs 0 and 3 were scored (each task's best is one of them); 6 and 9 still waited for their SVMs
    assert meta["callback"]["pending"] == [6, 9]
    assert [h["epoch"] for h in meta["callback"]["history"]] == [0, 3]
    assert {e for e, *_ in meta["callback"]["best"].values()} <= {0, 3} and set(meta["callback"]["best"]) == {"a", "b"}

    resumed = run_fold(Trainer(30, cfg), x, tasks, 0, cfg, pool=LazyPool(), ckpt_dir=ckpt)
    assert [h["epoch"] for h in resumed["selection"]] == [0, 3, 6, 9, 12, 15]
    for r in (ref, resumed):
        r.pop("train_s")
    assert resumed == ref


def test_a_fold_batch_interrupted_in_training_continues_to_the_uninterrupted_result(tmp_path):
    from scdc_jax import checkpoint
    from scdc_jax.gsrcl.protocol import make_shared_tasks, run_folds

    counts, y, _ = synthetic_counts(60, 30, n_groups=3, seed=2)
    cfg = load_config(None, **{**TINY, "epochs": 15, "eval_every": 3, "fold_batch": "on"})
    tasks, _ = make_shared_tasks(y, [0, 1], ["a", "b", "c"], cfg)
    x = log_transform(counts)
    ref = run_folds(Trainer(30, cfg), x, tasks, [0, 1], cfg, pool=LazyPool())

    trainer = Trainer(30, cfg)
    encode, calls = trainer.encode, []

    def encode_until_epoch_12(state, xs):
        calls.append(len(xs))
        if len(calls) > 24:  # 2 folds x 3 encodings per selection point (0, 3, 6, 9, 12): epoch 12
            raise KeyboardInterrupt
        return encode(state, xs)

    trainer.encode = encode_until_epoch_12
    ckpt = str(tmp_path / "batch")
    with pytest.raises(KeyboardInterrupt):
        run_folds(trainer, x, tasks, [0, 1], cfg, pool=LazyPool(), ckpt_dir=ckpt)
    assert checkpoint.latest_step(ckpt) == 9
    meta = checkpoint.read_meta(ckpt)
    assert [len(f) for f in meta["losses"]] == [9, 9] and len(meta["callback"]) == 2  # one stacked checkpoint
    assert all(m["pending"] == [6, 9] for m in meta["callback"])
    resumed = run_folds(Trainer(30, cfg), x, tasks, [0, 1], cfg, pool=LazyPool(), ckpt_dir=ckpt)
    for r in (*ref, *resumed):
        r.pop("train_s")
    assert resumed == ref
    # a checkpoint of other folds (some of them saved before a kill) is set aside, not continued
    only = run_folds(Trainer(30, cfg), x, tasks, [1], cfg, pool=LazyPool(), ckpt_dir=ckpt)
    only[0].pop("train_s")
    assert only == [ref[1]]


def alive_children(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``, from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                state, ppid = fh.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            kids.append(int(entry))
    return kids


def gone(pids: list[int], timeout: float = 15.0) -> bool:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        left = []
        for p in pids:
            try:
                with open(f"/proc/{p}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                        left.append(p)
            except OSError:
                pass
        if not left:
            return True
        time.sleep(0.1)
    return False


def in_fold_steps(folds) -> list[int]:
    """The epochs of the checkpoints of unfinished folds in an evaluation's folds/ folder."""
    return [int(p.name) for p in folds.glob("*.partial/*")
            if p.name.isdigit() and not p.parent.with_suffix(".json").exists()]


def test_sigkill_inside_a_fold_then_resume_gives_the_same_results(tmp_path, capfd):
    import signal
    import time

    counts, y, _ = synthetic_counts(80, 30, n_groups=3, seed=6)
    path = write_h5(tmp_path / "d.h5", counts, y)
    common = ["--data-file", path, "--config", str(tiny_toml(tmp_path, n_folds=4)), "--epochs", "60",
              "--eval-every", "10", "--quiet"]
    code, _, err = run_module(["-m", "scdc_jax.gsrcl", *common, "--out-dir", str(tmp_path / "ref")], capfd)
    assert code == 0, err[-2000:]

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "scdc_jax.gsrcl", *common, "--out-dir", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    folds = out / "folds"
    # killed inside the third fold or later, after one of its in-fold checkpoints but before its last
    while time.time() < deadline and (len(list(folds.glob("*_*.json"))) < 2
                                      or not [e for e in in_fold_steps(folds) if e < 60]):
        assert proc.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.02)
    workers = alive_children(proc.pid) if os.path.isdir("/proc") else []
    assert workers or not os.path.isdir("/proc")  # the SVM worker (and its resource tracker) run by now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert gone(workers), "the SVM worker processes outlived the killed evaluation"
    done = len(list(folds.glob("*_*.json")))
    assert 2 <= done < 4 and not (out / "results.csv").exists()
    assert in_fold_steps(folds) and max(in_fold_steps(folds)) < 60
    kept = sorted(p.name for p in folds.rglob("*"))
    code, _, err = run_module(["-m", "scdc_jax.gsrcl", *common, "--out-dir", str(out)], capfd)  # --resume forgotten
    assert code == 2 and "already holds a GsRCL evaluation" in err and "--resume" in err
    assert sorted(p.name for p in folds.rglob("*")) == kept  # nothing of the interrupted run was lost
    code, stdout, err = run_module(["-m", "scdc_jax.gsrcl", *common, "--out-dir", str(out), "--resume"], capfd)
    assert code == 0, err[-2000:]
    assert "from its checkpoint at epoch" in stdout
    assert (out / "results.csv").read_text() == (tmp_path / "ref" / "results.csv").read_text()
    assert not list(folds.glob("*.partial"))  # in-fold checkpoints go once their fold is finished
    code, _, err = run_module(["-m", "scdc_jax.gsrcl", *common, "--out-dir", str(out), "--resume", "--lr", "0.01"],
                              capfd)
    assert code == 2 and "different configuration" in err
