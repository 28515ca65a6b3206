"""The layout of a run's ``save_dir`` (no JAX here, so the CLI can refuse a folder at once).

* ``pretrain/``, ``cluster/``, ``model/`` — orbax checkpoints of the pretrained autoencoder, the
  periodic clustering state (for ``resume``) and the final model (for ``predict``);
* ``final_latent_file.txt``, ``pred_labels.txt``, ``run.json`` — the command line's outputs, and
  of an ensemble run ``ensemble_labels.csv`` (one column of labels a member);
* ``fingerprint.json`` — the settings and data of the run (see :class:`~scdc_jax.outputs.RunFolder`).
"""
from __future__ import annotations

from ..outputs import RunFolder

PRETRAIN, CLUSTER, MODEL = "pretrain", "cluster", "model"
LATENT_FILE, LABEL_FILE, RUN_FILE = "final_latent_file.txt", "pred_labels.txt", "run.json"
ENSEMBLE_FILE = "ensemble_labels.csv"
RUN_ENTRIES = (PRETRAIN, CLUSTER, MODEL, LATENT_FILE, LABEL_FILE, RUN_FILE, ENSEMBLE_FILE)


def run_folder(save_dir: str, *, resume: bool = False, overwrite: bool = False) -> RunFolder:
    """``save_dir`` as a run folder; refuses at once one that holds another run, unless ``resume``
    or ``overwrite``."""
    return RunFolder(save_dir, RUN_ENTRIES, resume=resume, overwrite=overwrite)
