"""GsRCL's evaluation protocol: one-vs-rest tasks, model selection on validation, SVM scoring.

For the cell types of a labelled dataset (each a binary task "this type vs the rest"):

1. a stratified split into train (1 - ``val_fraction``) and validation, then stratified
   ``n_folds``-fold cross-validation on the train part (all seeded from ``cfg.seed``);
2. per outer fold, an encoder trained on the fold's training cells.  At epoch 0 and every
   ``eval_every`` epochs the fold-train, validation and test cells are encoded and, for each
   task, an SVM grid search (scoring MCC, inner stratified CV) is fitted on the fold-train
   representation and scored (MCC) on validation; each task keeps the epoch with its best
   validation MCC (the earliest on ties);
3. per task, the same SVM grid on its best epoch's fold-train representation, scored on the test
   fold (MCC, F1, AP from the decision function), and the baseline: the grid on the log genes.

Encoders (``cfg.encoders``):

- ``"shared"`` (the default for NT-Xent, which uses no labels): ONE encoder per outer fold serves
  every cell type; the splits are stratified on the multi-class label, and each type's model
  selection is read off that one training trajectory.  The work is one encoder per fold instead
  of one per type and fold (13 times less on a 13-type dataset).
- ``"per-type"`` (the reference's protocol, and the only one for SupCon, whose loss uses the
  task's binary labels): one encoder per (type, fold), the splits stratified on the type.

The SVM grid searches run in worker processes (``cfg.svm_workers``) while the device trains; the
results are taken in epoch order, so they equal those of running the searches one by one.  On
several processes (:mod:`scdc_jax.distributed`) each runs the whole protocol on the same data:
the encoders' batches are split over all processes' devices, and every process runs the grid
searches on the same gathered representation.
Scores are reported as the mean and standard error (std / sqrt(n_folds)) over the folds.
"""
from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..errors import InputError
from .folds import FoldStore
from .svm import fit_and_score_tasks, selection_scores
from ..preprocess import log_transform, masking_input
from .train import Trainer, use_fold_batch

METRICS = ("mcc", "f1", "ap")


@dataclass
class Splits:
    """Indices into the dataset's cells: train, validation, and the outer folds of train."""

    train: np.ndarray
    val: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


@dataclass
class Task:
    """One one-vs-rest task: the binary labels (n,) of "``cell_type`` vs rest" and its splits."""

    cell_type: str
    y: np.ndarray
    splits: Splits

    # the splits' parts, for brevity where one task is all there is
    @property
    def train(self):
        return self.splits.train

    @property
    def val(self):
        return self.splits.val

    @property
    def folds(self):
        return self.splits.folds


def make_splits(strata: np.ndarray, cfg) -> Splits:
    """The validation split and outer folds, stratified on ``strata`` (n,) ints, seeded by
    ``cfg.seed``."""
    idx = np.arange(len(strata))
    train, val = train_test_split(idx, test_size=cfg.val_fraction, stratify=strata, random_state=cfg.seed)
    skf = StratifiedKFold(cfg.n_folds, shuffle=True, random_state=cfg.seed)
    return Splits(train, val, [(train[a], train[b]) for a, b in skf.split(train, strata[train])])


def shared_strata(labels: np.ndarray, cfg) -> np.ndarray:
    """Multi-class strata for the shared splits: types too small to be spread over the folds
    (fewer than ``n_folds`` + 1 cells) are pooled into one stratum, itself merged into the
    largest type when it is still that small, so that stratification is always possible."""
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels)
    small = counts[labels] <= cfg.n_folds
    strata = labels.copy()
    if small.any():
        strata[small] = counts.size if small.sum() > cfg.n_folds else int(np.argmax(counts))
    return strata


def task_problem(y: np.ndarray, splits: Splits, cfg) -> str | None:
    """Why the binary task ``y`` cannot be evaluated on ``splits`` (None when it can): every
    fold-train part needs ``svm_cv`` cells of each class, every test fold and the validation
    split one positive."""
    if y[splits.val].sum() < 1:
        return "no cell of it falls in the validation split"
    for tr, te in splits.folds:
        n_pos = int(y[tr].sum())
        if min(n_pos, len(tr) - n_pos) < cfg.svm_cv or y[te].sum() < 1:
            return "an outer fold has too few of its cells"
    return None


