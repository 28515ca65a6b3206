"""The SVMs of GsRCL: an RBF SVC grid search on precomputed distances, and its calibrated form.

Everything here is NumPy and scikit-learn only (no JAX), so the grid searches can run in worker
processes beside the training.

- :func:`svm_search` fits the published grid (gamma x C, scoring MCC with stratified inner CV) on
  a representation or on the log genes; the squared distances between the rows are computed once
  and every gamma of the grid is a cheap ``exp(-gamma * d)`` of them, shared by all C.
- :func:`selection_scores` scores one model-selection point for several one-vs-rest tasks at
  once: the distances of the point's encodings are shared by all the tasks.
- :func:`calibrated_svm` is the per-type classifier of a reference (probabilities by Platt-style
  sigmoid calibration, as ``CalibratedClassifierCV(SVC(...), ensemble=False)``);
  :func:`svm_parameters` takes the numbers that define it out of scikit-learn's objects, so a
  reference stores arrays, not pickles (:mod:`scdc_jax.gsrcl.svm_params` computes with them).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC

from ..metrics import binary_scores


def sq_distances(a, b) -> np.ndarray:
    """Squared Euclidean distances (n_a, n_b) in float64 between the rows of ``a`` and ``b``."""
    a = np.asarray(a.toarray() if sp.issparse(a) else a, np.float64)
    b = np.asarray(b.toarray() if sp.issparse(b) else b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def scale_gamma(x) -> float:
    """scikit-learn's ``gamma="scale"``: ``1 / (n_features * x.var())`` (1 for constant ``x``)."""
    if sp.issparse(x):
        mean = x.sum() / np.prod(x.shape)
        var = x.multiply(x).sum() / np.prod(x.shape) - mean ** 2
    else:
        var = np.asarray(x, np.float64).var()
    return 1.0 / (x.shape[1] * var) if var > 0 else 1.0


