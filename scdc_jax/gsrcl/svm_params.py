"""The per-type SVMs of a GsRCL reference as arrays, and their scores computed in JAX.

A reference stores its calibrated SVMs (:func:`~scdc_jax.gsrcl.svm.calibrated_svm`) as their
parameters in ``svms.npz``, read with ``allow_pickle=False``: loading runs no code and needs no
particular scikit-learn.  For k cell types and m support vectors (of all types together),

    vectors   (m, d) float32   the reference encodings that are support vectors of some type
    dual_coef (k, m) float64   type t's dual coefficient of vector j, 0 where j is not one of its own
    intercept, gamma, sigmoid_a, sigmoid_b   (k,) float64

    f_t(x) = sum_j dual_coef[t, j] * exp(-gamma[t] * |x - vectors[j]|^2) + intercept[t]
    P_t(x) = 1 / (1 + exp(sigmoid_a[t] * f_t(x) + sigmoid_b[t]))

which are scikit-learn's ``SVC.decision_function`` and ``CalibratedClassifierCV.predict_proba``
(tested to float32 tolerance), here computed on the device in float32.
"""
from __future__ import annotations

import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..outputs import atomic_path

KEYS = ("vectors", "dual_coef", "intercept", "gamma", "sigmoid_a", "sigmoid_b")


def svm_arrays(h, params: list[dict]) -> dict[str, np.ndarray]:
    """The arrays of the SVMs ``params`` (one :func:`~scdc_jax.gsrcl.svm.svm_parameters` dict per
    type, in order) fitted on the rows of ``h`` (n, d)."""
    rows = np.unique(np.concatenate([p["support"] for p in params]))
    dual = np.zeros((len(params), len(rows)), np.float64)
    for t, p in enumerate(params):
        dual[t, np.searchsorted(rows, p["support"])] = p["dual_coef"]
    return {"vectors": np.asarray(h, np.float32)[rows], "dual_coef": dual,
            **{key: np.array([p[name] for p in params], np.float64)
               for key, name in (("intercept", "intercept"), ("gamma", "gamma"), ("sigmoid_a", "a"),
                                 ("sigmoid_b", "b"))}}


def save_svms(path: str, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: arrays[k] for k in KEYS})


def load_svms(path: str, n_types: int, dim: int) -> dict[str, np.ndarray]:
    """The arrays of ``path`` (never unpickled), checked to describe ``n_types`` SVMs on ``dim``-wide
    encodings; InputError otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not an SVM store of scdc_jax ({str(exc).splitlines()[0][:200]}).") from None
    m = arrays["vectors"].shape[0] if arrays["vectors"].ndim == 2 else -1
    shapes = {"vectors": (m, dim), "dual_coef": (n_types, m), **{k: (n_types,) for k in KEYS[2:]}}
    bad = [k for k in KEYS if arrays[k].shape != shapes[k] or arrays[k].dtype.kind != "f"]
    if bad:
        raise InputError(f"{path} does not hold {n_types} SVMs on {dim}-wide encodings (wrong {', '.join(bad)}).")
    return arrays


@jax.jit
def _scores(vectors, dual_coef, intercept, gamma, sigmoid_a, sigmoid_b, h):
    exact = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on GPUs: the kernel is exponential in d
    # Distances are shift-invariant; centring on the vectors keeps |x|^2 + |v|^2 - 2 x.v from
    # cancelling away the float32 digits when the encodings sit far from the origin.
    centre = vectors.mean(0)
    x, v = h - centre, vectors - centre
    d = jnp.maximum((x * x).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2.0 * jnp.dot(x, v.T, precision=exact), 0.0)
    # one type at a time: an (n, m) kernel in memory, not (k, n, m)
    f = jax.lax.map(lambda gc: jnp.dot(jnp.exp(-gc[0] * d), gc[1], precision=exact), (gamma, dual_coef)).T
    f = f + intercept
    return f, jax.nn.sigmoid(-(sigmoid_a * f + sigmoid_b))


def svm_scores(arrays: dict[str, np.ndarray], h, *, max_elements: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """(decision functions (n, k), probabilities of each type (n, k)), float32, of encodings ``h`` (n, d).

    Rows go to the device in blocks of at most ``max_elements / m`` (the kernel block is n x m),
    the last block padded so that every block has one shape and one compilation.
    """
    h = np.asarray(h, np.float32)
    k, m = arrays["dual_coef"].shape
    params = [jnp.asarray(arrays[key], jnp.float32) for key in KEYS]
    block = max(1, min(len(h), max_elements // max(m, 1)))
    fs, ps = [np.zeros((0, k), np.float32)], [np.zeros((0, k), np.float32)]
    for start in range(0, len(h), block):
        part = h[start:start + block]
        f, p = _scores(*params, np.pad(part, ((0, block - len(part)), (0, 0))))
        fs.append(np.asarray(f)[:len(part)])
        ps.append(np.asarray(p)[:len(part)])
    return np.concatenate(fs), np.concatenate(ps)