def make_task(labels: np.ndarray, code: int, name: str, cfg) -> Task | str:
    """The per-type task "type ``code`` vs rest" with splits stratified on it, or a sentence
    saying why the type is skipped."""
    y = (np.asarray(labels) == code).astype(np.int64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    need = cfg.n_folds * cfg.svm_cv
    if min(n_pos, n_neg) < 2:
        return f"skipping cell type '{name}': {n_pos} cells of it and {n_neg} others, too few to split."
    splits = make_splits(y, cfg)
    if task_problem(y, splits, cfg) is not None:
        return (f"skipping cell type '{name}': its {n_pos} cells (vs {n_neg} others) are too few for a validation split, "
                f"{cfg.n_folds} folds and {cfg.svm_cv}-fold inner CV (about {need} or more of each are needed).")
    return Task(name, y, splits)


def make_shared_tasks(labels: np.ndarray, codes: list[int], names: list[str], cfg) -> tuple[list[Task], list[str]]:
    """The tasks of the chosen types on one set of multi-class-stratified splits, and a sentence
    for each type skipped."""
    splits = make_splits(shared_strata(labels, cfg), cfg)
    tasks, skipped = [], []
    for code in codes:
        y = (np.asarray(labels) == code).astype(np.int64)
        problem = task_problem(y, splits, cfg)
        if problem is None:
            tasks.append(Task(names[code], y, splits))
        else:
            skipped.append(f"skipping cell type '{names[code]}': {problem} ({int(y.sum())} cells of it; "
                           f"{cfg.n_folds} folds and {cfg.svm_cv}-fold inner CV need about "
                           f"{cfg.n_folds * cfg.svm_cv} or more).")
    return tasks, skipped


def fold_seed(seed: int, name: str, fold: int) -> int:
    """The seed of (task or shared encoder ``name``, outer fold): initialisation, noise, inner CV."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 31 + fold) % (2 ** 31)


SHARED = ""  # the name whose fold seeds drive the shared encoders


class _Inline:
    """A stand-in for an executor that runs each job at once (``svm_workers = 0``)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        f = Future()
        f.set_result(fn(*args))
        return f


def svm_worker_count(workers: int) -> int:
    """The worker processes ``svm_workers`` asks for: -1 is all cores but one (at least one)."""
    return max(1, (os.cpu_count() or 2) - 1) if workers < 0 else workers


def svm_pool(workers: int):
    """The executor of the SVM grid searches: ``workers`` processes (-1: all cores but one, at
    least one), or inline for 0.  Processes are started by spawning, never forking a process
    that runs JAX's threads."""
    if workers == 0:
        return _Inline()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from .svm import init_worker

    return ProcessPoolExecutor(svm_worker_count(workers), mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))


