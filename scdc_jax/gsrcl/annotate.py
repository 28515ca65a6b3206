"""Annotating new cells with a GsRCL reference (the reference's web predictor, as a library).

``train_reference`` trains ONE self-supervised (NT-Xent) encoder on the whole labelled
reference, so one encoder serves every cell type, and one calibrated SVM per type on its
representation.  ``annotate`` aligns a query to the reference genes, encodes it and calls each
cell the type of highest normalised probability, or "Unassigned" at or below a cutoff.

Reference folder layout: ``model/`` (orbax checkpoint of the network, meta = that of
``reference.json``), ``svms.npz`` (the classifiers' parameters, :mod:`~scdc_jax.gsrcl.svm_params`),
``genes.txt`` (one gene a line), ``reference.json`` (provenance: seed, configuration, versions,
devices; genes' count, cell types) and ``manifest.json`` (:mod:`scdc_jax.manifest`), plus
``.partial/`` (encoder checkpoints) while training.  A reference is shared data: it holds arrays
and JSON only, and is checked against its manifest before anything in it is read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import NamedTuple

import numpy as np

from ..errors import InputError, option
from ..io import align_genes
from ..outputs import atomic_path, write_json
from .config import GsRCLConfig
from ..preprocess import log_transform
from .train import Trainer, build_model, has_batch_norm, make_encode

UNASSIGNED = "Unassigned"
KIND = "GsRCL reference"
REMAKE = "make it again with 'python -m scdc_jax.gsrcl train-reference'"
FILES = ("model", "svms.npz", "genes.txt", "reference.json")
OLD_SVMS = "svms.joblib"  # the pickled classifiers of references written before format 1


def zero_fill_genes(X, query_genes, reference_genes) -> np.ndarray:
    """Reorder the query's columns to the reference genes: missing genes zero, extra genes dropped
    (:func:`scdc_jax.io.align_genes`, refused as there).

    X : (n, q) counts with ``query_genes`` (q,); returns dense (n, r) float32 for the r reference
    genes.
    """
    X, _ = align_genes(X, query_genes, reference_genes, what="reference", fill_missing=True)
    X = X.toarray() if hasattr(X, "toarray") else X
    return np.asarray(X, np.float32)


def call_types(probs: np.ndarray, names: list[str], cutoff: float = 0.5):
    """Normalise per-type probabilities (n, k) to sum to 1; call argmax or Unassigned at or below cutoff."""
    probs = np.asarray(probs, np.float64)
    total = probs.sum(1, keepdims=True)
    probs = np.where(total > 0, probs / np.where(total > 0, total, 1.0), 1.0 / probs.shape[1])
    top = probs.argmax(1)
    calls = np.where(probs[np.arange(len(top)), top] > cutoff, np.asarray(names, dtype=object)[top], UNASSIGNED)
    return probs, calls


class _EpochBar:
    """A progress bar over the encoder's epochs, moved at each of :meth:`Trainer.fit`'s callbacks
    (every ``eval_every`` epochs); it has nothing to checkpoint, so a checkpoint holds what it
    holds without it and a continued training starts the bar where it stopped."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="reference encoder", unit="epoch")

    def __call__(self, epoch: int, state) -> None:
        self.bar.update(epoch - self.bar.n)

    def checkpoint(self):
        return {}, {}

    def restore(self, arrays, meta) -> None:
        pass


