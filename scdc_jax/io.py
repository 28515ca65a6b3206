"""Readers for count matrices and their labels, with validation that speaks to the user.

Supported inputs
----------------
* scDeepCluster HDF5: root datasets ``X`` (cells x genes, int or float counts), optional ``Y``
  (labels: float from 1 or int from 0), ``cell_types`` (names for int labels), ``B`` (one-hot
  batches), ``gene_names``, ``cell_names``; any other 1-D dataset can serve as labels or batches.
  ``X`` may also be a CSR group with ``data``, ``indices``, ``indptr`` and ``shape``.
* ``.h5ad`` (AnnData): counts from ``.X``, a layer, or ``.raw`` (``layer="raw"``); labels and
  batches from ``.obs`` columns.
* ``.zarr`` AnnData stores, read as ``.h5ad``.
* CSV: a header row and a first column of names, cells x genes or genes x cells (told from the
  names and the shape, or given by ``transpose``); labels from a second CSV.
* 10x Genomics (Cell Ranger): ``filtered_feature_bc_matrix.h5`` (v3, or v2 with one genome) and
  matrix folders (``matrix.mtx``, ``features.tsv`` or ``genes.tsv``, ``barcodes.tsv``, each plain
  or gzipped); gene expression features only, named by gene symbol; labels from a second CSV.
* ``.loom`` is refused with the one-line conversion to ``.h5ad``.

Every reader returns a :class:`CountData`; problems a user can cause raise
:class:`~scdc_jax.errors.InputError` with one sentence saying what is wrong and what to do.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from .errors import InputError, option

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class CountData:
    """A cells x genes count matrix with optional annotations.

    Attributes
    ----------
    X : (n_cells, n_genes) ndarray or scipy CSR matrix of counts.
    labels : (n_cells,) int array of codes into ``label_names``, or None.
    label_names : list of str (one per code), or None.
    batch : (n_cells, n_batches) float32 one-hot matrix, or None.
    batch_names : list of str, or None.
    gene_names, cell_names : arrays of str, or None.
    source : where the data came from (a path or a description).
    """

    X: np.ndarray | sp.csr_matrix
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    batch: np.ndarray | None = None
    batch_names: list[str] | None = None
    gene_names: np.ndarray | None = None
    cell_names: np.ndarray | None = None
    source: str = ""

    @property
    def n_cells(self) -> int:
        return self.X.shape[0]

    @property
    def n_genes(self) -> int:
        return self.X.shape[1]

    def subset(self, cells: np.ndarray | None = None, genes: np.ndarray | None = None) -> "CountData":
        """Rows ``cells`` and columns ``genes`` (index arrays or boolean masks), labels kept aligned."""
        X, out = self.X, {}
        if cells is not None:
            X = X[cells]
            for name in ("labels", "batch", "cell_names"):
                v = getattr(self, name)
                out[name] = None if v is None else v[cells]
        if genes is not None:
            X = X[:, genes]
            out["gene_names"] = None if self.gene_names is None else self.gene_names[genes]
        return replace(self, X=X, **out)


def _decode(arr) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind in ("S", "O"):
        return np.array([a.decode() if isinstance(a, bytes) else str(a) for a in arr.ravel()])
    return arr


def encode_labels(values, names=None, what: str = "labels") -> tuple[np.ndarray, list[str]]:
    """Integer codes 0..K-1 and their names for any 1-D label array.

    Numeric labels keep their numeric order; ``names`` (e.g. ``cell_types``) maps integer label
    values from 0 to names.
    """
    values = _decode(values)
    if values.ndim != 1:
        raise InputError(f"the {what} must be a 1-D array, got shape {values.shape}.")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise InputError(f"the {what} contain NaN or infinite values; remove those cells or fix the {what}.")
        if np.all(values == np.round(values)):
            values = values.astype(np.int64)
    uniq, codes = np.unique(values, return_inverse=True)
    if names is not None and values.dtype.kind in "iu":
        names = _decode(names)
        if uniq.min() >= 0 and uniq.max() < len(names):
            return codes.astype(np.int64), [str(names[u]) for u in uniq]
    return codes.astype(np.int64), [str(u) for u in uniq]


def one_hot_from_labels(values, what: str = "batch") -> tuple[np.ndarray, list[str]]:
    codes, names = encode_labels(values, what=what)
    return np.eye(len(names), dtype=np.float32)[codes], names


def check_one_hot(B: np.ndarray) -> np.ndarray:
    B = np.asarray(B, dtype=np.float32)
    if B.ndim == 1:
        raise InputError("the batch matrix B must be one-hot (cells x batches); got a 1-D array — "
                         f"give batch labels with {option('batch_key')} instead.")
    if B.ndim != 2 or not np.all((B == 0) | (B == 1)) or not np.all(B.sum(1) == 1):
        raise InputError("the batch matrix B is not one-hot: every row must hold a single 1 and 0 elsewhere.")
    return B


def check_counts(X, *, require_integer: bool = True, what: str = "X") -> None:
    """Validate a count matrix: 2-D, finite, non-negative, integer-valued, not all zero."""
    if X.ndim != 2:
        raise InputError(f"{what} must be a 2-D cells x genes matrix, got {X.ndim} dimension(s) with shape {X.shape}.")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(f"{what} is empty (shape {X.shape}).")
    vals = X.data if sp.issparse(X) else np.asarray(X)
    if vals.dtype.kind not in "biuf":
        raise InputError(f"{what} must hold numbers, got dtype {vals.dtype}.")
    if vals.dtype.kind == "f" and not np.all(np.isfinite(vals)):
        raise InputError(f"{what} contains NaN or infinite values; counts must be finite.")
    if vals.size and vals.min() < 0:
        raise InputError(f"{what} contains negative values; raw counts must be non-negative.")
    if require_integer and vals.dtype.kind == "f" and not np.all(vals == np.round(vals)):
        raise InputError(f"{what} contains non-integer values but raw counts are required; "
                         f"pass raw (unnormalised) counts, e.g. {option('layer', 'counts')} or "
                         f"{option('layer', 'raw')} for an .h5ad.")
    if not vals.size or not np.any(vals):
        raise InputError(f"{what} is all zeros; there are no counts to learn from.")


def log_transformed_note(X) -> str | None:
    """A sentence when ``X`` looks log-transformed already (non-integer values, none above 20,
    which is log1p of some 5e8 counts), for GsRCL, which takes log(x + 1) of its input itself."""
    vals = X.data if sp.issparse(X) else np.asarray(X)
    if not vals.size or vals.dtype.kind != "f":
        return None
    top = float(vals.max())
    if top > 20 or np.all(vals == np.round(vals)):
        return None
    return (f"the values look log-transformed already (not integers, the largest {top:.3g}); GsRCL takes "
            f"log(x + 1) of its input itself, so give counts (e.g. {option('layer', 'counts')}, or "
            f"{option('layer', 'raw')} for .raw.X) unless these values are meant.")


def align_genes(X, query_genes, target_genes, *, what: str, fill_missing: bool, flag: str = "") -> tuple:
    """The query's columns ``X`` (n, q), named ``query_genes``, put in the order of
    ``target_genes`` (t,): extra genes dropped and, with ``fill_missing``, missing genes given
    zero counts.  CSR stays CSR (nothing densified), a dense array stays dense.  Returns
    ``(X aligned (n, t), number of target genes missing from the query)``.

    Names repeated in the target (a model trained on an AnnData whose ``var_names`` were not
    unique) match only a query with the very same names in the same order (the training file
    itself, say), which is taken as it is; names repeated in the query matter only among the
    target's genes.  Refused in one sentence (``what`` names the target's owner: "model",
    "reference"): a repeated name that makes the match ambiguous; a missing gene without
    ``fill_missing`` (the sentence names ``flag``, the option that fills them, if given); and,
    with ``fill_missing``, half or fewer of the target genes present (counting the query's genes
    instead would refuse a whole-transcriptome query against a target of a few thousand genes,
    and pass a query of a handful).
    """
    query_genes = np.asarray(query_genes).astype(str)
    target_genes = np.asarray(target_genes).astype(str)
    if np.array_equal(query_genes, target_genes):
        return X, 0
    uniq, counts = np.unique(target_genes, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"the {what}'s genes have duplicate names ({', '.join(uniq[counts > 1][:5])}), so it matches "
                         f"only a query with the same names in the same order, which this query does not have; make "
                         f"the names unique (e.g. adata.var_names_make_unique()) and train the {what} again.")
    uniq, counts = np.unique(query_genes, return_counts=True)
    repeated = uniq[(counts > 1) & np.isin(uniq, target_genes)]
    if repeated.size:
        raise InputError(f"the query has duplicate gene names ({', '.join(repeated[:5])}) among the {what}'s genes; "
                         "make them unique first.")
    pos = {g: i for i, g in enumerate(query_genes)}
    t_idx = np.array([j for j, g in enumerate(target_genes) if g in pos], np.int64)
    missing = len(target_genes) - len(t_idx)
    if missing and not fill_missing:
        first = next(g for g in target_genes if g not in pos)
        fill = f"; give {flag} to count them as zero" if flag else ""
        raise InputError(f"the query lacks {missing} of the {what}'s {len(target_genes)} genes (e.g. '{first}'), and "
                         f"the {what} needs all of its genes{fill}.")
    if len(t_idx) * 2 <= len(target_genes):
        raise InputError(f"only {len(t_idx)} of the {what}'s {len(target_genes)} genes are in the query (the others "
                         "would be set to zero); more than half must be (the same gene naming, e.g. symbols vs "
                         "Ensembl ids?).")
    q_idx = np.array([pos[target_genes[j]] for j in t_idx], np.int64)
    if not missing:
        return X[:, q_idx], 0
    if sp.issparse(X):  # the kept columns moved to their places by a 0/1 matrix: sparse, exact for counts
        move = sp.csr_matrix((np.ones(len(t_idx), X.dtype), (np.arange(len(t_idx)), t_idx)),
                             shape=(len(t_idx), len(target_genes)))
        return sp.csr_matrix(sp.csr_matrix(X)[:, q_idx] @ move), missing
    X = np.asarray(X)
    out = np.zeros((X.shape[0], len(target_genes)), X.dtype)
    out[:, t_idx] = X[:, q_idx]
    return out, missing


def _check_length(n: int, arr, what: str) -> None:
    if arr is not None and len(arr) != n:
        raise InputError(f"the {what} have {len(arr)} entries but X has {n} cells; they must match.")


def _read_h5_matrix(node, path: str):
    import h5py

    if isinstance(node, h5py.Dataset):
        return node[()]
    keys = set(node.keys())
    if {"data", "indices", "indptr"} <= keys:
        shape = node.attrs.get("shape", node["shape"][()] if "shape" in keys else None)
        if shape is None:
            raise InputError(f"the sparse X group in {path} has no 'shape'.")
        enc = node.attrs.get("encoding-type", "csr_matrix")
        enc = enc.decode() if isinstance(enc, bytes) else enc
        cls = sp.csc_matrix if enc == "csc_matrix" else sp.csr_matrix
        return cls((node["data"][()], node["indices"][()], node["indptr"][()]), shape=tuple(shape)).tocsr()
    raise InputError(f"X in {path} is a group without data/indices/indptr; store X as a dense dataset or a CSR group.")


def read_scdeepcluster_h5(path: str, *, label_key: str | None = None, batch_key: str | None = None) -> CountData:
    """Read the scDeepCluster HDF5 layout (see module docstring)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path} could not be read as HDF5 ({exc}); the file may be truncated or corrupt.") from None
    with f:
        if "X" not in f:
            raise InputError(f"{path} has no dataset 'X' (found: {', '.join(sorted(f.keys())) or 'nothing'}); "
                             "the counts must be stored as X (cells x genes).")
        try:
            X = _read_h5_matrix(f["X"], path)
        except OSError as exc:
            raise InputError(f"X in {path} could not be read ({exc}); the file may be truncated.") from None
        n = X.shape[0] if getattr(X, "ndim", 0) >= 1 else 0
        names = f["cell_types"][()] if "cell_types" in f else None
        labels = label_names = None
        lk = label_key or ("Y" if "Y" in f else None)
        if lk is not None:
            if lk not in f:
                raise InputError(f"{path} has no dataset '{lk}' to use as labels (found: {', '.join(sorted(f.keys()))}).")
            y = f[lk][()]
            _check_length(n, y, f"labels '{lk}'")
            labels, label_names = encode_labels(y, names, what=f"labels '{lk}'")
        batch = batch_names = None
        if batch_key is not None:
            if batch_key not in f:
                raise InputError(f"{path} has no dataset '{batch_key}' to use as batches (found: {', '.join(sorted(f.keys()))}).")
            b = f[batch_key][()]
            _check_length(n, b, f"batch '{batch_key}'")
            if np.ndim(b) == 2:
                batch = check_one_hot(b)
                batch_names = [str(i) for i in range(batch.shape[1])]
            else:
                batch, batch_names = one_hot_from_labels(b, what=f"batch '{batch_key}'")
        elif "B" in f:
            b = f["B"][()]
            _check_length(n, b, "batch matrix B rows")
            batch = check_one_hot(b)
            batch_names = [str(i) for i in range(batch.shape[1])]
        genes = _decode(f["gene_names"][()]) if "gene_names" in f else None
        cells = _decode(f["cell_names"][()]) if "cell_names" in f else None
    if genes is not None and getattr(X, "ndim", 0) == 2 and len(genes) != X.shape[1]:
        raise InputError(f"{path} has {len(genes)} gene_names but X has {X.shape[1]} genes.")
    return CountData(X=X, labels=labels, label_names=label_names, batch=batch, batch_names=batch_names,
                     gene_names=genes, cell_names=cells, source=path)


