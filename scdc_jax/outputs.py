"""Writing results: atomic files (temporary file, then rename) and the provenance of a run."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import secrets
import tempfile

import numpy as np

from .errors import InputError


def check_writable_dir(path: str, what: str = "output folder") -> str:
    """Make sure ``path`` is, or can be created as, a writable folder; creates nothing."""
    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise InputError(f"the {what} {path} exists and is not a folder; choose another path.")
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise InputError(f"the {what} {path} cannot be created: {probe} is a file, not a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"the {what} {path} is not writable (no write permission in {probe}); choose another folder.")
    # Permissions can pass (root) where the file system still refuses: try, and leave nothing
    # behind, not even a new modification time on the folder.
    before = os.stat(probe)
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".scdc_probe_"))
    except OSError as exc:
        raise InputError(f"the {what} {path} cannot be written ({exc.strerror or exc} in {probe}); "
                         "choose another folder.") from None
    with contextlib.suppress(OSError):
        os.utime(probe, ns=(before.st_atime_ns, before.st_mtime_ns))
    return path


def check_writable_file(path: str, what: str = "output file") -> str:
    check_writable_dir(os.path.dirname(os.path.abspath(path)), f"folder of the {what}")
    if os.path.isdir(path):
        raise InputError(f"the {what} {path} is a folder; give a file name.")
    return path


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is created with mode 0666 less the umask, as ``open`` would create
    ``path`` itself (``tempfile.mkstemp`` would make every output private, 0600).
    """
    d, base = os.path.split(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    suffix = os.path.splitext(base)[1] or ".tmp"
    while True:
        tmp = os.path.join(d, f".{base}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # another writer's temporary name: draw again
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_matrix_csv(path: str, a: np.ndarray, fmt: str = "%.6g") -> None:
    with atomic_path(path) as tmp:
        np.savetxt(tmp, a, delimiter=",", fmt=fmt)


def write_labels(path: str, labels: np.ndarray) -> None:
    """One integer label a line."""
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.asarray(labels, np.int64), fmt="%d")


def write_json(path: str, obj) -> None:
    import json

    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, default=_json_default)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def write_h5ad(path: str, adata) -> None:
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def provenance(seed: int, config: dict, n_devices: int, command: str | None = None) -> dict:
    """Seed, configuration, package versions, devices, machine and time of a run."""
    import importlib.metadata as md

    import jax

    versions = {}
    for pkg in ("scdc_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn",
                "scanpy", "anndata", "igraph", "leidenalg"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return {
        "seed": seed,
        "config": config,
        "versions": versions,
        "n_devices": n_devices,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "machine": f"{platform.machine()} {platform.system()} {os.cpu_count()} cores",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