def train_reference(data, cfg: GsRCLConfig, out_dir: str, *, log=print, resume: bool = False,
                    command: str | None = None, progress: bool = False) -> dict:
    """Train the reference encoder (NT-Xent on all cells) and one calibrated SVM per cell type.

    The encoder is checkpointed in ``out_dir/.partial`` every ``cfg.eval_every`` epochs; with
    ``resume`` an interrupted training continues from there (and ends as an uninterrupted one).
    Returns the metadata written to ``reference.json``: the provenance of the run (seed,
    configuration, versions, devices, ``command``), the genes' count and the cell types.  With
    ``progress``, a progress bar of the encoder's epochs on stderr.

    In a multi-process run every process trains (on the global mesh) and fits the SVMs on the same
    representation; all save the encoder's checkpoints, the first alone writes the other files.
    """
    from .. import checkpoint, distributed, manifest
    from ..outputs import provenance
    from .svm import calibrated_svm, svm_parameters
    from .svm_params import save_svms, svm_arrays

    if data.labels is None:
        raise InputError("a reference needs cell-type labels; give a labelled data file.")
    if data.gene_names is None:
        raise InputError("a reference needs gene names to align queries to; this data file has none.")
    cfg = dataclasses.replace(cfg, loss="simclr")
    names = list(data.label_names)
    counts = np.bincount(data.labels, minlength=len(names))
    need = max(cfg.svm_cv, 2)
    types = [c for c in range(len(names)) if min(counts[c], len(data.labels) - counts[c]) >= need]
    if not types:
        raise InputError(f"no cell type has enough cells to train a classifier ({need} or more cells of the type "
                         f"and of the others are needed; the labels hold {len(names)} type(s)); give more labelled "
                         "cells or lower svm_cv in a --config.")
    model_dir = os.path.join(out_dir, "model")
    if os.path.exists(model_dir) and not os.path.exists(os.path.join(out_dir, "reference.json")):
        raise InputError(f"{out_dir} already holds a 'model' folder that is not a GsRCL reference; "
                         "choose another output folder.")
    # The manifest will list the whole folder, and a reference with other files would be refused
    # when loaded: refuse them now, before the training.
    foreign = sorted(set(os.listdir(out_dir) if os.path.isdir(out_dir) else [])
                     - {*FILES, manifest.NAME, OLD_SVMS, ".partial"})
    if foreign:
        raise InputError(f"{out_dir} holds files that are not part of a GsRCL reference ({', '.join(foreign[:3])}); "
                         "choose an empty or new output folder.")
    primary = distributed.is_primary()
    distributed.barrier("reference folder checked")  # by every process before the first one writes there
    log = log if primary else (lambda message: None)
    for code in sorted(set(range(len(names))) - set(types)):
        log(f"skipping cell type '{names[code]}': {int(counts[code])} cells are too few for its classifier.")
    x = log_transform(data.X)
    trainer = Trainer(x.shape[1], cfg)
    partial = checkpoint.run_dir(os.path.join(out_dir, ".partial"), {"config": dataclasses.asdict(cfg),
                                 "shape": list(x.shape), "source": str(data.source)}, resume, write=primary)
    distributed.barrier("reference checkpoint folder ready")
    ckpt_dir = os.path.join(partial, "encoder")
    if (epoch := checkpoint.latest_step(ckpt_dir)) is not None:
        log(f"continuing the reference encoder's training from its checkpoint at epoch {epoch}")
    bar = _EpochBar(cfg.n_epochs) if progress and primary else None
    params, losses = trainer.fit(x, None, cfg.seed, callback=bar, ckpt_dir=ckpt_dir)
    if bar is not None:
        bar.bar.close()
    log(f"fitting {len(types)} calibrated SVMs (one per cell type) on the representation of {len(x)} cells")
    h = trainer.encode(params, x)
    svms = svm_arrays(h, [svm_parameters(calibrated_svm(h, (data.labels == c).astype(np.int64), cfg, cfg.seed + c))
                          for c in types])
    # A previous reference in the same folder is replaced; without its manifest first, so that a
    # kill from here on leaves a folder that is refused as unfinished.
    if primary:
        manifest.discard(out_dir)
        if os.path.exists(model_dir):
            shutil.rmtree(model_dir)
        if os.path.exists(os.path.join(out_dir, OLD_SVMS)):
            os.remove(os.path.join(out_dir, OLD_SVMS))
    distributed.barrier("old reference removed")
    meta = {**provenance(cfg.seed, dataclasses.asdict(cfg), cfg.devices, command),
            "n_genes": int(x.shape[1]), "cell_types": [names[c] for c in types],
            "batch_norm": has_batch_norm(params), "final_loss": losses[-1], "source": data.source}
    checkpoint.save(model_dir, cfg.n_epochs, checkpoint.to_host(params), meta, max_to_keep=1)
    if not primary:
        return meta
    save_svms(os.path.join(out_dir, "svms.npz"), svms)
    with atomic_path(os.path.join(out_dir, "genes.txt")) as tmp:
        with open(tmp, "w") as fh:
            fh.write("\n".join(map(str, data.gene_names)) + "\n")
    write_json(os.path.join(out_dir, "reference.json"), meta)
    shutil.rmtree(partial)
    manifest.write(out_dir, KIND)
    return meta


def reference_meta(reference_dir: str) -> dict:
    """The ``reference.json`` of a folder from ``train_reference``, once the folder is checked
    against its manifest (InputError for any other, old-format, altered or incomplete folder)."""
    from .. import manifest

    if os.path.exists(os.path.join(reference_dir, OLD_SVMS)):
        raise InputError(f"{reference_dir} is a GsRCL reference of an older scdc_jax, whose SVMs are a pickle "
                         f"({OLD_SVMS}) that is never loaded because unpickling can run any code; re-create it "
                         "from its data with 'python -m scdc_jax.gsrcl train-reference'.")
    if not any(os.path.exists(os.path.join(reference_dir, p)) for p in (*FILES, manifest.NAME)):
        raise InputError(f"{reference_dir} is not a GsRCL reference folder (it holds none of {', '.join(FILES)}); "
                         "make one with 'python -m scdc_jax.gsrcl train-reference'.")
    manifest.verify(reference_dir, KIND, REMAKE)
    missing = [p for p in FILES if not os.path.exists(os.path.join(reference_dir, p))]
    if missing:  # a manifest written for a folder that never was a whole reference
        raise InputError(f"{reference_dir} is not a complete GsRCL reference (it lacks {', '.join(missing)}); "
                         f"{REMAKE}.")
    with open(os.path.join(reference_dir, "reference.json")) as fh:
        return json.load(fh)