def from_anndata(adata, *, layer: str | None = None, label_key: str | None = None,
                 batch_key: str | None = None, source: str = "AnnData") -> CountData:
    """Counts (``.X``, ``.layers[layer]`` or ``.raw`` with ``layer='raw'``) and obs columns of an AnnData."""
    if layer is None:
        X = adata.X
    elif layer == "raw":
        if adata.raw is None:
            raise InputError(f"{source} has no .raw; choose another {option('layer')} or none.")
        if adata.raw.n_vars != adata.n_vars:
            raise InputError(f"{source}: .raw has {adata.raw.n_vars} genes but .X has {adata.n_vars}; "
                             "store the counts in a layer with the same genes.")
        X = adata.raw.X
    else:
        if layer not in adata.layers:
            raise InputError(f"{source} has no layer '{layer}' (layers: {', '.join(adata.layers.keys()) or 'none'}).")
        X = adata.layers[layer]
    if X is None:
        raise InputError(f"{source} has no matrix in .X; give {option('layer')}.")
    X = X.tocsr() if sp.issparse(X) else np.asarray(X)
    return CountData(X=X, **obs_annotations(adata.obs, label_key, batch_key, source),
                     gene_names=np.asarray(adata.var_names.astype(str)),
                     cell_names=np.asarray(adata.obs_names.astype(str)), source=source)


