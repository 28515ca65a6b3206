"""Finished folds of a GsRCL evaluation kept on disk, for ``--resume``."""
from __future__ import annotations

import json
import os
import shutil
import zlib

from .. import checkpoint, distributed
from ..outputs import as_json, write_json


class FoldStore:
    """Completed folds kept on disk so that an interrupted evaluation resumes where it stopped.

    One JSON file per (encoder, fold) in ``directory``, written atomically, beside the
    checkpoints of the fold in training (removed once it is finished), plus a fingerprint of the
    configuration and data: resuming with anything else is refused.  In a multi-process run every
    process reads the folder and the first alone writes and removes files in it (the checkpoints
    are saved by all, :func:`scdc_jax.checkpoint.save`).
    """

    def __init__(self, directory: str, fingerprint: dict, resume: bool):
        self.primary = distributed.is_primary()
        self.directory = checkpoint.run_dir(directory, as_json(fingerprint), resume, write=self.primary)
        distributed.barrier("fold store ready")  # made by the first process before any other reads it

    def _path(self, name: str, fold) -> str:
        return os.path.join(self.directory, f"{zlib.crc32(name.encode()):08x}_{fold}")

    def checkpoint_dir(self, name: str, fold: int | None = None) -> str:
        """The folder of the in-fold checkpoints of (encoder ``name``: a cell type, or SHARED; fold),
        or with no fold, of ``name``'s folds trained together as one fold batch."""
        return self._path(name, "batch" if fold is None else fold) + ".partial"

    def get(self, name: str, fold: int) -> dict | None:
        """The saved result of (encoder ``name``, ``fold``), or None when it has not finished."""
        try:
            with open(self._path(name, fold) + ".json") as fh:
                result = json.load(fh)
        except FileNotFoundError:
            return None
        if self.primary:
            shutil.rmtree(self.checkpoint_dir(name, fold), ignore_errors=True)  # left by a kill after the fold
        return result

    def put(self, name: str, fold: int, result: dict) -> None:
        if self.primary:
            write_json(self._path(name, fold) + ".json", as_json(result))
            shutil.rmtree(self.checkpoint_dir(name, fold), ignore_errors=True)

    def discard_checkpoints(self, name: str) -> None:
        """Remove the fold batch's checkpoints of encoder ``name`` (once all its folds are saved)."""
        if self.primary:
            shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)
