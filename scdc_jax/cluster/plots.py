"""Pictures of a clustering run: UMAP of the latent space, confusion table, loss curves, scores.

With known labels the pictures compare: each true label is matched to the cluster sharing the
most of its cells (the Hungarian matching of :func:`scdc_jax.metrics.match_clusters`, the one
ACC is scored on), takes that cluster's colour in ``umap.png`` and its column in
``confusion.png``, so a label and its cluster read alike side by side.
"""
from __future__ import annotations

import os

import numpy as np

from ..metrics import contingency, match_clusters
from ..outputs import palette


def label_colours(y_true, y_pred) -> tuple[dict, dict, dict]:
    """Colours that show the matching of true labels to clusters.

    Returns ``(cluster_colour, label_colour, matching)``: cluster ``c`` (in sorted order) gets the
    ``c``-th colour; a true label matched to a cluster (``matching[label] = cluster``) gets that
    cluster's colour, and a label left unmatched (more labels than clusters) a colour no cluster has.
    """
    clusters = np.unique(np.asarray(y_pred)).tolist()
    labels = np.unique(np.asarray(y_true)).tolist()
    matching = match_clusters(y_true, y_pred)
    unmatched = [t for t in labels if t not in matching]
    colours = palette(len(clusters) + len(unmatched))
    cluster_colour = {c: colours[i] for i, c in enumerate(clusters)}
    label_colour = {t: cluster_colour[matching[t]] for t in matching}
    label_colour.update({t: colours[len(clusters) + j] for j, t in enumerate(unmatched)})
    return cluster_colour, label_colour, matching


def matched_order(y_true, y_pred) -> tuple[list, list]:
    """(true labels, clusters) ordered so that matched pairs share a position: matched pairs in
    cluster order first, then the clusters and the labels left unmatched (each label after the
    cluster holding most of it, so the table stays nearly diagonal)."""
    classes, clusters, table = contingency(y_true, y_pred)
    matching = match_clusters(y_true, y_pred)
    cols = sorted(matching.values()) + [c for c in clusters.tolist() if c not in matching.values()]
    by_cluster = {c: t for t, c in matching.items()}
    rows = [by_cluster[c] for c in cols if c in by_cluster]
    col_pos = {c: i for i, c in enumerate(cols)}
    rest = [t for t in classes.tolist() if t not in matching]
    rest.sort(key=lambda t: col_pos[clusters[table[classes.tolist().index(t)].argmax()].item()])
    return rows + rest, cols


def _scatter(ax, xy, values, title, colour: dict, legend_title: str, names: dict | None = None,
             order: list | None = None, seed: int = 0):
    """Every cell in one scatter call, drawn in a random order so that no category hides another."""
    from matplotlib.lines import Line2D

    values = np.asarray(values)
    draw = np.random.default_rng(seed).permutation(len(values))
    ax.scatter(xy[draw, 0], xy[draw, 1], s=4, c=[colour[v] for v in values[draw].tolist()], rasterized=True,
               linewidths=0)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")
    cats = order if order is not None else np.unique(values).tolist()
    if len(cats) <= 30:
        handles = [Line2D([], [], marker="o", linestyle="", markersize=5, color=colour[c],
                          label=names[c] if names is not None else str(c)) for c in cats]
        ax.legend(handles=handles, title=legend_title, fontsize=7, title_fontsize=8, frameon=False,
                  loc="center left", bbox_to_anchor=(1.0, 0.5))


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    from ..outputs import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def _scores_text(scores: dict | None) -> str:
    return "" if not scores else "ARI {ari:.3f}   NMI {nmi:.3f}   ACC {acc:.3f}".format(**scores)