def obs_annotations(obs, label_key: str | None, batch_key: str | None, source: str) -> dict:
    """``labels``, ``label_names``, ``batch`` (one-hot) and ``batch_names`` from the columns
    ``label_key`` and ``batch_key`` of an AnnData's ``.obs`` table (None where not asked for)."""
    out = dict(labels=None, label_names=None, batch=None, batch_names=None)
    for key, what in ((label_key, "label"), (batch_key, "batch")):
        if key is not None and key not in obs:
            raise InputError(f"{source} has no .obs column '{key}' for the {what}s "
                             f"(columns: {', '.join(map(str, obs.columns)) or 'none'}).")
    if label_key is not None:
        what = f"labels '{label_key}'"
        out["labels"], out["label_names"] = encode_labels(_names(obs[label_key], what), what=what)
    if batch_key is not None:
        what = f"batch '{batch_key}'"
        out["batch"], out["batch_names"] = one_hot_from_labels(_names(obs[batch_key], what), what=what)
    return out


def _names(values, what: str) -> np.ndarray:
    """A label or batch column's values as strings; missing ones (NaN, None, pandas' NA) are
    refused, as str() would make them one more category, 'nan'."""
    import pandas as pd

    missing = np.asarray(pd.isna(values), bool)
    if missing.any():
        raise InputError(f"{int(missing.sum())} of {len(missing)} cells have no value for the {what} (NaN or "
                         "empty); give every cell one, or leave those cells out first.")
    return np.asarray(values.astype(str))


