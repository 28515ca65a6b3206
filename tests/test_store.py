"""Counts streamed from disk (scdc_jax.store): the streamed preprocessing equals the in-memory one."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import synthetic_counts

from scdc_jax.errors import InputError
from scdc_jax.io import read_counts
from scdc_jax.preprocess import prepare
from scdc_jax.store import CellStore, Prefetch, kept_rows, stream_prepare


def counts_with_empties():
    X, groups, _ = synthetic_counts(300, 80, seed=3)
    X[[5, 150, 299]] = 0          # cells without counts: removed
    X[:, [0, 41]] = 0             # genes without counts: removed
    return X, groups


def write_anndata(path, X, groups, fmt):
    import anndata
    import pandas as pd

    ad = anndata.AnnData(X=sp.csr_matrix(X.astype(np.float32)),
                         obs=pd.DataFrame({"type": pd.Categorical([f"t{g}" for g in groups])},
                                          index=[f"c{i}" for i in range(len(X))]),
                         var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))
    ad.write_h5ad(path) if fmt == "h5ad" else ad.write_zarr(path)


@pytest.fixture(scope="module", params=["h5ad", "zarr", "h5"])
def stored(request, tmp_path_factory):
    X, groups = counts_with_empties()
    path = str(tmp_path_factory.mktemp("store") / f"d.{request.param}")
    if request.param == "h5":
        with h5py.File(path, "w") as f:
            f.create_dataset("X", data=X)
            f.create_dataset("Y", data=groups)
        return path, {}
    write_anndata(path, X, groups, request.param)
    return path, {"label_key": "type"}


@pytest.mark.parametrize("select", [0, 30])
def test_streamed_preprocessing_equals_in_memory(stored, select):
    path, keys = stored
    mem = prepare(read_counts(path, **keys), select_genes_n=select)
    store = CellStore(path, **keys)
    got = stream_prepare(store, select_genes_n=select, block=64)  # five blocks, the last one short
    np.testing.assert_array_equal(got.cells, mem.cells)
    np.testing.assert_array_equal(got.genes, mem.genes)
    assert got.norm["median_total"] == mem.norm["median_total"]
    np.testing.assert_allclose(got.size_factors, mem.size_factors, rtol=1e-7)
    # the blocks' statistics are merged in another grouping than the in-memory chunks: equal to
    # float64 rounding, then cast to float32
    np.testing.assert_allclose(got.norm["mean"], mem.norm["mean"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.norm["std"], mem.norm["std"], rtol=1e-6)
    np.testing.assert_array_equal(got.data.labels, mem.data.labels)
    raw = mem.raw.toarray() if sp.issparse(mem.raw) else mem.raw
    widest = int((raw > 0).sum(1).max()) if store.sparse else raw.shape[1]
    assert got.max_row_nnz == widest
    parts = [kept_rows(store, got, a, min(a + 64, len(got.cells))) for a in range(0, len(got.cells), 64)]
    streamed = np.vstack([p.toarray() if sp.issparse(p) else p for p in parts])
    np.testing.assert_array_equal(streamed, raw)
    store.close()


def test_prefetch_keeps_order_and_raises_where_it_failed():
    assert list(Prefetch(lambda i: i * i, range(7), depth=2)) == [i * i for i in range(7)]

    def fail_at_3(i):
        if i == 3:
            raise ValueError("block 3 unreadable")
        return i

    seen = []
    with pytest.raises(ValueError, match="block 3"):
        for v in Prefetch(fail_at_3, range(6)):
            seen.append(v)
    assert seen == [0, 1, 2]
    it = Prefetch(lambda i: i, range(1000), depth=2)
    for v in it:
        if v == 2:
            break
    it._thread.join(timeout=5)
    assert not it._thread.is_alive(), "leaving the iteration early stops the reading thread"


def test_bad_stores_one_sentence(tmp_path):
    X, groups = counts_with_empties()
    csv = tmp_path / "d.csv"
    np.savetxt(csv, X, delimiter=",", header=",".join(f"g{j}" for j in range(X.shape[1])), comments="")
    with pytest.raises(InputError, match="reads .h5ad files"):
        CellStore(str(csv))
    neg = X.copy()
    neg[290, 3] = -1  # in the last block only
    with h5py.File(tmp_path / "neg.h5", "w") as f:
        f.create_dataset("X", data=neg)
    with pytest.raises(InputError, match="negative"):
        stream_prepare(CellStore(str(tmp_path / "neg.h5")), block=64)
    import anndata

    csc = tmp_path / "csc.h5ad"
    anndata.AnnData(X=sp.csc_matrix(X.astype(np.float32))).write_h5ad(csc)
    with pytest.raises(InputError, match="CSR"):
        CellStore(str(csc))
    with pytest.raises(InputError, match="no 'layers/counts'"):
        write_anndata(tmp_path / "a.h5ad", X, groups, "h5ad")
        CellStore(str(tmp_path / "a.h5ad"), layer="counts")