def binary_mcc(y_true, y_pred) -> float:
    """Matthews correlation of 0/1 labels, the same arithmetic as scikit-learn's
    ``matthews_corrcoef`` (so equal to the last bit) without its input checks, which cost more
    than the small SVM fits of a grid search."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    c = np.bincount(2 * y_true + y_pred, minlength=4).reshape(2, 2)
    t_sum, p_sum = c.sum(1, dtype=np.float64), c.sum(0, dtype=np.float64)
    n = p_sum.sum()
    cov_ytyp = np.trace(c, dtype=np.float64) * n - np.dot(t_sum, p_sum)
    cov = (n ** 2 - np.dot(p_sum, p_sum)) * (n ** 2 - np.dot(t_sum, t_sum))
    return 0.0 if cov == 0 else float(cov_ytyp / np.sqrt(cov))


def grid_search(d: np.ndarray, y: np.ndarray, cfg, seed: int, gamma_scale: float) -> dict:
    """The best ``{"C", "gamma"}`` of the RBF SVC grid on squared distances ``d`` (n, n), by mean
    MCC over a stratified ``cfg.svm_cv``-fold inner CV seeded by ``seed``.

    The same choice as scikit-learn's ``GridSearchCV(SVC(), {"C": ..., "gamma": ...},
    scoring=MCC, error_score=0)`` on the feature rows (candidates in its order, the first of equal
    means wins), except that ``gamma="scale"`` is ``gamma_scale`` of the whole training set rather
    than of each inner split.  Each split's distances are gathered once and the kernel of each
    gamma is computed in place from them, once for all C.
    """
    gammas, cs = list(cfg.svm_gamma), [float(c) for c in cfg.svm_c]
    splits = list(StratifiedKFold(cfg.svm_cv, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    scores = np.zeros((len(cs), len(gammas), len(splits)))
    for k, (tr, te) in enumerate(splits):
        d_tr, d_te = d[np.ix_(tr, tr)], d[np.ix_(te, tr)]  # gathered once per split
        k_tr, k_te = np.empty_like(d_tr), np.empty_like(d_te)
        for j, gamma in enumerate(gammas):
            g = gamma_scale if gamma == "scale" else float(gamma)
            np.exp(np.multiply(d_tr, -g, out=k_tr), out=k_tr)
            np.exp(np.multiply(d_te, -g, out=k_te), out=k_te)
            for i, c in enumerate(cs):
                try:
                    svc = SVC(kernel="precomputed", C=c).fit(k_tr, y[tr])
                    scores[i, j, k] = binary_mcc(y[te], svc.predict(k_te))
                except ValueError:  # a split with one class: scored 0, as GridSearchCV's error_score
                    scores[i, j, k] = 0.0
    best = int(np.argmax(np.average(scores.reshape(len(cs) * len(gammas), -1), axis=1)))
    return {"C": cs[best // len(gammas)], "gamma": gammas[best % len(gammas)]}


class SVMGrid:
    """The GsRCL SVM: the RBF SVC grid (gamma x C from ``cfg``, :func:`grid_search`) refitted on
    all of ``x`` (n, f); predicts from feature rows.

    ``d`` and ``gamma_scale`` may be given when the caller has them already (the squared distances
    of ``x`` to itself and ``scale_gamma(x)``); ``predict`` and ``decision_function`` take the
    query's squared distances to ``x`` as ``d`` likewise.  ``best_params`` skips the grid search
    when its result on these ``x``, ``y`` and ``seed`` is known already (the grid is
    deterministic, so the fitted SVC is the same).
    """

    def __init__(self, x, y, cfg, seed: int, *, d=None, gamma_scale: float | None = None,
                 best_params: dict | None = None):
        self.x = x
        d = sq_distances(x, x) if d is None else d
        scale = scale_gamma(x) if gamma_scale is None else gamma_scale
        self.best_params_ = (dict(best_params) if best_params is not None
                             else grid_search(d, np.asarray(y), cfg, seed, scale))
        self.gamma_ = scale if self.best_params_["gamma"] == "scale" else float(self.best_params_["gamma"])
        self.svc_ = SVC(kernel="precomputed", C=self.best_params_["C"]).fit(np.exp(-self.gamma_ * d), y)

    def _kernel(self, x_new, d):
        return np.exp(-self.gamma_ * (sq_distances(x_new, self.x) if d is None else d))

    def predict(self, x_new, d=None):
        return self.svc_.predict(self._kernel(x_new, d))

    def decision_function(self, x_new, d=None):
        return self.svc_.decision_function(self._kernel(x_new, d))


def svm_search(x, y, cfg, seed: int) -> SVMGrid:
    """Fit the SVM grid search on ``x`` (n, f), dense or sparse, and binary ``y`` (n,)."""
    return SVMGrid(x, y, cfg, seed)


def fit_and_score_tasks(x_tr, ys_tr: dict, x_te, ys_te: dict, cfg, seeds: dict,
                        chosen: dict | None = None) -> dict:
    """The grid of each task fitted on ``x_tr`` and scored on ``x_te`` (MCC and F1 of its
    predictions, AP of its decision function): ``{task: (best grid parameters, scores)}``.  The
    distances are computed once for all the tasks.  ``chosen`` ``{task: {"C", "gamma"}}`` gives
    grid results already known for these inputs (no search is run again for those tasks)."""
    d_tr, d_te, gamma = sq_distances(x_tr, x_tr), sq_distances(x_te, x_tr), scale_gamma(x_tr)
    chosen = chosen or {}
    out = {}
    for name, y in ys_tr.items():
        grid = SVMGrid(x_tr, y, cfg, seeds[name], d=d_tr, gamma_scale=gamma, best_params=chosen.get(name))
        y_te = ys_te[name]
        out[name] = (grid.best_params_, binary_scores(y_te, grid.predict(None, d_te),
                                                      grid.decision_function(None, d_te)))
    return out


def selection_scores(h_tr, ys_tr: dict, h_val, ys_val: dict, cfg, seeds: dict) -> dict[str, tuple]:
    """``{name: (validation MCC, grid choice)}`` of the grid fitted on ``h_tr`` for each task
    ``{name: y}`` of one selection point (the same values :func:`svm_search` gives task by task);
    the grid choice lets the selected point be refitted later without searching again."""
    d_tr, d_val, gamma = sq_distances(h_tr, h_tr), sq_distances(h_val, h_tr), scale_gamma(h_tr)
    out = {}
    for name, y in ys_tr.items():
        grid = SVMGrid(h_tr, y, cfg, seeds[name], d=d_tr, gamma_scale=gamma)
        out[name] = (binary_mcc(ys_val[name], grid.predict(None, d_val)), grid.best_params_)
    return out


def calibrated_svm(h, y, cfg, seed: int):
    """The grid's best SVC on ``h`` (n, d), with probabilities from a sigmoid calibration."""
    from sklearn.calibration import CalibratedClassifierCV

    search = svm_search(h, y, cfg, seed)
    cv = max(2, min(3, int(y.sum()), int(len(y) - y.sum())))
    clf = CalibratedClassifierCV(SVC(kernel="rbf", **search.best_params_), ensemble=False, cv=cv)
    return clf.fit(h, y)


def svm_parameters(clf) -> dict:
    """The parameters of a fitted :func:`calibrated_svm`, from which its scores follow exactly:

    f(x) = sum_i dual_coef[i] * exp(-gamma * |x - h[support[i]]|^2) + intercept   (SVC.decision_function)
    P(x) = 1 / (1 + exp(a * f(x) + b))                   (CalibratedClassifierCV.predict_proba[:, 1])

    ``support`` (s,) indexes the rows of the training ``h``; ``dual_coef`` (s,) float64; the rest
    floats.  With ``ensemble=False`` there is one calibrated classifier: the SVC refitted on all
    rows and one sigmoid (binary problems have one calibrator, for class 1).
    """
    (cal,) = clf.calibrated_classifiers_
    svc, (sigmoid,) = cal.estimator, cal.calibrators
    assert list(svc.classes_) == [0, 1] and cal.method == "sigmoid", (svc.classes_, cal.method)
    # SVC's public dual_coef_ and intercept_ already carry the sign flip of binary problems;
    # _gamma is the number "scale" stood for (computed by SVC on the float64 training data).
    return {"support": np.asarray(svc.support_, np.int64), "dual_coef": np.asarray(svc.dual_coef_[0], np.float64),
            "intercept": float(svc.intercept_[0]), "gamma": float(svc._gamma),
            "a": float(sigmoid.a_), "b": float(sigmoid.b_)}


def init_worker(parent: int) -> None:
    """Initialiser of SVM worker processes: one BLAS thread each (the cores are shared with the
    training), and an exit as soon as the ``parent`` process is gone, so that a killed evaluation
    leaves no idle workers behind."""
    import os
    import threading
    import time

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