def check_anndata_fields(adata, *, layer: str | None = None, **obs_keys: str | None) -> None:
    """Refuse, in one sentence naming the keyword argument, an object that is no AnnData, a
    ``layer`` it lacks (``"raw"``: its ``.raw``) or an ``.obs`` column it lacks; ``obs_keys`` maps
    each keyword argument to the column it names (``labels_key="cell_type"``)."""
    import anndata

    if not isinstance(adata, anndata.AnnData):
        raise InputError(f"adata must be an AnnData, got {type(adata).__name__}.")
    if layer == "raw" and adata.raw is None:
        raise InputError(f"{option('layer', layer)} asks for .raw, which this AnnData lacks "
                         f"(its layers: {', '.join(adata.layers.keys()) or 'none'}).")
    if layer is not None and layer != "raw" and layer not in adata.layers:
        raise InputError(f"{option('layer', layer)} names no layer of this AnnData "
                         f"(its layers: {', '.join(adata.layers.keys()) or 'none'}).")
    for kw, key in obs_keys.items():
        if key is not None and key not in adata.obs:
            raise InputError(f"{option(kw, key)} names no .obs column of this AnnData "
                             f"(its columns: {', '.join(map(str, adata.obs.columns)) or 'none'}).")


def to_anndata(data: CountData, label_key: str = "label"):
    """``data`` as an AnnData: the counts (float32) in ``.X``, the labels' names as the categorical
    ``.obs[label_key]``, cell and gene names (``cell0``, ``gene0``, ... where absent) made unique."""
    import anndata
    import pandas as pd

    adata = anndata.AnnData(X=data.X.astype(np.float32),
                            obs=pd.DataFrame(index=data.cell_names if data.cell_names is not None
                                             else [f"cell{i}" for i in range(data.n_cells)]),
                            var=pd.DataFrame(index=data.gene_names if data.gene_names is not None
                                             else [f"gene{i}" for i in range(data.n_genes)]))
    adata.obs_names_make_unique()
    adata.var_names_make_unique()
    if data.labels is not None:
        adata.obs[label_key] = pd.Categorical(np.asarray(data.label_names)[data.labels])
    return adata