class Selection:
    """Model selection of several tasks during one fold's training, called by ``Trainer.fit`` at
    each selection point (epoch 0 included).

    At epoch ``e`` the fold-train, validation and test cells are encoded and one job scoring
    every task at that point (SVM grids fitted on fold-train, MCC on validation) is submitted to
    ``pool``; results are taken in epoch order, so the selection is the same as when the jobs run
    one by one.  Each task keeps its best epoch; the encodings of epochs that are some task's
    best are kept.  ``checkpoint()`` and ``restore()`` carry the selection through an
    interruption: the scores so far, the kept encodings and those whose job had not finished
    (scored again on restore, which gives the same scores).
    """

    def __init__(self, trainer: Trainer, x_rep, tasks: list[Task], fold: int, cfg, pool, seeds: dict):
        splits = tasks[0].splits
        self.trainer, self.x_rep, self.cfg, self.pool, self.seeds = trainer, x_rep, cfg, pool, seeds
        self.tr, self.te = splits.folds[fold]
        self.val = splits.val
        self.ys_tr = {t.cell_type: t.y[self.tr] for t in tasks}
        self.ys_val = {t.cell_type: t.y[self.val] for t in tasks}
        self.best: dict[str, tuple[int, float, dict]] = {}  # task -> (epoch, validation MCC, grid choice)
        self.kept: dict[int, tuple] = {}  # epoch -> (h_tr, h_te), for the epochs in self.best
        self.history: list[dict] = []
        self.pending: list[tuple] = []  # (epoch, job, h_tr, h_val, h_te) in epoch order
        self.max_pending = max(2, 2 * svm_worker_count(cfg.svm_workers))  # keeps every worker busy

    def _submit(self, epoch: int, h_tr, h_val, h_te) -> None:
        job = self.pool.submit(selection_scores, h_tr, self.ys_tr, h_val, self.ys_val, self.cfg, self.seeds)
        self.pending.append((epoch, job, h_tr, h_val, h_te))

    def collect(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][1].done()):
            epoch, job, h_tr, _, h_te = self.pending.pop(0)
            scores = job.result()
            self.history.append({"epoch": epoch, "val_mcc": {name: mcc for name, (mcc, _) in scores.items()}})
            for name, (mcc, params) in scores.items():
                if name not in self.best or mcc > self.best[name][1]:
                    self.best[name] = (epoch, mcc, params)
            self.kept[epoch] = (h_tr, h_te)
            used = {e for e, _, _ in self.best.values()}
            self.kept = {e: h for e, h in self.kept.items() if e in used}

    def __call__(self, epoch: int, state) -> None:
        self._submit(epoch, *(self.trainer.encode(state, self.x_rep[i]) for i in (self.tr, self.val, self.te)))
        self.collect(block=False)
        while len(self.pending) > self.max_pending:  # bounds the encodings held in memory
            self.pending[0][1].result()
            self.collect(block=False)

    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {}
        for epoch, (h_tr, h_te) in self.kept.items():
            arrays.update({f"best{epoch}_h_tr": h_tr, f"best{epoch}_h_te": h_te})
        for epoch, _, h_tr, h_val, h_te in self.pending:
            arrays.update({f"{epoch}_h_tr": h_tr, f"{epoch}_h_val": h_val, f"{epoch}_h_te": h_te})
        meta = {"history": self.history, "pending": [p[0] for p in self.pending],
                "best": {name: [e, m, p] for name, (e, m, p) in self.best.items()}, "kept": sorted(self.kept)}
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.history = [dict(h) for h in meta["history"]]
        # a checkpoint written before grid choices were kept has none: those tasks search again
        self.best = {name: (int(b[0]), float(b[1]), dict(b[2]) if len(b) > 2 else None)
                     for name, b in meta["best"].items()}
        self.kept = {int(e): (arrays[f"best{e}_h_tr"], arrays[f"best{e}_h_te"]) for e in meta["kept"]}
        for epoch in meta["pending"]:
            self._submit(epoch, *(arrays[f"{epoch}_{part}"] for part in ("h_tr", "h_val", "h_te")))


def _start_fold(trainer: Trainer, x, x_rep, tasks: list[Task], fold: int, cfg, pool) -> tuple:
    """(raw-baseline job, Selection) of one outer fold, the baseline's SVMs submitted to ``pool``."""
    tr, te = tasks[0].splits.folds[fold]
    seeds = {t.cell_type: fold_seed(cfg.seed, t.cell_type, fold) for t in tasks}
    raw_job = pool.submit(fit_and_score_tasks, x[tr], {t.cell_type: t.y[tr] for t in tasks}, x[te],
                          {t.cell_type: t.y[te] for t in tasks}, cfg, seeds)
    return raw_job, Selection(trainer, x_rep, tasks, fold, cfg, pool, seeds)


def _finish_fold(raw_job, selection: "Selection", tasks: list[Task], fold: int, losses: list, train_s: float,
                 pool) -> dict:
    """The :func:`run_fold` result of a fold whose encoder has trained: every task scored on the
    test fold at its selected epoch."""
    selection.collect(block=True)
    ys_te = {t.cell_type: t.y[selection.te] for t in tasks}
    by_epoch: dict[int, list[str]] = {}
    for name, (epoch, _, _) in selection.best.items():
        by_epoch.setdefault(epoch, []).append(name)
    # the selection point's grid choice is refitted (same encodings, labels and seed: the search
    # would choose it again) and scored on the test fold
    jobs = {epoch: pool.submit(fit_and_score_tasks, selection.kept[epoch][0], {n: selection.ys_tr[n] for n in names},
                               selection.kept[epoch][1], {n: ys_te[n] for n in names}, selection.cfg,
                               selection.seeds,
                               {n: selection.best[n][2] for n in names if selection.best[n][2] is not None})
            for epoch, names in by_epoch.items()}
    learnt = {name: scored for job in jobs.values() for name, scored in job.result().items()}
    raw = raw_job.result()
    out = {}
    for t in tasks:
        name = t.cell_type
        epoch, mcc, _ = selection.best[name]
        out[name] = {"gsrcl": learnt[name][1], "raw": raw[name][1], "best_epoch": epoch, "best_val_mcc": mcc,
                     "gsrcl_svm": learnt[name][0], "raw_svm": raw[name][0]}
    return {"fold": fold, "train_s": train_s, "final_loss": losses[-1], "selection": selection.history,
            "tasks": out}


