"""Shared fixtures: small synthetic count data and the path of the shared real data."""
from __future__ import annotations

import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", False)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def shared_file(name: str) -> str:
    """Path of a file in ../shared/data, or skip the test with the reason."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"real data {path} is absent (only developer machines and CI have ../shared/data)")
    return path


def synthetic_counts(n_cells: int = 240, n_genes: int = 120, n_groups: int = 3, *, seed: int = 0,
                     n_batches: int = 0, batch_effect: float = 0.0):
    """Negative-binomial counts with ``n_groups`` groups of distinct gene programmes.

    Returns (counts int64 (n, g), group labels (n,), batch labels (n,) or None).  With batches,
    ``batch_effect`` multiplies a random half of the genes by ``exp(+-batch_effect)`` per batch.
    """
    rng = np.random.default_rng(seed)
    groups = np.arange(n_cells) % n_groups
    base = rng.gamma(2.0, 1.0, size=n_genes)
    prog = np.exp(rng.normal(0.0, 1.5, size=(n_groups, n_genes)) * (rng.random((n_groups, n_genes)) < 0.3))
    mu = base[None, :] * prog[groups] * rng.lognormal(0.0, 0.3, size=(n_cells, 1))
    batches = None
    if n_batches:
        batches = rng.permutation(np.arange(n_cells) % n_batches)
        scale = np.exp(batch_effect * rng.choice([-1.0, 1.0], size=(n_batches, n_genes))
                       * (rng.random((n_batches, n_genes)) < 0.5))
        mu = mu * scale[batches]
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, mu / theta))
    counts[rng.random(counts.shape) < 0.1] = 0
    return counts.astype(np.int64), groups, batches


@pytest.fixture
def counts_small():
    return synthetic_counts()


def flip_byte(path) -> None:
    """Change one byte in the middle of ``path`` (same size, other content)."""
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        byte = fh.read(1)[0]
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte ^ 0xFF]))


def largest_file(folder) -> str:
    """The largest file under ``folder`` (in an orbax checkpoint: the arrays)."""
    return max((os.path.join(d, n) for d, _, names in os.walk(folder) for n in names), key=os.path.getsize)


class _Touch:
    """Unpickling this creates the file ``marker`` (a stand-in for code a crafted pickle runs)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_pickle(marker) -> bytes:
    """A pickle whose unpickling creates the file ``marker``."""
    import pickle

    return pickle.dumps(_Touch(marker))