def read_anndata(path: str, fmt: str = "h5ad"):
    """The whole AnnData of the .h5ad file (``fmt`` ``"h5ad"``) or .zarr store (``"zarr"``) ``path``,
    as anndata reads it; one sentence (InputError) when it cannot be read."""
    import anndata

    reader, what = {"h5ad": (anndata.read_h5ad, ".h5ad"), "zarr": (anndata.read_zarr, "a .zarr AnnData store")}[fmt]
    try:
        with warnings.catch_warnings():  # duplicate names are refused, with one sentence, where they matter
            warnings.filterwarnings("ignore", message=".*names are not unique")
            return reader(path)
    except Exception as exc:  # anndata and zarr raise many types for malformed files
        raise InputError(f"{path} could not be read as {what} ({_first_line(exc)}).") from None


def output_anndata(data_file: str | None, data: CountData):
    """The AnnData a command writes its results into: an .h5ad or .zarr input whole, as it was
    (its .X, layers, obs, var, obsm, uns), any other input :func:`to_anndata` of ``data``."""
    fmt = sniff_format(data_file) if data_file else None
    return read_anndata(data_file, fmt) if fmt in ("h5ad", "zarr") else to_anndata(data)


def read_h5ad(path: str, **kw) -> CountData:
    return from_anndata(read_anndata(path, "h5ad"), source=path, **kw)


# Names that tell the rows of a table from its columns: cell barcodes (a run of 10 or more
# nucleotides, e.g. 10x's AAACCTGAGAAGGCCT-1, also with a sample prefix), Ensembl gene ids, and
# the mitochondrial and ribosomal-protein genes every transcriptome holds.
_BARCODE = re.compile(r"(?:^|[^A-Za-z])[ACGTN]{10,}(?:[^A-Za-z]|$)")
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(?:\.\d+)?$")
_GENE_FAMILY = re.compile(r"^(?:MT|mt|Mt)-|^R[Pp][LlSs]\d+[A-Za-z]?$")


def _names_look_like(names) -> str | None:
    """'barcodes', 'genes' or None (cannot tell) for the row or column names of a table."""
    names = [str(n) for n in names]
    if names and sum(bool(_BARCODE.search(n)) for n in names) >= 0.5 * len(names):
        return "barcodes"
    if names and (sum(bool(_ENSEMBL.match(n)) for n in names) >= 0.5 * len(names)
                  or sum(bool(_GENE_FAMILY.match(n)) for n in names) >= 3):
        return "genes"
    return None


def genes_as_rows(row_names, col_names, shape: tuple[int, int]) -> tuple[bool | None, str]:
    """Whether a table holds genes as rows and cells as columns (the usual R/GEO layout): True,
    False, or None when it cannot be told; and the reason, for messages."""
    rows, cols = _names_look_like(row_names), _names_look_like(col_names)
    genes_first = [r for r in (cols == "barcodes" and "its header holds cell barcodes",
                               rows == "genes" and "its row names are genes") if r]
    cells_first = [r for r in (rows == "barcodes" and "its row names are cell barcodes",
                               cols == "genes" and "its header holds genes") if r]
    if genes_first and cells_first:
        return None, f"{genes_first[0]}, yet {cells_first[0]}"
    if genes_first or cells_first:
        return bool(genes_first), " and ".join(genes_first or cells_first)
    if shape[0] >= 10 * shape[1]:  # far more rows than columns: genes x cells is the likelier
        return None, (f"it has {shape[0]} rows and {shape[1]} columns, and neither the row names nor the header "
                      "tell cells from genes")
    return False, "cells as rows is the default"