class Reference(NamedTuple):
    """A loaded reference: its configuration, network, cell types, SVM arrays and genes."""

    cfg: GsRCLConfig
    graphdef: object
    params: object
    cell_types: list[str]
    svms: dict[str, np.ndarray]
    genes: np.ndarray


def load_reference(reference_dir: str) -> Reference:
    """The reference in a folder from ``train_reference``: arrays and JSON only, nothing unpickled."""
    from .. import checkpoint
    from .svm_params import load_svms

    meta = reference_meta(reference_dir)
    cfg = GsRCLConfig(**meta["config"])
    graphdef, template = build_model(cfg, meta["n_genes"], 0, batch_norm=bool(meta.get("batch_norm", False)))
    params, _ = checkpoint.restore(os.path.join(reference_dir, "model"), checkpoint.to_host(template))
    names = list(meta["cell_types"])
    svms = load_svms(os.path.join(reference_dir, "svms.npz"), len(names), cfg.encoder[-1])
    with open(os.path.join(reference_dir, "genes.txt")) as fh:
        genes = np.array([g for g in fh.read().split("\n") if g])
    return Reference(cfg, graphdef, params, names, svms, genes)


def annotate(reference, query, cutoff: float = 0.5):
    """Annotate a query :class:`~scdc_jax.io.CountData` with gene names, with ``reference`` (a
    folder from ``train_reference``, or a :class:`Reference` already loaded from one).

    Returns (pandas DataFrame of per-type probabilities plus ``call``, indexed by cell, and the
    (n, d) representation).  A cell without counts in the reference's genes (an empty droplet, or
    one whose counts all lie in other genes) has no expression to go by: it is called
    "Unassigned" and its probabilities are NaN.
    """
    import pandas as pd

    from .svm_params import svm_scores

    if not 0.0 <= cutoff < 1.0:
        raise InputError(f"{option('cutoff')} must lie in [0, 1), got {cutoff}.")
    if query.gene_names is None:
        raise InputError("the query has no gene names, so it cannot be aligned to the reference genes.")
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    x = log_transform(zero_fill_genes(query.X, query.gene_names, ref.genes))
    h = make_encode(ref.graphdef)(ref.params, x)
    _, raw = svm_scores(ref.svms, h)
    probs, calls = call_types(raw, ref.cell_types, cutoff)
    empty = ~(x > 0).any(1)
    probs[empty], calls[empty] = np.nan, UNASSIGNED
    index = query.cell_names if query.cell_names is not None else [f"cell{i}" for i in range(len(x))]
    df = pd.DataFrame(probs, columns=ref.cell_types, index=pd.Index(index, name="cell"))
    df["call"] = calls
    return df, h


def plot_calls(h: np.ndarray, calls, path: str, labels=None) -> None:
    """2-D PCA of the representation coloured by call and, given the query's known ``labels``
    (names, one per cell), a second panel coloured by them; a name has one colour in both panels,
    so a call and the label it should match read alike.  Saved as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    from ..outputs import palette

    xy = PCA(2).fit_transform(h) if h.shape[0] > 2 and h.shape[1] >= 2 else np.zeros((len(h), 2))
    calls = np.asarray(calls).astype(str)
    panels = [("GsRCL call", calls)]
    if labels is not None:
        labels = np.asarray(labels).astype(str)
        agree = float(np.mean(calls == labels))
        panels.append((f"known label ({agree:.1%} of the cells called it)", labels))
    names = sorted(set(calls.tolist()) | set(labels.tolist() if labels is not None else []) - {UNASSIGNED})
    colour = dict(zip(names, palette(len(names))))
    colour[UNASSIGNED] = "0.55"  # a mid grey: the palette's light blue is close to the usual light grey
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
    draw = np.random.default_rng(0).permutation(len(calls))  # a random order, so no type hides another
    for ax, (title, values) in zip(axes[0], panels):
        ax.scatter(xy[draw, 0], xy[draw, 1], s=6, c=[colour[v] for v in values[draw]], linewidths=0)
        cats = sorted(set(values.tolist()), key=lambda s: (s == UNASSIGNED, s))
        handles = [plt.Line2D([], [], marker="o", linestyle="", markersize=5, color=colour[c],
                              label=f"{c} ({int((values == c).sum())})") for c in cats]
        ax.legend(handles=handles, title=title.split(" (")[0], fontsize=7, title_fontsize=8, frameon=False,
                  loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.set(xlabel="PC 1", ylabel="PC 2", title=title)
    fig.suptitle("GsRCL annotation (PCA of the representation)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=os.path.splitext(path)[1][1:] or "png", bbox_inches="tight")
    plt.close(fig)