def _umap(result, data, out_dir: str, seed: int) -> str:
    import anndata
    import matplotlib.pyplot as plt
    import scanpy as sc

    ad = anndata.AnnData(np.zeros((len(result.labels), 1), np.float32))
    ad.obsm["X_scdc"] = result.latent
    sc.pp.neighbors(ad, use_rep="X_scdc", n_neighbors=15, random_state=seed)
    sc.tl.umap(ad, random_state=seed)
    xy = ad.obsm["X_umap"]
    pred = np.asarray(result.labels)
    panels = []
    if data.labels is not None:
        cluster_colour, label_colour, matching = label_colours(data.labels, pred)
        rows, _ = matched_order(data.labels, pred)
        def name(t):  # labels that are bare numbers (an .h5's Y) would read as cluster numbers
            n = data.label_names[t] if data.label_names is not None else str(t)
            return f"label {n}" if n.isdigit() else n

        names = {t: name(t) + (f" (cluster {matching[t]})" if t in matching else " (no cluster)") for t in rows}
        panels.append(("predicted cluster", pred, cluster_colour, "cluster", None, None))
        panels.append(("true label, in the colour of its matched cluster", data.labels, label_colour,
                       "true label", names, rows))
    else:
        clusters = np.unique(pred).tolist()
        panels.append(("predicted cluster", pred, dict(zip(clusters, palette(len(clusters)))), "cluster", None, None))
    if data.batch is not None:
        b = data.batch.argmax(1)
        names = dict(enumerate(data.batch_names)) if data.batch_names is not None else None
        panels.append(("batch", b, dict(enumerate(palette(data.batch.shape[1]))), "batch", names, None))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, (title, vals, colour, legend_title, names, order) in zip(axes[0], panels):
        _scatter(ax, xy, vals, title, colour, legend_title, names, order, seed)
    k = result.centers.shape[0]
    head = f"scDeepCluster latent space (UMAP), {k} clusters"
    scores = _scores_text(result.scores)
    fig.suptitle(head + (f"\n{scores}" if scores else ""))
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, "umap.png"))


def _confusion(result, data, out_dir: str) -> str:
    import matplotlib.pyplot as plt

    rows, cols = matched_order(data.labels, result.labels)
    classes, clusters, table = contingency(data.labels, result.labels)
    ri = {t: i for i, t in enumerate(classes.tolist())}
    ci = {c: j for j, c in enumerate(clusters.tolist())}
    t = table[np.ix_([ri[r] for r in rows], [ci[c] for c in cols])]
    share = t / t.sum(1, keepdims=True)
    names = [data.label_names[r] if data.label_names is not None else str(r) for r in rows]
    fig, ax = plt.subplots(figsize=(2.5 + 0.5 * len(cols), 1.5 + 0.4 * len(rows)))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(t.shape[0]):
        for j in range(t.shape[1]):
            if t[i, j]:
                ax.text(j, i, str(t[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), names)
    ax.set_xlabel("predicted cluster")
    ax.set_ylabel("true label")
    ax.set_title("cells per true label and cluster (matched pairs on the diagonal)\n" + _scores_text(result.scores),
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="share of the true label's cells", shrink=0.8)
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, "confusion.png"))


def _losses(result, out_dir: str) -> str:
    import matplotlib.pyplot as plt

    h = result.history
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if h.get("pretrain_loss"):
        axes[0].plot(np.arange(1, len(h["pretrain_loss"]) + 1), h["pretrain_loss"])
    axes[0].set(title="pretraining", xlabel="epoch", ylabel="ZINB NLL per entry")
    if h.get("cluster"):
        ep = [e["epoch"] for e in h["cluster"]]
        for key, lab in (("loss", "total"), ("zinb", "ZINB"), ("kl", "KL")):
            axes[1].plot(ep, [e[key] for e in h["cluster"]], label=lab)
        # The update at epoch e computes the target P that the epochs e + 1 ... e + every train on,
        # so a mark sits at the start of the epochs that share one target.
        every = int(result.config["update_interval"])
        updates = np.arange(0, ep[-1], every)
        axes[1].vlines(updates, 0, 0.04, color="0.35", linewidth=0.8, transform=axes[1].get_xaxis_transform(),
                       label="target update" + (" (every epoch)" if every == 1 else f" (every {every} epochs)"))
        axes[1].legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].set(title=f"clustering stage (stopped by {result.stop_reason})", xlabel="epoch", ylabel="loss")
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, "losses.png"))


def _scores(result, out_dir: str) -> str:
    import matplotlib.pyplot as plt

    h = result.history
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ep = [e["epoch"] for e in h["scores"]]
    for key in ("ari", "nmi", "acc"):
        ax.plot(ep, [e[key] for e in h["scores"]], label=key.upper())
    ax.set(title="agreement with the known labels, per target update", xlabel="clustering epoch", ylim=(0, 1))
    ax.legend(frameon=False)
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, "scores.png"))


def plot_run(result, data, out_dir: str, *, seed: int = 0) -> list[str]:
    """Write ``umap.png``, ``losses.png`` and, with labels, ``confusion.png`` and ``scores.png``.

    ``result`` is a :class:`ClusterResult`; ``data`` the filtered CountData of its cells (labels
    and batches aligned with ``result.labels``).  Returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(out_dir, exist_ok=True)
    written = [_umap(result, data, out_dir, seed)]
    if data.labels is not None:
        written.append(_confusion(result, data, out_dir))
    written.append(_losses(result, out_dir))
    if result.history.get("scores"):
        written.append(_scores(result, out_dir))
    return written