def attach_csv_labels(data: CountData, labels_csv: str) -> CountData:
    """``data`` with labels from a CSV: one row per cell, either two columns (cell id, label) or
    one column; a header row is allowed.  With cell ids, labels are matched to the cells by id."""
    import pandas as pd

    try:
        lab = pd.read_csv(labels_csv)
    except Exception as exc:
        raise InputError(f"{labels_csv} could not be read as CSV ({type(exc).__name__}).") from None
    ids = set(lab.iloc[:, 0].astype(str))
    row_numbers = ({str(i) for i in range(len(lab))},  # pandas' to_csv counts from 0,
                   {str(i) for i in range(1, len(lab) + 1)})  # R's write.csv from 1
    cells = [] if data.cell_names is None else [str(c) for c in data.cell_names]
    if lab.shape[1] >= 2 and cells and set(cells) <= ids:
        lab = lab.set_index(lab.columns[0]).iloc[:, 0]
        lab.index = lab.index.astype(str)
        values = lab.loc[cells].to_numpy()
    elif lab.shape[1] >= 2 and cells and ids not in row_numbers:  # a first column of row numbers is no ids
        missing = [c for c in cells if c not in ids]
        raise InputError(f"the ids in the first column of {labels_csv} do not match the cell ids of {data.source} "
                         f"({len(missing)} of its {data.n_cells} cells are missing, e.g. '{missing[0]}'); give a "
                         "(cell id, label) row per cell, or one label a line in the cells' order.")
    else:
        values = lab.iloc[:, -1].to_numpy()
    _check_length(data.n_cells, values, f"labels in {labels_csv}")
    data.labels, data.label_names = encode_labels(_names(values, f"labels in {labels_csv}"), what="labels")
    return data


def read_csv_counts(path: str, *, labels_csv: str | None = None, transpose: bool | None = None) -> CountData:
    """A CSV of counts with a header row and a first column of names; optional labels CSV.

    The rows are cells and the columns genes, or with ``transpose`` genes and cells (R's and
    GEO's layout).  Left as None, the orientation is told from the names and the shape
    (:func:`genes_as_rows`), and a table that cannot be told is refused.  Labels: see
    :func:`attach_csv_labels`.
    """
    import pandas as pd

    try:
        df = pd.read_csv(path, index_col=0)
    except Exception as exc:
        raise InputError(f"{path} could not be read as CSV ({type(exc).__name__}).") from None
    try:
        X = df.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"{path} has non-numeric entries; expected counts with a header row and a first "
                         f"column of names (cell ids, or genes with {option('transpose', True)}).") from None
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0]
    col_names = header.to_numpy(str)[-X.shape[1]:]  # as written: pandas renames duplicates
    row_names = np.asarray(df.index.astype(str))
    if transpose is None:
        transpose, reason = genes_as_rows(row_names, col_names, X.shape)
        if transpose is None:
            raise InputError(f"{path} may hold genes as rows and cells as columns ({reason}); give "
                             f"{option('transpose', True)} if its rows are genes or {option('transpose', False)} "
                             "if they are cells.")
    if transpose:
        X, row_names, col_names = np.ascontiguousarray(X.T), col_names, row_names
    data = CountData(X=X, gene_names=col_names, cell_names=row_names, source=path)
    return attach_csv_labels(data, labels_csv) if labels_csv is not None else data


FORMATS = {"h5": "a plain HDF5 file", "h5ad": "an .h5ad file", "zarr": "a .zarr AnnData store", "csv": "a CSV file",
           "10x_h5": "a 10x Genomics HDF5 file", "10x_mtx": "a 10x Genomics matrix folder"}
_SUPPORTED = ("an .h5, .h5ad or .csv file, a .zarr AnnData store, a 10x Genomics .h5 or a 10x matrix folder "
              "(matrix.mtx, features.tsv, barcodes.tsv)")


def _mex_file(folder: str, *names: str) -> str | None:
    """The first of ``names`` (each plain or gzipped) present in ``folder``."""
    for name in names:
        for candidate in (name, name + ".gz"):
            if os.path.isfile(os.path.join(folder, candidate)):
                return os.path.join(folder, candidate)
    return None


def _sniff_folder(path: str) -> str:
    if _mex_file(path, "matrix.mtx"):
        return "10x_mtx"
    if any(os.path.exists(os.path.join(path, m)) for m in (".zgroup", "zarr.json")):
        if not all(os.path.isdir(os.path.join(path, k)) for k in ("obs", "var")):
            raise InputError(f"{path} is a zarr store but not an AnnData one (it has no obs and var); give {_SUPPORTED}.")
        return "zarr"
    raise InputError(f"{path} is a folder that is neither a 10x Genomics matrix folder (matrix.mtx, features.tsv, "
                     "barcodes.tsv) nor a .zarr AnnData store; give the path of one, or of an .h5, .h5ad or .csv "
                     "file.")


