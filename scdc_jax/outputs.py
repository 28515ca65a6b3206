"""Writing results: atomic files (temporary file, then rename), run folders that never mix two
runs, and the provenance of a run."""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import secrets
import shutil
import tempfile

import numpy as np

from .errors import InputError, option


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


def check_reuse(path: str, held: bool, what: str, folder_option: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, to write into ``path`` when it ``held`` ``what`` of an earlier run
    and the user said neither to continue it (``resume``) nor to replace it (``overwrite``), or
    said both; ``folder_option`` names the option choosing the folder."""
    if resume and overwrite:
        raise InputError(f"{option('resume', True)} continues the run in {path} and {option('overwrite', True)} "
                         "replaces it; give one of them.")
    if held and not (resume or overwrite):
        raise InputError(f"{path} already holds {what}; give {option('overwrite', True)} to replace it, "
                         f"{option('resume', True)} to continue it, or choose another {folder_option}.")


class RunFolder:
    """The folder of one run's checkpoints and outputs, which never holds parts of two runs.

    ``entries`` are the names a run writes there.  A folder holding none of them is written in
    place.  One holding a run is refused, unless ``resume`` (continue that run; refused by
    :meth:`claim` when its ``fingerprint.json`` names other settings or data) or ``overwrite``
    (build the new run in the sibling staging folder ``.NAME.overwrite``; :meth:`commit` then moves
    the old run's entries out and the new ones in, so a failed or interrupted run leaves the old
    one whole).  ``resume`` after an interrupted ``overwrite`` continues in the staging folder.

    Constructing one only checks, and refuses before any work; :meth:`claim` creates the folder.
    """

    FINGERPRINT = "fingerprint.json"

    def __init__(self, path: str, entries, *, resume: bool = False, overwrite: bool = False):
        self.path, self.resume = path, resume
        self.entries = (*entries, self.FINGERPRINT)
        parent, name = os.path.split(os.path.abspath(path))
        self.staging = os.path.join(parent, f".{name}.overwrite")
        continuing = resume and os.path.isdir(self.staging)  # an interrupted --overwrite, resumed
        held = not continuing and self.holds_run()
        check_reuse(path, held, "a scdc_jax run", option("save_dir"), resume=resume, overwrite=overwrite)
        check_writable_dir(path, "save folder")
        if held and overwrite:
            check_writable_dir(parent, "folder of the save folder")
        self.work = self.staging if continuing or (held and overwrite) else path

    def holds_run(self) -> bool:
        return os.path.isdir(self.path) and any(os.path.lexists(os.path.join(self.path, e)) for e in self.entries)

    def claim(self, fingerprint: dict, *, write: bool = True) -> str:
        """Create the folder to write into and record ``fingerprint`` (JSON-serialisable: the
        settings and data that make two runs the same run); returns the folder.

        ``write=False`` only checks (the processes of a multi-process run but the first, which
        writes)."""
        import json

        fingerprint = as_json(fingerprint)  # as it will read back
        key = os.path.join(self.work, self.FINGERPRINT)
        if self.resume and os.path.exists(key):
            with open(key) as fh:
                if json.load(fh) != fingerprint:
                    raise InputError(f"{self.work} holds a run of other settings or data, which "
                                     f"{option('resume', True)} cannot continue; give {option('overwrite', True)} "
                                     f"to replace it, or choose another {option('save_dir')}.")
        if not write:
            return self.work
        if not self.resume and os.path.isdir(self.staging):
            shutil.rmtree(self.staging)  # left by an interrupted overwrite that is not being resumed
        os.makedirs(self.work, exist_ok=True)
        write_json(key, fingerprint)
        return self.work

    def commit(self) -> None:
        """Put a staged run in place of the old one; other files in the folder stay.

        The old run's entries all move out (to a sibling folder, then deleted) before any new one
        moves in: renames within one file system, so the folder is without a run for an instant
        but never holds parts of two.
        """
        if self.work != self.staging:
            return
        os.makedirs(self.path, exist_ok=True)
        old = self.staging[: -len(".overwrite")] + ".replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.makedirs(old)
        new = os.listdir(self.staging)
        for name in {*self.entries, *new}:
            if os.path.lexists(os.path.join(self.path, name)):
                os.rename(os.path.join(self.path, name), os.path.join(old, name))
        for name in new:
            os.rename(os.path.join(self.staging, name), os.path.join(self.path, name))
        os.rmdir(self.staging)
        shutil.rmtree(old)
        self.work = self.path


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


def as_json(obj):
    """``obj`` (dicts, lists, NumPy scalars and arrays, ...) as it reads back from a JSON file:
    plain Python values, string keys, lists for tuples and arrays."""
    import json

    return json.loads(json.dumps(obj, default=_json_default))


def palette(n: int) -> list[str]:
    """``n`` distinct colours for pictures (scanpy's palettes of 20, 28 and 102; repeated beyond 102)."""
    from scanpy.plotting.palettes import default_20, default_28, default_102

    base = default_20 if n <= 20 else default_28 if n <= 28 else default_102
    return [base[i % len(base)] for i in range(n)]


def write_h5ad(path: str, adata) -> None:
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def package_versions() -> dict[str, str]:
    """Versions of scdc_jax and the packages its results depend on (those installed)."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("scdc_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn",
                "scanpy", "anndata", "igraph", "leidenalg"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return versions


def provenance(seed: int | None, config: dict, n_devices: int, command: str | None = None) -> dict:
    """Seed (left out when None: a run that draws nothing), configuration, package versions,
    devices, machine and time of a run."""
    import jax

    return {
        **({} if seed is None else {"seed": seed}),
        "config": config,
        "versions": package_versions(),
        "n_devices": n_devices,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "machine": f"{platform.machine()} {platform.system()} {os.cpu_count()} cores",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
