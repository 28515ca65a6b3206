"""Example data that needs no download."""
from __future__ import annotations

from .io import pbmc68k_counts as _pbmc68k_count_data
from .io import to_anndata


def pbmc68k_counts():
    """scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs x 765 genes) as raw counts.

    The default dataset of ``python -m scdc_jax.cluster``: the integer counts are recovered from
    the log-normalised ``.raw`` as ``round(expm1(raw.X) * n_counts / 1e4)``.

    Returns
    -------
    AnnData with the counts (float32) in ``.X`` and the 10 FACS-sorted populations as the
    categorical ``.obs["bulk_labels"]``.
    """
    return to_anndata(_pbmc68k_count_data(), label_key="bulk_labels")