def _sniff_hdf5(path: str) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "obs" in f and "var" in f:
                return "h5ad"
            if "row_attrs" in f and "col_attrs" in f:
                stem = os.path.splitext(os.path.basename(path))[0]
                raise InputError(f"{path} is a .loom file, which scdc_jax does not read; convert it once to .h5ad "
                                 f"(pip install loompy, then python -c \"import scanpy as sc; "
                                 f"sc.read_loom('{path}').write_h5ad('{stem}.h5ad')\") and give the .h5ad.")
            # Cell Ranger: a group 'matrix' (v3) or one per genome (v2) holding a CSC matrix and its barcodes
            if any(isinstance(g, h5py.Group) and {"barcodes", "data", "indices", "indptr", "shape"} <= set(g.keys())
                   for g in f.values()):
                return "10x_h5"
            return "h5"
    except OSError as exc:
        raise InputError(f"{path} could not be read as HDF5 ({exc}); the file may be truncated or corrupt.") from None


def sniff_format(path: str) -> str:
    """One of :data:`FORMATS` from the content (and name) of ``path``; InputError for anything else."""
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist; give the path of {_SUPPORTED}.")
    if os.path.isdir(path):
        return _sniff_folder(path)
    if os.path.basename(path) in ("matrix.mtx", "matrix.mtx.gz"):
        return "10x_mtx"  # the matrix of a Cell Ranger folder: read with the files beside it
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(HDF5_MAGIC):
        return _sniff_hdf5(path)
    low = path.lower()
    if low.endswith((".h5", ".h5ad", ".hdf5", ".loom")):
        raise InputError(f"{path} is not an HDF5 file (its header is wrong); it may be corrupt or of another format.")
    if head.startswith(b"%%MatrixMarket"):
        raise InputError(f"{path} is a Matrix Market file; give the 10x Genomics folder that holds it as matrix.mtx "
                         "beside features.tsv (or genes.tsv) and barcodes.tsv.")
    if low.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is neither HDF5, .h5ad nor CSV; give {_SUPPORTED}.") from None
    if b"," in head:
        return "csv"
    raise InputError(f"{path} is neither HDF5, .h5ad nor CSV; give {_SUPPORTED}.")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def read_10x_h5(path: str) -> CountData:
    """Cell Ranger's ``filtered_feature_bc_matrix.h5`` (v3, or v2 with one genome), gene expression
    features only, named by gene symbol (made unique as scanpy does: ``-1``, ``-2`` appended)."""
    import scanpy as sc

    try:
        with warnings.catch_warnings():  # repeated symbols, made unique below
            warnings.filterwarnings("ignore", message=".*names are not unique")
            adata = sc.read_10x_h5(path)
    except Exception as exc:  # scanpy raises bare Exceptions, KeyErrors and ValueErrors for malformed files
        raise InputError(f"{path} could not be read as a 10x Genomics HDF5 file ({_first_line(exc)}).") from None
    adata.var_names_make_unique()
    return from_anndata(adata, source=path)


def read_10x_mtx(path: str) -> CountData:
    """A Cell Ranger matrix folder (or its ``matrix.mtx``): ``matrix.mtx``, ``features.tsv`` (v3)
    or ``genes.tsv`` (v2) and ``barcodes.tsv``, each plain or gzipped.

    Gene expression features only (v3 files also list antibody or CRISPR features), named by gene
    symbol, made unique as scanpy's ``read_10x_mtx`` does.
    """
    import anndata
    import pandas as pd
    import scipy.io

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    files = {"matrix.mtx": _mex_file(folder, "matrix.mtx"),
             "features.tsv (or genes.tsv)": _mex_file(folder, "features.tsv", "genes.tsv"),
             "barcodes.tsv": _mex_file(folder, "barcodes.tsv")}
    missing = [name for name, found in files.items() if found is None]
    if missing:
        raise InputError(f"the 10x Genomics matrix folder {folder} has no {' and no '.join(missing)}; it needs "
                         "matrix.mtx, features.tsv (or genes.tsv) and barcodes.tsv, each plain or gzipped.")
    matrix, features, barcodes = files.values()
    try:
        X = sp.csr_matrix(scipy.io.mmread(matrix).T)  # Cell Ranger writes genes x cells
        table = {"header": None, "sep": "\t", "dtype": str, "keep_default_na": False}
        genes = pd.read_csv(features, **table)
        cells = pd.read_csv(barcodes, **table)[0].to_numpy(str)
    except Exception as exc:  # scipy and pandas raise many types for malformed files
        raise InputError(f"the 10x Genomics matrix folder {folder} could not be read ({_first_line(exc)}).") from None
    if X.shape != (len(cells), len(genes)):
        raise InputError(f"the matrix in {folder} holds {X.shape[1]} genes x {X.shape[0]} cells, but the folder lists "
                         f"{len(genes)} features and {len(cells)} barcodes; they must match.")
    if genes.shape[1] >= 3:
        keep = np.flatnonzero(genes[2].to_numpy() == "Gene Expression")
        X, genes = X[:, keep], genes.iloc[keep]
    names = genes[1] if genes.shape[1] >= 2 else genes[0]
    names = np.asarray(anndata.utils.make_index_unique(pd.Index(names.to_numpy(str))), dtype=str)
    return CountData(X=X, gene_names=names, cell_names=cells, source=path)


