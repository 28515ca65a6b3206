"""Readers and preprocessing on small synthetic files, plus the real scDeepCluster layouts."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_file, synthetic_counts

from scdc_jax.errors import InputError
from scdc_jax.io import CountData, check_counts, encode_labels, pbmc68k_counts, read_counts
from scdc_jax.preprocess import gene_selection_stats, normalise_log_scale, prepare, select_genes


def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return str(path)


def test_read_dense_h5_with_float_labels_from_one(tmp_path):
    X, groups, _ = synthetic_counts(30, 20)
    path = write_h5(tmp_path / "a.h5", X=X.astype(np.float64), Y=(groups + 1).astype(np.float64))
    d = read_counts(path)
    assert d.X.shape == (30, 20)
    np.testing.assert_array_equal(d.labels, groups)
    assert d.label_names == ["1", "2", "3"]


def test_read_csr_group_and_cell_type_names(tmp_path):
    X, groups, _ = synthetic_counts(30, 20)
    csr = sp.csr_matrix(X)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        g = f.create_group("X")
        for k in ("data", "indices", "indptr"):
            g.create_dataset(k, data=getattr(csr, k))
        g.create_dataset("shape", data=np.array(csr.shape))
        f.create_dataset("Y", data=groups.astype(np.int64))
        f.create_dataset("cell_types", data=np.array([b"T", b"B", b"NK"]))
    d = read_counts(str(tmp_path / "s.h5"))
    assert sp.issparse(d.X)
    np.testing.assert_array_equal(d.X.toarray(), X)
    assert [d.label_names[c] for c in d.labels[:3]] == ["T", "B", "NK"]


def test_read_h5ad_layer_labels_batches(tmp_path):
    import anndata
    import pandas as pd

    X, groups, batches = synthetic_counts(30, 20, n_batches=2)
    ad = anndata.AnnData(np.log1p(X).astype(np.float32),
                         obs=pd.DataFrame({"ct": groups.astype(str), "plate": batches.astype(str)},
                                          index=[f"c{i}" for i in range(30)]))
    ad.layers["counts"] = sp.csr_matrix(X.astype(np.float32))
    ad.write_h5ad(tmp_path / "a.h5ad")
    d = read_counts(str(tmp_path / "a.h5ad"), layer="counts", label_key="ct", batch_key="plate")
    np.testing.assert_array_equal(d.X.toarray(), X)
    assert d.batch.shape == (30, 2) and np.all(d.batch.sum(1) == 1)
    np.testing.assert_array_equal(d.labels, groups)
    with pytest.raises(InputError, match="no layer 'nope'"):
        read_counts(str(tmp_path / "a.h5ad"), layer="nope")
    with pytest.raises(InputError, match="no .obs column 'missing'"):
        read_counts(str(tmp_path / "a.h5ad"), label_key="missing")


def test_check_counts_rejects_bad_values():
    for bad, msg in ((np.array([[1.0, -1.0]]), "negative"), (np.array([[1.0, np.nan]]), "NaN"),
                     (np.array([[1.5, 2.0]]), "non-integer"), (np.zeros((3, 2)), "all zeros"),
                     (np.ones(3), "2-D")):
        with pytest.raises(InputError, match=msg):
            check_counts(bad)


def test_encode_labels_keeps_numeric_order():
    codes, names = encode_labels(np.array([10, 2, 2, 10, 5]))
    assert names == ["2", "5", "10"]
    np.testing.assert_array_equal(codes, [2, 0, 0, 2, 1])


def test_pbmc68k_default_is_integer_counts():
    d = pbmc68k_counts()
    assert d.X.shape == (700, 765)
    assert np.all(d.X == np.round(d.X)) and d.X.min() == 0
    assert len(d.label_names) == 10 and d.labels.shape == (700,)


def ref_gene_stats(X, min_cells=10):
    zr, ml = [], []
    for j in range(X.shape[1]):
        col = X[:, j].astype(np.float64)
        nz = col[col > 0]
        if len(nz) < min_cells:
            zr.append(np.nan), ml.append(np.nan)
        else:
            zr.append(1 - len(nz) / len(col)), ml.append(np.mean(np.log2(nz)))
    return np.array(zr), np.array(ml)


def test_gene_selection_stats_and_exact_count():
    X, _, _ = synthetic_counts(200, 150, seed=3)
    zr, ml = gene_selection_stats(X)
    ezr, eml = ref_gene_stats(X)
    np.testing.assert_allclose(zr, ezr, equal_nan=True)
    np.testing.assert_allclose(ml, eml, equal_nan=True)
    sel = select_genes(X, 40)
    assert sel.sum() == 40
    np.testing.assert_array_equal(select_genes(sp.csr_matrix(X), 40), sel)
    with pytest.raises(InputError, match="larger than the number of genes"):
        select_genes(X, 151)


def test_prepare_filters_and_keeps_labels_aligned():
    X, groups, _ = synthetic_counts(40, 30)
    X[5] = 0  # an empty cell
    X[:, 7] = 0  # an empty gene

    p = prepare(CountData(X=X, labels=groups, label_names=["a", "b", "c"]))
    assert p.shape == (39, 29) and p.x.shape == (39, 29) and 5 not in p.cells and 7 not in p.genes
    np.testing.assert_array_equal(p.data.labels, np.delete(groups, 5))
    totals = np.delete(X, 5, 0)[:, np.delete(np.arange(30), 7)].sum(1)
    np.testing.assert_allclose(p.size_factors, totals / np.median(totals), rtol=1e-6)
    # reference transcription of normalise + log1p + scale (ddof=1)
    raw = np.delete(np.delete(X, 5, 0), 7, 1).astype(np.float64)
    lx = np.log1p(raw * np.median(totals) / totals[:, None])
    np.testing.assert_allclose(p.x, (lx - lx.mean(0)) / lx.std(0, ddof=1), rtol=1e-4, atol=1e-5)


def test_zero_spread_gene_gets_unit_divisor():
    raw = np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]])
    out, norm = normalise_log_scale(raw, np.array([1.0, 1.0, 1.0]) * 10)
    assert norm["std"][0] == 1.0
    assert np.all(np.isfinite(out))


def test_real_scdeepcluster_layouts():
    d = read_counts(shared_file("mouse_bladder_cell_select_2100.h5"))
    assert d.X.shape == (2100, 20670) and len(d.label_names) == 16
    p = read_counts(shared_file("10X_PBMC_select_2100_top2000.h5"))
    assert p.labels.min() == 0 and len(p.label_names) == 8


def test_gene_log_stats_merge_chunks_exactly():
    from scdc_jax.preprocess import gene_log_stats

    X, _, _ = synthetic_counts(50, 20, seed=5)
    X[:, 3] = 0  # zero spread
    scale = np.random.default_rng(0).uniform(0.5, 2.0, 50)
    lx = np.log1p(X * scale[:, None])
    for chunk in (7, 50, 4096):
        mean, std = gene_log_stats(sp.csr_matrix(X), scale, chunk=chunk)
        np.testing.assert_allclose(mean, lx.mean(0), rtol=1e-12, atol=1e-12)
        expected = lx.std(0, ddof=1)
        expected[3] = 1.0
        np.testing.assert_allclose(std, expected, rtol=1e-10, atol=1e-12)


def test_prepare_keeps_sparse_input_sparse():
    X, groups, _ = synthetic_counts(40, 30, seed=2)
    dense = prepare(CountData(X=X))
    sparse = prepare(CountData(X=sp.csr_matrix(X)))
    assert sp.issparse(sparse.raw) and sparse.raw.dtype == np.float32
    np.testing.assert_array_equal(sparse.raw.toarray(), dense.raw)
    for k in ("mean", "std"):
        np.testing.assert_array_equal(sparse.norm[k], dense.norm[k])
    np.testing.assert_array_equal(sparse.x, dense.x)


@pytest.mark.parametrize("first_row", [0, 1])
def test_csv_labels_with_row_numbers_follow_the_cells_order(tmp_path, first_row):
    """Labels written by pandas (rows 0..n-1) or R's write.csv (rows "1".."n") are read in order;
    ids that are neither cell ids nor row numbers are refused."""
    import pandas as pd

    from scdc_jax.io import read_csv_counts

    X = np.arange(12).reshape(4, 3) % 5
    pd.DataFrame(X, index=[f"cell{i}" for i in range(4)], columns=["a", "b", "c"]).to_csv(tmp_path / "x.csv")
    rows = "".join(f'"{i + first_row}","{t}"\n' for i, t in enumerate(["T", "B", "T", "NK"]))
    (tmp_path / "l.csv").write_text('"","cell_type"\n' + rows)
    data = read_csv_counts(str(tmp_path / "x.csv"), labels_csv=str(tmp_path / "l.csv"))
    assert [data.label_names[c] for c in data.labels] == ["T", "B", "T", "NK"]
    (tmp_path / "bad.csv").write_text('"","cell_type"\n' + rows.replace(f'"{first_row}"', '"cellX"'))
    with pytest.raises(InputError, match="do not match the cell ids"):
        read_csv_counts(str(tmp_path / "x.csv"), labels_csv=str(tmp_path / "bad.csv"))


def test_encoder_input_is_built_once_and_equals_the_dense_path():
    X = synthetic_counts(n_cells=80, n_genes=40, seed=3)[0]
    sparse, dense = prepare(CountData(X=sp.csr_matrix(X))), prepare(CountData(X=X))
    assert sparse.x is sparse.x  # cached: a second read does not rebuild the matrix
    np.testing.assert_allclose(sparse.x, dense.x, atol=1e-5)


def _barcodes(n):
    rng = np.random.default_rng(1)
    return ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n)]


def test_csv_orientation_is_told_from_names_and_shape(tmp_path):
    """R and GEO write genes as rows: told from barcodes in the header or gene ids as row names
    and read transposed; a table that cannot be told is refused unless ``transpose`` is given."""
    import pandas as pd

    X = synthetic_counts(30, 20, seed=2)[0]
    cells, symbols = _barcodes(30), ["MT-CO1", "MT-ND1", "RPL13", "RPS3"] + [f"G{i}" for i in range(16)]
    ensembl = [f"ENSG{i:011d}" for i in range(20)]

    def csv(name, frame):
        frame.to_csv(tmp_path / name)
        return str(tmp_path / name)

    plain_ids = [f"s{i}" for i in range(30)]
    for genes, header in ((symbols, plain_ids), (ensembl, plain_ids), ([f"g{i}" for i in range(20)], cells)):
        d = read_counts(csv("t.csv", pd.DataFrame(X.T, index=genes, columns=header)))  # each sign alone
        np.testing.assert_array_equal(d.X, X)
        assert list(d.gene_names) == genes and list(d.cell_names) == header
    plain = read_counts(csv("c.csv", pd.DataFrame(X, index=cells, columns=symbols)))  # cells as rows
    np.testing.assert_array_equal(plain.X, X)
    labels = tmp_path / "l.csv"
    pd.DataFrame({"cell": cells[::-1], "type": [f"t{i % 3}" for i in range(30)][::-1]}).to_csv(labels, index=False)
    d = read_counts(csv("t.csv", pd.DataFrame(X.T, index=symbols, columns=cells)), labels_csv=str(labels))
    assert [d.label_names[c] for c in d.labels] == [f"t{i % 3}" for i in range(30)]

    # 200 rows x 10 columns named by nothing telling: refused, then read as told
    tall = synthetic_counts(10, 200, seed=3)[0].T
    path = csv("tall.csv", pd.DataFrame(tall, index=[f"r{i}" for i in range(200)],
                                        columns=[f"s{i}" for i in range(10)]))
    with pytest.raises(InputError, match=r"may hold genes as rows and cells as columns \(it has 200 rows and 10 "
                                         r".*give transpose=True if its rows are genes or transpose=False"):
        read_counts(path)
    assert read_counts(path, transpose=True).X.shape == (10, 200)
    assert read_counts(path, transpose=False).X.shape == (200, 10)
    # barcodes on both sides contradict each other
    with pytest.raises(InputError, match="its header holds cell barcodes, yet its row names are cell barcodes"):
        read_counts(csv("both.csv", pd.DataFrame(X[:, :20], index=cells, columns=_barcodes(50)[30:])))
    h5 = write_h5(tmp_path / "a.h5", X=X)
    with pytest.raises(InputError, match="transpose=True applies to CSV data files only"):
        read_counts(h5, transpose=True)


def tenx_inputs(tmp_path):
    """A tiny 10x Genomics data set (30 cells, 19 genes and an antibody feature, one gene symbol
    twice) as Cell Ranger writes it: a v3 HDF5 file, a gzipped v3 folder and a plain v2 folder."""
    import gzip

    import pandas as pd
    import scipy.io

    X = synthetic_counts(30, 20, seed=4)[0]
    cells = _barcodes(30)
    ids = [f"ENSG{i:011d}" for i in range(19)] + ["CD3_TotalSeqB"]
    names = ["ACTB", "ACTB"] + [f"G{i}" for i in range(2, 19)] + ["CD3"]
    types = ["Gene Expression"] * 19 + ["Antibody Capture"]
    csr = sp.csr_matrix(X.astype(np.int32))
    h5 = str(tmp_path / "filtered_feature_bc_matrix.h5")
    with h5py.File(h5, "w") as f:
        m = f.create_group("matrix")
        for key in ("data", "indices", "indptr"):
            m.create_dataset(key, data=getattr(csr, key))
        m.create_dataset("shape", data=np.array([20, 30], np.int32))  # genes x cells
        m.create_dataset("barcodes", data=np.array(cells, "S"))
        feats = m.create_group("features")
        for key, values in (("id", ids), ("name", names), ("feature_type", types), ("genome", ["GRCh38"] * 20)):
            feats.create_dataset(key, data=np.array(values, "S"))
    v3, v2 = tmp_path / "v3", tmp_path / "v2"
    v3.mkdir(), v2.mkdir()
    scipy.io.mmwrite(str(v2 / "matrix.mtx"), sp.coo_matrix(X[:, :19].T))
    (v2 / "genes.tsv").write_text("".join(f"{i}\t{n}\n" for i, n in zip(ids[:19], names)))
    (v2 / "barcodes.tsv").write_text("\n".join(cells) + "\n")
    scipy.io.mmwrite(str(tmp_path / "m.mtx"), sp.coo_matrix(X.T))
    for name, text in (("matrix.mtx.gz", (tmp_path / "m.mtx").read_text()),
                       ("features.tsv.gz", "".join(f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, types))),
                       ("barcodes.tsv.gz", "\n".join(cells) + "\n")):
        with gzip.open(v3 / name, "wt") as fh:
            fh.write(text)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"barcode": cells[::-1], "type": [f"t{i % 2}" for i in range(30)][::-1]}).to_csv(labels, index=False)
    return X, cells, {"h5": h5, "v3": str(v3), "v2": str(v2), "labels": str(labels)}


def test_10x_genomics_h5_and_matrix_folders(tmp_path):
    X, cells, f = tenx_inputs(tmp_path)
    expected_genes = ["ACTB", "ACTB-1"] + [f"G{i}" for i in range(2, 19)]
    for path in (f["h5"], f["v3"], f["v2"], os.path.join(f["v3"], "matrix.mtx.gz")):
        d = read_counts(path, labels_csv=f["labels"])
        assert sp.issparse(d.X) and d.X.shape == (30, 19), path  # the antibody feature is left out
        np.testing.assert_array_equal(d.X.toarray(), X[:, :19])
        assert list(d.gene_names) == expected_genes and list(d.cell_names) == cells
        assert [d.label_names[c] for c in d.labels] == [f"t{i % 2}" for i in range(30)]
    with pytest.raises(InputError, match="holds no cell annotations for label_key"):
        read_counts(f["h5"], label_key="cell_type")
    with pytest.raises(InputError, match="layer applies to .h5ad files and .zarr stores only"):
        read_counts(f["v3"], layer="counts")
    os.remove(os.path.join(f["v2"], "barcodes.tsv"))
    with pytest.raises(InputError, match=r"matrix folder .*v2 has no barcodes.tsv; it needs matrix.mtx, "
                                         r"features.tsv \(or genes.tsv\) and barcodes.tsv, each plain or gzipped."):
        read_counts(f["v2"])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_store_and_loom_refusal(tmp_path, zarr_format):
    import anndata
    import pandas as pd

    X, groups, _ = synthetic_counts(30, 20, seed=5)
    ad = anndata.AnnData(np.log1p(X).astype(np.float32), obs=pd.DataFrame({"ct": groups.astype(str)},
                                                                            index=[f"c{i}" for i in range(30)]))
    ad.layers["counts"] = sp.csr_matrix(X.astype(np.float32))
    with anndata.settings.override(zarr_write_format=zarr_format):
        ad.write_zarr(tmp_path / "cells.zarr")
    assert (tmp_path / "cells.zarr" / (".zgroup" if zarr_format == 2 else "zarr.json")).exists()
    d = read_counts(str(tmp_path / "cells.zarr"), layer="counts", label_key="ct")
    np.testing.assert_array_equal(d.X.toarray(), X)
    np.testing.assert_array_equal(d.labels, groups)
    loom = write_h5(tmp_path / "cells.loom", matrix=X.T)
    with h5py.File(loom, "a") as f:
        f.create_group("row_attrs").create_dataset("Gene", data=np.array([f"g{i}" for i in range(20)], "S"))
        f.create_group("col_attrs").create_dataset("CellID", data=np.array([f"c{i}" for i in range(30)], "S"))
    with pytest.raises(InputError, match=r"is a .loom file, which scdc_jax does not read; convert it once to .h5ad "
                                         r"\(pip install loompy, then python -c .*sc.read_loom\(.*cells.loom'\)"
                                         r".write_h5ad\('cells.h5ad'\)\"\) and give the .h5ad."):
        read_counts(loom)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is a folder that is neither a 10x Genomics matrix folder"):
        read_counts(str(tmp_path / "empty"))
