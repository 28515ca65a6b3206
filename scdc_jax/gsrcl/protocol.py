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

import time
import zlib
from dataclasses import dataclass, field

import jax
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import make_scorer, matthews_corrcoef
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.svm import SVC

from ..errors import InputError
from ..metrics import binary_scores
from .train import Trainer, log_transform

METRICS = ("mcc", "f1", "ap")


def sq_distances(a, b) -> np.ndarray:
    """Squared Euclidean distances (n_a, n_b) in float64 between the rows of ``a`` and ``b``."""
    a = np.asarray(a.toarray() if sp.issparse(a) else a, np.float64)
    b = np.asarray(b.toarray() if sp.issparse(b) else b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


class DistanceRBFSVC(ClassifierMixin, BaseEstimator):
    """An RBF SVC fitted on precomputed squared distances (a pairwise input for GridSearchCV).

    The kernel ``exp(-gamma * d)`` is computed from the distances, so a grid over gamma and C
    needs the (costly, for all genes) distances once.  ``gamma="scale"`` means ``scale_gamma``:
    sklearn's ``1 / (n_features * X.var())`` computed on the whole training set given to
    :func:`svm_search` rather than on each inner-CV split.
    """

    def __init__(self, C=1.0, gamma="scale", scale_gamma=1.0):
        self.C = C
        self.gamma = gamma
        self.scale_gamma = scale_gamma

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = True
        return tags

    def _kernel(self, d):
        return np.exp(-self.gamma_ * d)

    def fit(self, d, y):
        self.gamma_ = self.scale_gamma if self.gamma == "scale" else float(self.gamma)
        self.svc_ = SVC(kernel="precomputed", C=self.C).fit(self._kernel(d), y)
        self.classes_ = self.svc_.classes_
        return self

    def predict(self, d):
        return self.svc_.predict(self._kernel(d))

    def decision_function(self, d):
        return self.svc_.decision_function(self._kernel(d))


class SVMGrid:
    """The GsRCL SVM: RBF SVC grid (gamma x C from ``cfg``) scored by MCC with stratified inner
    CV, refitted on all of ``x`` (n, f); predicts from feature rows."""

    def __init__(self, x, y, cfg, seed: int):
        self.x = x
        if sp.issparse(x):
            mean = x.sum() / np.prod(x.shape)
            var = x.multiply(x).sum() / np.prod(x.shape) - mean ** 2
        else:
            var = np.asarray(x, np.float64).var()
        scale = 1.0 / (x.shape[1] * var) if var > 0 else 1.0
        cv = StratifiedKFold(cfg.svm_cv, shuffle=True, random_state=seed)
        self.search = GridSearchCV(DistanceRBFSVC(scale_gamma=scale), cfg.svm_grid(),
                                   scoring=make_scorer(matthews_corrcoef), cv=cv, n_jobs=cfg.n_jobs,
                                   refit=True, error_score=0.0).fit(sq_distances(x, x), y)
        self.best_params_ = self.search.best_params_

    def predict(self, x_new):
        return self.search.best_estimator_.predict(sq_distances(x_new, self.x))

    def decision_function(self, x_new):
        return self.search.best_estimator_.decision_function(sq_distances(x_new, self.x))


def svm_search(x, y, cfg, seed: int) -> SVMGrid:
    """Fit the SVM grid search on ``x`` (n, f), dense or sparse, and binary ``y`` (n,)."""
    return SVMGrid(x, y, cfg, seed)


def svm_scores(search: SVMGrid, x, y) -> dict[str, float]:
    """MCC and F1 of the predictions and AP of the decision function on ``x``, ``y``."""
    return binary_scores(y, search.predict(x), search.decision_function(x))


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


def run_fold(trainer: Trainer, x: np.ndarray, task: Task, fold: int, cfg) -> dict:
    """Train, select and score one outer fold; returns the raw and GsRCL scores and the selection."""
    tr, te = task.folds[fold]
    y = task.y
    seed = _fold_seed(cfg.seed, task.cell_type, fold)
    best = {"mcc": -np.inf, "epoch": 0, "params": None}
    history = []

    def select(epoch, params):
        h_tr, h_val = trainer.encode(params, x[tr]), trainer.encode(params, x[task.val])
        search = svm_search(h_tr, y[tr], cfg, seed)
        mcc = float(matthews_corrcoef(y[task.val], search.predict(h_val)))
        history.append({"epoch": epoch, "val_mcc": mcc})
        if mcc > best["mcc"]:
            best.update(mcc=mcc, epoch=epoch, params=jax.device_get(params))

    t0 = time.perf_counter()
    _, losses = trainer.fit(x[tr], y[tr], seed, callback=select)
    train_s = time.perf_counter() - t0
    h_tr, h_te = trainer.encode(best["params"], x[tr]), trainer.encode(best["params"], x[te])
    gs = svm_search(h_tr, y[tr], cfg, seed)
    raw = svm_search(x[tr], y[tr], cfg, seed)
    return {"fold": fold, "gsrcl": svm_scores(gs, h_te, y[te]), "raw": svm_scores(raw, x[te], y[te]),
            "best_epoch": best["epoch"], "best_val_mcc": best["mcc"], "selection": history,
            "gsrcl_svm": gs.best_params_, "raw_svm": raw.best_params_, "final_loss": losses[-1],
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


def evaluate(data, cfg, *, cell_types: list[str] | None = None, progress: bool = True, log=print) -> dict:
    """Run the protocol on a labelled :class:`~scdc_jax.io.CountData`.

    Returns ``{"tasks": [{cell_type, n_cells, folds: [...], raw: summary, gsrcl: summary}],
    "skipped": [sentences]}``.
    """
    if data.labels is None:
        raise InputError("GsRCL's evaluation needs cell-type labels; give a labelled data file "
                         "(HDF5 with Y, .h5ad with --label-key, or CSV with --labels-csv).")
    names = list(data.label_names)
    codes = select_types(names, cell_types)
    x = log_transform(data.X)
    trainer = Trainer(x.shape[1], cfg)
    tasks, skipped = [], []
    for code in codes:
        task = make_task(data.labels, code, names[code], cfg)
        if isinstance(task, str):
            log(task)
            skipped.append(task)
            continue
        tasks.append(task)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks) * cfg.n_folds, desc="GsRCL folds", unit="fold")
    results = []
    for task in tasks:
        folds = []
        for k in range(cfg.n_folds):
            folds.append(run_fold(trainer, x, task, k, cfg))
            if bar is not None:
                bar.set_postfix_str(f"{task.cell_type} fold {k}")
                bar.update()
        results.append({"cell_type": task.cell_type, "n_cells": int(task.y.sum()), "folds": folds,
                        "raw": summarise(folds, "raw"), "gsrcl": summarise(folds, "gsrcl")})
    if bar is not None:
        bar.close()
    return {"tasks": results, "skipped": skipped}