def read_zarr(path: str, **kw) -> CountData:
    return from_anndata(read_anndata(path, "zarr"), source=path, **kw)


def read_counts(path: str, *, layer: str | None = None, label_key: str | None = None,
                batch_key: str | None = None, labels_csv: str | None = None,
                transpose: bool | None = None) -> CountData:
    """Read any supported input (:data:`FORMATS`); the format is told from the content, not the name.

    ``layer`` applies to .h5ad and .zarr, ``transpose`` (True: genes as rows, False: cells as rows,
    None: told) to CSV, ``labels_csv`` to the inputs that carry no labels of their own (CSV and
    10x Genomics), ``label_key`` and ``batch_key`` to the others.
    """
    fmt = sniff_format(path)
    what = f"{path} is {FORMATS[fmt]}"
    is_anndata, is_10x = fmt in ("h5ad", "zarr"), fmt in ("10x_h5", "10x_mtx")
    if transpose is not None and fmt != "csv":
        raise InputError(f"{option('transpose', transpose)} applies to CSV data files only; {what}, whose layout "
                         "fixes the orientation.")
    if labels_csv is not None and not (fmt == "csv" or is_10x):
        raise InputError(f"{option('labels_csv')} applies to CSV and 10x Genomics data only; {what}: give its "
                         f"labels with {option('label_key')}.")
    if layer is not None and not is_anndata:
        raise InputError(f"{option('layer')} applies to .h5ad files and .zarr stores only; {what}.")
    if is_10x and (label_key or batch_key):
        key = option("label_key" if label_key else "batch_key")
        raise InputError(f"{what}, which holds no cell annotations for {key}; store the data as .h5ad with the "
                         "annotations in .obs" + (f", or give the labels with {option('labels_csv')}." if label_key
                                                  else "."))
    if fmt == "h5ad":
        data = read_h5ad(path, layer=layer, label_key=label_key, batch_key=batch_key)
    elif fmt == "zarr":
        data = read_zarr(path, layer=layer, label_key=label_key, batch_key=batch_key)
    elif fmt == "h5":
        data = read_scdeepcluster_h5(path, label_key=label_key, batch_key=batch_key)
    elif fmt == "10x_h5":
        data = read_10x_h5(path)
    elif fmt == "10x_mtx":
        data = read_10x_mtx(path)
    else:
        data = read_csv_counts(path, transpose=transpose)
    if getattr(data.X, "ndim", 0) != 2:
        raise InputError(f"X in {path} must be a 2-D cells x genes matrix, got shape {np.shape(data.X)}.")
    return attach_csv_labels(data, labels_csv) if labels_csv is not None else data


def pbmc68k_counts() -> CountData:
    """The default dataset: scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs x 765 genes).

    Its ``.raw`` holds log-normalised values (per cell to 1e4, then log1p); the integer counts are
    recovered as ``round(expm1(raw.X) * n_counts / 1e4)``.  Labels: ``obs['bulk_labels']``
    (10 FACS-sorted populations).  No download: the file ships inside scanpy.
    """
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.X
    raw = raw.toarray() if sp.issparse(raw) else np.asarray(raw)
    counts = np.rint(np.expm1(raw) * adata.obs["n_counts"].to_numpy()[:, None] / 1e4).astype(np.float32)
    labels, names = encode_labels(np.asarray(adata.obs["bulk_labels"].astype(str)))
    return CountData(X=counts, labels=labels, label_names=names,
                     gene_names=np.asarray(adata.raw.var_names.astype(str)),
                     cell_names=np.asarray(adata.obs_names.astype(str)), source="scanpy pbmc68k_reduced")
