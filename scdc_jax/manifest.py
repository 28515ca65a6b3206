"""Manifests of the folders users exchange: GsRCL references and scDeepCluster model folders.

A folder someone else wrote is data to check before it is read.  :func:`write` records, once a
folder is complete, every file in it (size and SHA-256), the format version and the package
versions in ``manifest.json``; :func:`verify` refuses, in one sentence, a folder that holds a
pickle or anything but plain files, has no manifest or one of an unknown format or kind, lacks a
listed file, holds an unlisted one, or whose files differ from their listing.  A manifest guards
against damage and mix-ups, not against a forger (who could rewrite it): what keeps a crafted
folder from running code is that every loader reads arrays and JSON only, never a pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat

from .errors import InputError

NAME = "manifest.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


def _entries(folder: str) -> tuple[dict[str, int], list[str]]:
    """({relative path: size} of the regular files under ``folder`` but the manifest, and the
    relative paths of anything else: links, devices, pipes)."""
    files, odd = {}, []
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                if rel != NAME:
                    files[rel] = os.lstat(path).st_size
            elif not stat.S_ISDIR(mode):  # os.walk does not descend into linked folders: list them too
                odd.append(rel)
    return files, sorted(odd)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _some(paths) -> str:
    paths = sorted(paths)
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def write(folder: str, kind: str) -> dict:
    """Write ``folder/manifest.json`` listing every file now in ``folder``; call it when the folder
    is complete.  ``kind`` names what the folder is, in words ("GsRCL reference"), for :func:`verify`."""
    from .outputs import package_versions, write_json

    files, _ = _entries(folder)
    manifest = {"format": "scdc_jax", "format_version": FORMAT_VERSION, "kind": kind,
                "files": {rel: {"size": size, "sha256": _sha256(os.path.join(folder, rel))}
                          for rel, size in sorted(files.items())},
                "versions": package_versions()}
    write_json(os.path.join(folder, NAME), manifest)
    return manifest


def discard(folder: str) -> None:
    """Remove ``folder``'s manifest before the folder is written to again (it would no longer hold)."""
    try:
        os.remove(os.path.join(folder, NAME))
    except FileNotFoundError:  # none, or another process of a multi-process run removed it first
        pass


def verify(folder: str, kind: str, remedy: str) -> dict:
    """Check ``folder`` against its manifest before anything in it is read; return the manifest.

    Raises InputError (one sentence ending in ``remedy``, e.g. "train it again with ...") for a
    folder that holds a pickle or a non-plain file, has no readable manifest, one of another format
    version or kind, or files missing, unlisted or different from their listing.
    """
    files, odd = _entries(folder)
    pickles = [rel for rel in files if rel.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise InputError(f"{folder} holds a pickle ({_some(pickles)}), which scdc_jax never loads because "
                         f"unpickling can run any code; {remedy}.")
    if odd:
        raise InputError(f"{folder} holds links or other entries that are not plain files ({_some(odd)}); "
                         f"a shared folder must hold plain files only; {remedy}.")
    path = os.path.join(folder, NAME)
    if not os.path.isfile(path):
        raise InputError(f"{folder} has no {NAME}, so its contents cannot be checked (it was written by an older "
                         f"scdc_jax, by a run that did not finish, or it was copied incompletely); {remedy}.")
    try:
        with open(path, "rb") as fh:
            manifest = json.loads(fh.read().decode("utf-8"))
        version = manifest.get("format_version")
        listed = {str(rel): (int(v["size"]), str(v["sha256"])) for rel, v in manifest["files"].items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise InputError(f"the {NAME} of {folder} is damaged (not the JSON scdc_jax writes); {remedy}.") from None
    if manifest.get("format") != "scdc_jax" or version != FORMAT_VERSION:
        raise InputError(f"{folder} is in manifest format version {version!r}, which this scdc_jax (format "
                         f"{FORMAT_VERSION}) does not know; {remedy}.")
    if manifest.get("kind") != kind:
        raise InputError(f"{folder} holds a {manifest.get('kind')}, not a {kind}; give the folder of a {kind}.")
    missing = set(listed) - set(files)
    if missing:
        raise InputError(f"{folder} is incomplete: {_some(missing)} listed in its {NAME} "
                         f"{'is' if len(missing) == 1 else 'are'} missing; copy the whole folder again or {remedy}.")
    extra = set(files) - set(listed)
    if extra:
        raise InputError(f"{folder} holds files its {NAME} does not list ({_some(extra)}), so it was changed after "
                         f"it was saved; remove them, copy the folder again or {remedy}.")
    changed = [rel for rel in files
               if files[rel] != listed[rel][0] or _sha256(os.path.join(folder, rel)) != listed[rel][1]]
    if changed:
        raise InputError(f"{folder} was altered or damaged after it was saved: {_some(changed)} "
                         f"{'differs' if len(changed) == 1 else 'differ'} from its {NAME}; copy the folder again "
                         f"or {remedy}.")
    return manifest
