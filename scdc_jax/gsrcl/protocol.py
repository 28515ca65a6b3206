"""GsRCL's evaluation protocol: one-vs-rest tasks, model selection on validation, SVM scoring.

For each cell type (a binary task "this type vs the rest"):

1. a stratified split into train (1 - ``val_fraction``) and validation, then stratified
   ``n_folds``-fold cross-validation on the train part (all seeded from ``cfg.seed``);
2. per fold, an encoder trained on the fold's training cells; every ``eval_every`` epochs the
   fold-train and validation cells are encoded, an SVM grid search (scoring MCC, inner stratified
   CV) is fitted on the fold-train representation and scored (MCC) on validation; the encoder
   with the best validation MCC is kept (the earliest on ties);
3. the same SVM grid on the best representation of fold-train, scored on the test fold (MCC, F1,
   AP from the decision function), and the baseline: the grid on the log-transformed genes.

Scores are reported as the mean and standard error (std / sqrt(n_folds)) over the folds.
"""
from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import matthews_corrcoef
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..errors import InputError
from .svm import fit_and_score, svm_search
from .train import Trainer, log_transform

METRICS = ("mcc", "f1", "ap")


@dataclass
class Task:
    """The splits of one one-vs-rest task (indices into the dataset's cells)."""

    cell_type: str
    y: np.ndarray
    train: np.ndarray
    val: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def make_task(labels: np.ndarray, code: int, name: str, cfg) -> Task | str:
    """The splits of "type ``code`` vs rest", or a sentence saying why the type is skipped."""
    y = (np.asarray(labels) == code).astype(np.int64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    need = cfg.n_folds * cfg.svm_cv
    if min(n_pos, n_neg) < 2:
        return f"skipping cell type '{name}': {n_pos} cells of it and {n_neg} others, too few to split."
    idx = np.arange(len(y))
    train, val = train_test_split(idx, test_size=cfg.val_fraction, stratify=y, random_state=cfg.seed)
    train_min = int(min(y[train].sum(), len(train) - y[train].sum()))
    fold_train_min = train_min - -(-train_min // cfg.n_folds)
    if y[val].sum() < 1 or train_min < cfg.n_folds or fold_train_min < cfg.svm_cv:
        return (f"skipping cell type '{name}': its {n_pos} cells (vs {n_neg} others) are too few for a validation split, "
                f"{cfg.n_folds} folds and {cfg.svm_cv}-fold inner CV (about {need} or more of each are needed).")
    skf = StratifiedKFold(cfg.n_folds, shuffle=True, random_state=cfg.seed)
    folds = [(train[a], train[b]) for a, b in skf.split(train, y[train])]
    return Task(name, y, train, val, folds)


def _fold_seed(seed: int, cell_type: str, fold: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(cell_type.encode()) * 31 + fold) % (2 ** 31)


def _val_mcc(h_tr, y_tr, h_val, y_val, cfg, seed) -> float:
    search = svm_search(h_tr, y_tr, cfg, seed)
    return float(matthews_corrcoef(y_val, search.predict(h_val)))


class _Inline:
    """A stand-in for an executor that runs each job at once (``svm_workers = 0``)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        f = Future()
        f.set_result(fn(*args))
        return f


class Selection:
    """Model selection during one fold's training, called by ``Trainer.fit`` at each point.

    At epoch ``e`` the fold-train, validation and test cells are encoded and an SVM grid search
    fitted on fold-train and scored (MCC) on validation is submitted to ``pool``; results are
    taken in epoch order, so the selection is the same as when the searches run one by one.
    ``checkpoint()`` and ``restore()`` carry the selection through an interruption: the scores so
    far, the best epoch's encodings and the encodings whose search had not finished (searched
    again on restore, which gives the same score).
    """

    def __init__(self, trainer: Trainer, x_rep: np.ndarray, task: Task, fold: int, cfg, pool, seed: int):
        self.trainer, self.x_rep, self.cfg, self.pool, self.seed = trainer, x_rep, cfg, pool, seed
        self.tr, self.te = task.folds[fold]
        self.val, self.y = task.val, task.y
        self.best = {"mcc": -np.inf, "epoch": 0, "h_tr": None, "h_te": None}
        self.history: list[dict] = []
        self.pending: list[tuple] = []  # (epoch, job, h_tr, h_val, h_te) in epoch order
        self.max_pending = max(2, 2 * int(getattr(cfg, "svm_workers", 1)))

    def _submit(self, epoch: int, h_tr, h_val, h_te) -> None:
        job = self.pool.submit(_val_mcc, h_tr, self.y[self.tr], h_val, self.y[self.val], self.cfg, self.seed)
        self.pending.append((epoch, job, h_tr, h_val, h_te))

    def collect(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][1].done()):
            epoch, job, h_tr, _, h_te = self.pending.pop(0)
            mcc = job.result()
            self.history.append({"epoch": epoch, "val_mcc": mcc})
            if mcc > self.best["mcc"]:
                self.best.update(mcc=mcc, epoch=epoch, h_tr=h_tr, h_te=h_te)

    def __call__(self, epoch: int, state) -> None:
        self._submit(epoch, *(self.trainer.encode(state, self.x_rep[i]) for i in (self.tr, self.val, self.te)))
        self.collect(block=False)
        while len(self.pending) > self.max_pending:  # bounds the encodings held in memory
            self.pending[0][1].result()
            self.collect(block=False)

    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {}
        if self.best["h_tr"] is not None:
            arrays.update(best_h_tr=self.best["h_tr"], best_h_te=self.best["h_te"])
        for epoch, _, h_tr, h_val, h_te in self.pending:
            arrays.update({f"{epoch}_h_tr": h_tr, f"{epoch}_h_val": h_val, f"{epoch}_h_te": h_te})
        meta = {"history": self.history, "pending": [p[0] for p in self.pending]}
        if self.best["h_tr"] is not None:
            meta.update(best_epoch=self.best["epoch"], best_mcc=self.best["mcc"])
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.history = [dict(h) for h in meta["history"]]
        if "best_epoch" in meta:
            self.best.update(mcc=meta["best_mcc"], epoch=meta["best_epoch"], h_tr=arrays["best_h_tr"],
                             h_te=arrays["best_h_te"])
        for epoch in meta["pending"]:
            self._submit(epoch, *(arrays[f"{epoch}_{part}"] for part in ("h_tr", "h_val", "h_te")))


def run_fold(trainer: Trainer, x: np.ndarray, task: Task, fold: int, cfg, pool=None, x_rep=None,
             ckpt_dir: str | None = None) -> dict:
    """Train, select and score one outer fold; returns the raw and learnt-representation scores and
    the selection.

    ``x`` is the log expression (the raw-gene baseline's input) and ``x_rep`` the encoder's input
    (default ``x``; the masking baseline's scanpy-preprocessed genes).  The SVM grid searches
    (the raw baseline and each model-selection point) run on ``pool`` while the encoder trains.
    With ``ckpt_dir`` the training and the selection are checkpointed at every model-selection
    point, and a fold interrupted there continues from its latest checkpoint.
    """
    pool = pool if pool is not None else _Inline()
    x_rep = x if x_rep is None else x_rep
    tr, te = task.folds[fold]
    y = task.y
    seed = _fold_seed(cfg.seed, task.cell_type, fold)
    raw_job = pool.submit(fit_and_score, x[tr], y[tr], x[te], y[te], cfg, seed)
    selection = Selection(trainer, x_rep, task, fold, cfg, pool, seed)
    t0 = time.perf_counter()
    _, losses = trainer.fit(x_rep[tr], y[tr], seed, callback=selection, ckpt_dir=ckpt_dir)
    train_s = time.perf_counter() - t0
    selection.collect(block=True)
    best = selection.best
    gs, gs_scores = fit_and_score(best["h_tr"], y[tr], best["h_te"], y[te], cfg, seed)
    raw, raw_scores = raw_job.result()
    return {"fold": fold, "gsrcl": gs_scores, "raw": raw_scores,
            "best_epoch": best["epoch"], "best_val_mcc": best["mcc"], "selection": selection.history,
            "gsrcl_svm": gs, "raw_svm": raw, "final_loss": losses[-1],
            "train_s": train_s}


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


def masking_input(X, n_top_genes: int) -> np.ndarray:
    """The masking baseline's input: scanpy's preprocessing (genes seen in no cell dropped,
    per-cell normalisation to the median total, log1p, the ``n_top_genes`` most variable genes,
    scaling to unit variance clipped at 10) of the counts ``X`` (cells, genes).  Every cell is
    kept, so the splits stay those of the task.  With ``n_top_genes = 0``: ``log(1 + x)``."""
    if not n_top_genes:
        return log_transform(X)
    import anndata
    import scanpy as sc

    ad = anndata.AnnData(X.astype(np.float32) if sp.issparse(X) else np.asarray(X, np.float32))
    sc.pp.filter_genes(ad, min_cells=1)
    if n_top_genes >= ad.n_vars:
        raise InputError(f"--n-top-genes {n_top_genes} is not below the {ad.n_vars} expressed genes; choose fewer.")
    sc.pp.normalize_total(ad)
    sc.pp.log1p(ad)
    sc.pp.highly_variable_genes(ad, n_top_genes=n_top_genes, subset=True)
    sc.pp.scale(ad, max_value=10)
    return np.asarray(ad.X, np.float32)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj)
    return obj


class FoldStore:
    """Completed folds kept on disk so that an interrupted evaluation resumes where it stopped.

    One JSON file per (cell type, fold) in ``directory``, written atomically, beside the
    checkpoints of the fold in training (removed once it is finished), plus a fingerprint of the
    configuration and data: resuming with anything else is refused.
    """

    def __init__(self, directory: str, fingerprint: dict, resume: bool):
        from .. import checkpoint

        self.directory = checkpoint.run_dir(directory, _jsonable(fingerprint), resume)

    def _path(self, cell_type: str, fold: int) -> str:
        return os.path.join(self.directory, f"{zlib.crc32(cell_type.encode()):08x}_{fold}")

    def checkpoint_dir(self, cell_type: str, fold: int) -> str:
        """The folder of the in-fold checkpoints of (cell type, fold)."""
        return self._path(cell_type, fold) + ".partial"

    def get(self, cell_type: str, fold: int):
        import json
        import shutil

        try:
            with open(self._path(cell_type, fold) + ".json") as fh:
                result = json.load(fh)
        except FileNotFoundError:
            return None
        shutil.rmtree(self.checkpoint_dir(cell_type, fold), ignore_errors=True)  # left by a kill after the fold
        return result

    def put(self, cell_type: str, fold: int, result: dict) -> None:
        import shutil

        from ..outputs import write_json

        write_json(self._path(cell_type, fold) + ".json", _jsonable(result))
        shutil.rmtree(self.checkpoint_dir(cell_type, fold), ignore_errors=True)


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

    Returns ``{"method", "tasks": [{cell_type, n_cells, folds: [...], raw: summary, gsrcl: summary}],
    "skipped": [sentences]}`` (``gsrcl`` holds the learnt representation's scores, whichever
    augmentation ``cfg`` uses).  With ``fold_dir`` every finished fold is saved there and the fold
    in training is checkpointed at every model-selection point; with ``resume`` the folds already
    there are reused and an interrupted fold continues from its latest checkpoint.  Raises
    InputError, before any training, when no cell type is large enough for the splits.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .. import checkpoint

    if data.labels is None:
        raise InputError("GsRCL's evaluation needs cell-type labels; give a labelled data file "
                         "(HDF5 with Y, .h5ad with --label-key, or CSV with --labels-csv).")
    names = list(data.label_names)
    codes = select_types(names, cell_types)
    tasks, skipped = [], []
    for code in codes:
        task = make_task(data.labels, code, names[code], cfg)
        if isinstance(task, str):
            skipped.append(task)
        else:
            tasks.append(task)
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

        bar = tqdm(total=len(tasks) * cfg.n_folds, desc=f"{cfg.method} folds", unit="fold")
    results = []
    pool = ThreadPoolExecutor(cfg.svm_workers) if cfg.svm_workers > 0 else None
    try:
        for task in tasks:
            folds = []
            for k in range(cfg.n_folds):
                result = store.get(task.cell_type, k) if store is not None else None
                if result is None:
                    ckpt = store.checkpoint_dir(task.cell_type, k) if store is not None else None
                    if ckpt is not None and (epoch := checkpoint.latest_step(ckpt)) is not None:
                        log(f"continuing cell type '{task.cell_type}' fold {k} from its checkpoint at epoch {epoch}")
                    result = run_fold(trainer, x, task, k, cfg, pool=pool, x_rep=x_rep, ckpt_dir=ckpt)
                    if store is not None:
                        store.put(task.cell_type, k, result)
                folds.append(result)
                if bar is not None:
                    bar.set_postfix_str(f"{task.cell_type} fold {k}")
                    bar.update()
            results.append({"cell_type": task.cell_type, "n_cells": int(task.y.sum()), "folds": folds,
                            "raw": summarise(folds, "raw"), "gsrcl": summarise(folds, "gsrcl")})
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    return {"method": cfg.method, "tasks": results, "skipped": skipped}


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
             "log genes)",
             f"{'cell type':<28}{'cells':>6}  {'MCC raw':>15}  {'MCC ' + rep:>15}  {'F1 raw':>15}  "
             f"{'F1 ' + rep:>15}  {'AP raw':>15}  {'AP ' + rep:>15}"]
    for t in results["tasks"]:
        cells = [f"{t[m][f'{k}_mean']:.3f} +- {t[m][f'{k}_se']:.3f}" for k in METRICS for m in ("raw", "gsrcl")]
        lines.append(f"{t['cell_type'][:27]:<28}{t['n_cells']:>6}  " + "  ".join(f"{c:>15}" for c in cells))
    lines.extend(results["skipped"])
    return "\n".join(lines) + "\n"
