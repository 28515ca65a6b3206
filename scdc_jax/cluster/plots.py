"""Pictures of a clustering run: UMAP of the latent space, loss curves, score trajectory."""
from __future__ import annotations

import os

import numpy as np


def _scatter(ax, xy, values, title, names=None):
    import matplotlib.pyplot as plt

    cats = np.unique(values)
    cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
    for i, c in enumerate(cats):
        sel = values == c
        label = names[c] if names is not None else str(c)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=cmap(i % cmap.N), label=label, rasterized=True)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    if len(cats) <= 20:
        ax.legend(markerscale=3, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    from ..outputs import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_run(result, data, out_dir: str, *, seed: int = 0) -> list[str]:
    """Write ``umap.png``, ``losses.png`` and (with labels) ``scores.png`` into ``out_dir``.

    ``result`` is a :class:`ClusterResult`; ``data`` the filtered CountData of its cells (labels
    and batches aligned with ``result.labels``).  Returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import anndata
    import matplotlib.pyplot as plt
    import scanpy as sc

    os.makedirs(out_dir, exist_ok=True)
    written = []
    ad = anndata.AnnData(np.zeros((len(result.labels), 1), np.float32))
    ad.obsm["X_scdc"] = result.latent
    sc.pp.neighbors(ad, use_rep="X_scdc", n_neighbors=15, random_state=seed)
    sc.tl.umap(ad, random_state=seed)
    xy = ad.obsm["X_umap"]
    panels = [("predicted cluster", result.labels, None)]
    if data.labels is not None:
        panels.append(("true label", data.labels, data.label_names))
    if data.batch is not None:
        panels.append(("batch", data.batch.argmax(1), data.batch_names))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, vals, names) in zip(axes[0], panels):
        _scatter(ax, xy, np.asarray(vals), title, names)
    fig.suptitle("scDeepCluster latent space (UMAP)")
    fig.tight_layout()
    written.append(_save(fig, os.path.join(out_dir, "umap.png")))

    h = result.history
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if h.get("pretrain_loss"):
        axes[0].plot(np.arange(1, len(h["pretrain_loss"]) + 1), h["pretrain_loss"])
    axes[0].set(title="pretraining", xlabel="epoch", ylabel="ZINB NLL per entry")
    if h.get("cluster"):
        ep = [e["epoch"] for e in h["cluster"]]
        for key, lab in (("loss", "total"), ("zinb", "ZINB"), ("kl", "KL")):
            axes[1].plot(ep, [e[key] for e in h["cluster"]], label=lab)
        axes[1].legend(frameon=False)
    axes[1].set(title="clustering stage", xlabel="epoch", ylabel="loss")
    fig.tight_layout()
    written.append(_save(fig, os.path.join(out_dir, "losses.png")))

    if h.get("scores"):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ep = [e["epoch"] for e in h["scores"]]
        for key in ("ari", "nmi", "acc"):
            ax.plot(ep, [e[key] for e in h["scores"]], label=key.upper())
        ax.set(title="agreement with the known labels", xlabel="clustering epoch", ylim=(0, 1))
        ax.legend(frameon=False)
        fig.tight_layout()
        written.append(_save(fig, os.path.join(out_dir, "scores.png")))
    return written