def run_fold(trainer: Trainer, x, tasks: list[Task], fold: int, cfg, *, pool=None, x_rep=None,
             ckpt_dir: str | None = None, encoder_name: str = SHARED) -> dict:
    """Train one encoder on outer fold ``fold`` of the tasks' (common) splits, select an epoch
    per task and score every task; returns ``{"fold", "train_s", "final_loss", "selection":
    [{"epoch", "val_mcc": {task: mcc}}], "tasks": {task: {"gsrcl", "raw", "best_epoch",
    "best_val_mcc", "gsrcl_svm", "raw_svm"}}}``.

    ``x`` is the log expression (the raw-gene baseline's input) and ``x_rep`` the encoder's input
    (default ``x``; the masking baseline's scanpy-preprocessed genes).  A single task with SupCon
    trains on its labels.  The SVM grid searches (the raw baseline and each model-selection
    point) run on ``pool`` while the encoder trains.  With ``ckpt_dir`` the training and the
    selection are checkpointed at every model-selection point, and a fold interrupted there
    continues from its latest checkpoint.
    """
    pool = pool if pool is not None else _Inline()
    x_rep = x if x_rep is None else x_rep
    tr, _ = tasks[0].splits.folds[fold]
    raw_job, selection = _start_fold(trainer, x, x_rep, tasks, fold, cfg, pool)
    labels = tasks[0].y[tr] if cfg.loss == "supcon" else None
    t0 = time.perf_counter()
    _, losses = trainer.fit(x_rep[tr], labels, fold_seed(cfg.seed, encoder_name, fold), callback=selection,
                            ckpt_dir=ckpt_dir)
    return _finish_fold(raw_job, selection, tasks, fold, losses, time.perf_counter() - t0, pool)


def run_folds(trainer: Trainer, x, tasks: list[Task], folds: list[int], cfg, *, pool=None, x_rep=None,
              ckpt_dir: str | None = None, encoder_name: str = SHARED) -> list[dict]:
    """:func:`run_fold` of the outer folds ``folds`` with their encoders trained together as one
    vmapped program (``Trainer.fit_folds``), each with the seed, data, model selection and
    scores it has alone (up to float32 rounding in training); with ``ckpt_dir`` one checkpoint
    there holds all of them.  Each result's ``train_s`` is an equal share of the batch's
    training time."""
    pool = pool if pool is not None else _Inline()
    x_rep = x if x_rep is None else x_rep
    trains = [tasks[0].splits.folds[k][0] for k in folds]
    started = [_start_fold(trainer, x, x_rep, tasks, k, cfg, pool) for k in folds]
    labels = [tasks[0].y[tr] if cfg.loss == "supcon" else None for tr in trains]
    t0 = time.perf_counter()
    seeds = [fold_seed(cfg.seed, encoder_name, k) for k in folds]
    fits = trainer.fit_folds([x_rep[tr] for tr in trains], labels, seeds,
                             callbacks=[selection for _, selection in started], ckpt_dir=ckpt_dir)
    train_s = (time.perf_counter() - t0) / len(folds)
    return [_finish_fold(raw_job, selection, tasks, k, losses, train_s, pool)
            for k, (raw_job, selection), (_, losses) in zip(folds, started, fits)]


def task_fold(result: dict, name: str) -> dict:
    """One task's view of a :func:`run_fold` result: its scores and its selection history."""
    return {"fold": result["fold"], **result["tasks"][name],
            "selection": [{"epoch": h["epoch"], "val_mcc": h["val_mcc"][name]} for h in result["selection"]],
            "final_loss": result["final_loss"], "train_s": result["train_s"]}