def results_table(results: dict, dataset: str):
    """One row per (dataset, cell type, method) with the mean and standard error of each metric."""
    import pandas as pd

    rows = []
    for t in results["tasks"]:
        for method in ("raw", "gsrcl"):
            rows.append({"dataset": dataset, "cell_type": t["cell_type"], "n_cells": t["n_cells"],
                         "method": method, **t[method]})
    return pd.DataFrame(rows, columns=["dataset", "cell_type", "n_cells", "method",
                                       *[f"{m}_{s}" for m in METRICS for s in ("mean", "se")]])


def text_summary(results: dict, dataset: str) -> str:
    lines = [f"GsRCL one-vs-rest evaluation on {dataset} (mean +- standard error over folds)",
             f"{'cell type':<28}{'cells':>6}  {'MCC raw':>15}  {'MCC GsRCL':>15}  {'F1 raw':>15}  "
             f"{'F1 GsRCL':>15}  {'AP raw':>15}  {'AP GsRCL':>15}"]
    for t in results["tasks"]:
        cells = [f"{t[m][f'{k}_mean']:.3f} +- {t[m][f'{k}_se']:.3f}" for k in METRICS for m in ("raw", "gsrcl")]
        lines.append(f"{t['cell_type'][:27]:<28}{t['n_cells']:>6}  " + "  ".join(f"{c:>15}" for c in cells))
    lines.extend(results["skipped"])
    return "\n".join(lines) + "\n"
