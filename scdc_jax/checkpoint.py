"""Orbax checkpoints: a pytree of arrays plus a JSON dict of metadata, one folder per step.

Saving goes through orbax's temporary-folder-then-rename, so a killed run never leaves a
half-written step behind; restoring uses an abstract target so shapes and dtypes are checked.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

absl_logging.set_verbosity(absl_logging.ERROR)

from . import manifest
from .errors import InputError, option


def _manager(directory: str, max_to_keep: int | None = 2, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))


def _flatten(tree) -> tuple[dict[str, np.ndarray], object]:
    """A flat ``{path: array}`` dict (string keys, any pytree node types) and the tree structure."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in pairs}, treedef


def _host(a) -> np.ndarray:
    if not isinstance(a, jax.Array) or a.is_fully_addressable or a.sharding.is_fully_replicated:
        return np.asarray(a)
    from jax.experimental import multihost_utils  # split over several processes: gathered

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def to_host(tree):
    """A pytree of device arrays as NumPy arrays on this host (what :func:`save` writes).

    Also for the global arrays of a multi-process run: a replicated array is read from this
    process's copy; one split over several processes is gathered, which every process must then
    do at the same point.
    """
    return jax.tree.map(_host, tree)


def save(directory: str, step: int, state, meta: dict, *, max_to_keep: int | None = 2) -> None:
    """Save ``state`` (any pytree of arrays) and ``meta`` (JSON-serialisable) as ``directory/<step>``.

    A manifest of ``directory`` is removed first: once the folder changes it no longer holds, and
    the folder is whole again only when its writer lists it anew (:func:`scdc_jax.manifest.write`).
    """
    manifest.discard(directory)
    state = to_host(_flatten(state)[0])
    with _manager(directory, max_to_keep) as mngr:
        if step in mngr.all_steps():  # a resumed run redoing its last epochs saves their step again
            mngr.delete(step)
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave(meta)), force=True)
        mngr.wait_until_finished()


def run_dir(directory: str, fingerprint: dict, resume: bool, *, write: bool = True) -> str:
    """Create ``directory`` for the checkpoints of a run identified by ``fingerprint`` (the settings
    and data, JSON-serialisable).  Without ``resume`` a previous run's folder is emptied; with it, a
    folder made for another fingerprint is refused, so a run never continues from foreign state.

    ``write=False`` only checks (the processes of a multi-process run but the first, which writes)."""
    import json
    import shutil

    from .outputs import as_json, write_json

    key_file = os.path.join(directory, "fingerprint.json")
    fingerprint = as_json(fingerprint)  # as it will read back
    if os.path.exists(key_file):
        if resume:
            with open(key_file) as fh:
                if json.load(fh) != fingerprint:
                    raise InputError(f"{directory} holds checkpoints of a different configuration or data file; "
                                     f"run without {option('resume', True)} to start afresh.")
        elif write:
            shutil.rmtree(directory)
    if not write:
        return directory
    os.makedirs(directory, exist_ok=True)
    write_json(key_file, fingerprint)
    return directory


def latest_step(directory: str) -> int | None:
    if not os.path.isdir(directory):
        return None
    with _manager(directory, read_only=True) as mngr:
        return mngr.latest_step()


def read_meta(directory: str, step: int | None = None) -> dict:
    step = latest_step(directory) if step is None else step
    if step is None:
        raise InputError(f"{directory} holds no scdc_jax checkpoint.")
    with _manager(directory, read_only=True) as mngr:
        return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def restore(directory: str, target, step: int | None = None):
    """Restore ``(state, meta)`` from ``directory`` (latest step by default) onto ``target``'s
    structure: a pytree of arrays or of ``jax.ShapeDtypeStruct`` (``jax.eval_shape``, ``nnx.eval_shape``)."""
    step = latest_step(directory) if step is None else step
    if step is None:
        raise InputError(f"{directory} holds no scdc_jax checkpoint.")
    flat, treedef = _flatten(target)
    # shapes and dtypes only: the arrays come back on the default device, whatever ``target`` holds
    abstract = {k: jax.ShapeDtypeStruct(np.shape(a), a.dtype if isinstance(a, jax.ShapeDtypeStruct) else np.asarray(a).dtype)
                for k, a in flat.items()}
    with _manager(directory, read_only=True) as mngr:
        try:
            out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"the checkpoint in {directory} does not fit this model and data "
                             f"({str(exc).splitlines()[0][:200]}); was it made with other genes or settings?") from None
    state = jax.tree.unflatten(treedef, [out["state"][k] for k in flat])
    return state, dict(out["meta"])