def summarise(folds: list[dict], method: str) -> dict[str, float]:
    """Mean and standard error (std / sqrt(n)) of each metric over the folds."""
    out = {}
    for m in METRICS:
        v = np.array([f[method][m] for f in folds], float)
        out[f"{m}_mean"] = float(v.mean())
        out[f"{m}_se"] = float(v.std() / np.sqrt(len(v)))
    return out


def select_types(label_names: list[str], wanted: list[str] | None) -> list[int]:
    if not wanted:
        return list(range(len(label_names)))
    missing = [w for w in wanted if w not in label_names]
    if missing:
        raise InputError(f"cell type(s) {', '.join(map(repr, missing))} are not among the labels "
                         f"({', '.join(label_names)}).")
    return [label_names.index(w) for w in wanted]


def _no_tasks_message(names: list[str], labels: np.ndarray, codes: list[int], cfg) -> str:
    if len(names) == 1:
        return (f"the labels hold a single cell type ('{names[0]}'); one-vs-rest tasks need cells of at least two "
                "types.")
    counts = np.bincount(labels, minlength=len(names))
    largest = sorted(codes, key=lambda c: -counts[c])[:3]
    sizes = ", ".join(f"'{names[c]}' {counts[c]} of {len(labels)}" for c in largest)
    return (f"no {'chosen ' if len(codes) < len(names) else ''}cell type has enough cells for the splits "
            f"(a validation split, {cfg.n_folds} folds and {cfg.svm_cv}-fold inner CV need about "
            f"{cfg.n_folds * cfg.svm_cv} or more cells of the type and of the others; largest: {sizes}); "
            "give more cells, or lower n_folds and svm_cv in a --config.")


def evaluate(data, cfg, *, cell_types: list[str] | None = None, progress: bool = True, log=print,
             fold_dir: str | None = None, resume: bool = False) -> dict:
    """Run the protocol on a labelled :class:`~scdc_jax.io.CountData`.

    Returns ``{"method", "encoders", "tasks": [{cell_type, n_cells, folds: [...], raw: summary,
    gsrcl: summary}], "skipped": [sentences], "train_s"}`` (``gsrcl`` holds the learnt
    representation's scores, whichever augmentation ``cfg`` uses; ``train_s`` the seconds spent
    training encoders).  With ``fold_dir`` every finished fold is saved there and the fold in
    training is checkpointed at every model-selection point; with ``resume`` the folds already
    there are reused and an interrupted fold continues from its latest checkpoint.  Raises
    InputError, before any training, when no cell type is large enough for the splits.

    In a multi-process run (:mod:`scdc_jax.distributed`) every process calls this with the same
    data and runs the same protocol: the encoders train on the global mesh, each process encodes
    (gathering the whole representation) and runs the SVM grid searches itself, on the same
    inputs and seeds, so all select the same epochs and score the same; only the first process
    logs, shows progress and writes in ``fold_dir``.
    """
    from .. import checkpoint, distributed

    if data.labels is None:
        raise InputError("GsRCL's evaluation needs cell-type labels; give a labelled data file "
                         "(HDF5 with Y, .h5ad with --label-key, or CSV with --labels-csv).")
    if not distributed.is_primary():
        progress, log = False, lambda message: None
    names = list(data.label_names)
    codes = select_types(names, cell_types)
    mode = cfg.encoder_mode
    if mode == "shared":
        tasks, skipped = make_shared_tasks(data.labels, codes, names, cfg)
        encoders = [(SHARED, tasks)] if tasks else []
    else:
        tasks, skipped = [], []
        for code in codes:
            task = make_task(data.labels, code, names[code], cfg)
            (skipped if isinstance(task, str) else tasks).append(task)
        encoders = [(t.cell_type, [t]) for t in tasks]
    if not tasks:
        raise InputError(_no_tasks_message(names, data.labels, codes, cfg))
    x = log_transform(data.X)
    x_rep = masking_input(data.X, cfg.n_top_genes) if cfg.augment == "dropout" else x
    trainer = Trainer(x_rep.shape[1], cfg)
    store = None
    if fold_dir is not None:
        store = FoldStore(fold_dir, {"config": cfg.to_dict(), "shape": list(x.shape), "source": str(data.source),
                                     "cell_types": names}, resume)
    for message in skipped:
        log(message)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(encoders) * cfg.n_folds, desc=f"{cfg.method} folds ({mode} encoders)", unit="fold")
    per_task: dict[str, list[dict]] = {t.cell_type: [] for t in tasks}
    train_s = 0.0
    pool = svm_pool(cfg.svm_workers)
    try:
        for name, group in encoders:
            what = "the shared encoder" if name == SHARED else f"cell type '{name}'"
            results = {k: store.get(name, k) for k in range(cfg.n_folds)} if store is not None else {}
            todo = [k for k in range(cfg.n_folds) if results.get(k) is None]
            if use_fold_batch(cfg, x_rep.shape[1], [len(group[0].splits.folds[k][0]) for k in todo]):
                ckpt = store.checkpoint_dir(name) if store is not None else None
                if ckpt is not None and (epoch := checkpoint.latest_step(ckpt)) is not None:
                    log(f"continuing {what} folds {todo} from their checkpoint at epoch {epoch}")
                batch = run_folds(trainer, x, group, todo, cfg, pool=pool, x_rep=x_rep, ckpt_dir=ckpt,
                                  encoder_name=name)
                for k, result in zip(todo, batch):
                    results[k] = result
                    if store is not None:
                        store.put(name, k, result)
            for k in range(cfg.n_folds):
                result = results.get(k)
                if result is None:
                    ckpt = store.checkpoint_dir(name, k) if store is not None else None
                    if ckpt is not None and (epoch := checkpoint.latest_step(ckpt)) is not None:
                        log(f"continuing {what} fold {k} from its checkpoint at epoch {epoch}")
                    result = run_fold(trainer, x, group, k, cfg, pool=pool, x_rep=x_rep, ckpt_dir=ckpt,
                                      encoder_name=name)
                    if store is not None:
                        store.put(name, k, result)
                train_s += result["train_s"]
                for t in group:
                    per_task[t.cell_type].append(task_fold(result, t.cell_type))
                if bar is not None:
                    bar.set_postfix_str(f"{name or 'all types'} fold {k}")
                    bar.update()
            if store is not None:
                store.discard_checkpoints(name)
    finally:
        if hasattr(pool, "shutdown"):
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    results = [{"cell_type": t.cell_type, "n_cells": int(t.y.sum()), "folds": per_task[t.cell_type],
                "raw": summarise(per_task[t.cell_type], "raw"), "gsrcl": summarise(per_task[t.cell_type], "gsrcl")}
               for t in tasks]
    return {"method": cfg.method, "encoders": mode, "tasks": results, "skipped": skipped, "train_s": train_s}


def results_table(results: dict, dataset: str):
    """One row per (dataset, cell type, method) with the mean and standard error of each metric."""
    import pandas as pd

    rows = []
    learnt = results.get("method", "gsrcl")
    for t in results["tasks"]:
        for method in ("raw", "gsrcl"):
            rows.append({"dataset": dataset, "cell_type": t["cell_type"], "n_cells": t["n_cells"],
                         "method": learnt if method == "gsrcl" else method, **t[method]})
    return pd.DataFrame(rows, columns=["dataset", "cell_type", "n_cells", "method",
                                       *[f"{m}_{s}" for m in METRICS for s in ("mean", "se")]])


def text_summary(results: dict, dataset: str) -> str:
    name = {"gsrcl": "GsRCL"}.get(results.get("method", "gsrcl"), results.get("method", ""))
    rep = name[:9]
    lines = [f"{name} one-vs-rest evaluation on {dataset} (mean +- standard error over folds; raw = SVM on "
             "log genes; epochs: each fold's selected epoch)",
             f"{'cell type':<28}{'cells':>6}  {'MCC raw':>15}  {'MCC ' + rep:>15}  {'F1 raw':>15}  "
             f"{'F1 ' + rep:>15}  {'AP raw':>15}  {'AP ' + rep:>15}  epochs"]
    for t in results["tasks"]:
        cells = [f"{t[m][f'{k}_mean']:.3f} +- {t[m][f'{k}_se']:.3f}" for k in METRICS for m in ("raw", "gsrcl")]
        epochs = ",".join(str(f["best_epoch"]) for f in t["folds"])
        lines.append(f"{t['cell_type'][:27]:<28}{t['n_cells']:>6}  " + "  ".join(f"{c:>15}" for c in cells)
                     + f"  {epochs}")
    lines.extend(results["skipped"])
    return "\n".join(lines) + "\n"
