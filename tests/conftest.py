"""Shared fixtures: small synthetic count data and the path of the shared real data."""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

# One persistent XLA compilation cache for the whole test session, set before jax is imported so
# that this process, pytest-xdist's workers and every subprocess a test starts (they inherit the
# environment) share it: the many small runs of the same model on data of the same shape compile
# each jitted function once instead of once per run (a run builds new jitted closures, which
# jax's in-memory cache does not recognise, but their HLO is the same, and so is the cache key).
# A cached executable is the one XLA compiled for that HLO; results do not change.  Only
# compilations over 0.2 s are stored (the epochs', not each eager op's).  A size limit
# turns on jax's file lock, so that concurrent processes never read an entry being written (one
# left half-written by a process a test kills costs a warning and a fresh compilation).  A
# cache the developer set up (JAX_COMPILATION_CACHE_DIR given) is used as it is and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="scdc_jax_test_xla_cache_")
    os.environ["SCDC_JAX_TEST_CACHE_OWNER"] = str(os.getpid())  # the process that removes it
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

# The suite's runs are tiny, so compiling them, not running them, is most of its time: XLA's
# optimisation passes are turned down (jax's own switch for this case), elementwise fusions are
# emitted by XLA's older, plainer CPU code generator instead of its MLIR fusion emitters (this
# alone takes the suite's CPU time down by a third), and each process computes on one thread
# (pytest-xdist's workers already keep every core busy).  All of it reaches the subprocesses tests
# start (through the environment; see :func:`xla_flags`).  Results are the same programs' results
# to float32 rounding: every comparison in the suite holds either way.  Users' runs and the
# benchmarks compile with XLA's defaults.
#
# The suite's processes also see 4 CPU devices, so that the tests comparing 1 and 4 devices (and
# the 1-process references of the multi-process runs) run in the pytest process instead of a fresh
# one each; a run uses 1 device unless it asks for more, so nothing else changes.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
DEVICES = 4
SUITE_XLA_FLAGS = f"--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count={DEVICES}"
OLD_EMITTER = "--xla_cpu_use_fusion_emitters=false"  # XLA aborts on a flag it does not know: probed once


def _xla_accepts(flags: str) -> bool:
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, timeout=300,
                           env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})
    return probe.returncode == 0


if "SCDC_JAX_SUITE_XLA_FLAGS" not in os.environ:  # once (pytest's first process): the others inherit the result
    flags = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()
    if _xla_accepts(f"{flags} {OLD_EMITTER}"):
        flags = f"{flags} {OLD_EMITTER}"
    os.environ["SCDC_JAX_SUITE_XLA_FLAGS"] = SUITE_XLA_FLAGS
    os.environ["XLA_FLAGS"] = flags

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", False)


def pytest_unconfigure(config):
    if os.environ.get("SCDC_JAX_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# The longest tests (each a minute or more on a 2-core machine), started first so that with
# pytest-xdist (the README's test command) no worker is left running one of them alone at the end.
# Only the order changes; without xdist the suite runs as before, in this order.
SLOW_FIRST = ("test_multihost.py::", "test_resume.py::", "test_gsrcl.py::test_sigkill_inside_a_fold", "test_cluster_devices.py::",
              "test_gsrcl.py::test_four_devices_match_one_device", "test_gsrcl.py::test_cli_four_devices",
              "test_cli.py::test_small_run_writes_outputs", "test_cluster.py::test_batch_variant",
              "test_cluster.py::test_louvain", "test_gsrcl.py::test_bf16_selects_as_f32")


# Modules whose tests share an expensive module fixture: pytest-xdist sends each of them to one
# worker whole, so that the fixture is built once.  (xdist's own --dist loadgroup marks do not
# take effect with pytest 9.2, which no longer reads the node id xdist rewrites.)
SHARED_FIXTURE_MODULES = ("test_bad_input.py", "test_model_api.py", "test_gsrcl_annotate.py", "test_multihost.py",
                          "test_store.py", "test_stream.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With ``-n`` (``--dist load``): xdist's load scheduling, except that the tests of each module
    of :data:`SHARED_FIXTURE_MODULES` make one unit of work; units go out largest first."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if os.path.basename(path) in SHARED_FIXTURE_MODULES else nodeid

    return SharedFixtureModulesTogether(config, log)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, key in enumerate(SLOW_FIRST) if key in item.nodeid), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the other tests keep their order


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def shared_file(name: str) -> str:
    """Path of a file in ../shared/data, or skip the test with the reason."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"real data {path} is absent (only developer machines and CI have ../shared/data)")
    return path


def synthetic_counts(n_cells: int = 240, n_genes: int = 120, n_groups: int = 3, *, seed: int = 0,
                     n_batches: int = 0, batch_effect: float = 0.0):
    """Negative-binomial counts with ``n_groups`` groups of distinct gene programmes.

    Returns (counts int64 (n, g), group labels (n,), batch labels (n,) or None).  With batches,
    ``batch_effect`` multiplies a random half of the genes by ``exp(+-batch_effect)`` per batch.
    """
    rng = np.random.default_rng(seed)
    groups = np.arange(n_cells) % n_groups
    base = rng.gamma(2.0, 1.0, size=n_genes)
    prog = np.exp(rng.normal(0.0, 1.5, size=(n_groups, n_genes)) * (rng.random((n_groups, n_genes)) < 0.3))
    mu = base[None, :] * prog[groups] * rng.lognormal(0.0, 0.3, size=(n_cells, 1))
    batches = None
    if n_batches:
        batches = rng.permutation(np.arange(n_cells) % n_batches)
        scale = np.exp(batch_effect * rng.choice([-1.0, 1.0], size=(n_batches, n_genes))
                       * (rng.random((n_batches, n_genes)) < 0.5))
        mu = mu * scale[batches]
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, mu / theta))
    counts[rng.random(counts.shape) < 0.1] = 0
    return counts.astype(np.int64), groups, batches


@pytest.fixture
def counts_small():
    return synthetic_counts()


def flip_byte(path) -> None:
    """Change one byte in the middle of ``path`` (same size, other content)."""
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        byte = fh.read(1)[0]
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte ^ 0xFF]))


def largest_file(folder) -> str:
    """The largest file under ``folder`` (in an orbax checkpoint: the arrays)."""
    return max((os.path.join(d, n) for d, _, names in os.walk(folder) for n in names), key=os.path.getsize)


class _Touch:
    """Unpickling this creates the file ``marker`` (a stand-in for code a crafted pickle runs)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_pickle(marker) -> bytes:
    """A pickle whose unpickling creates the file ``marker``."""
    import pickle

    return pickle.dumps(_Touch(marker))


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a subprocess with ``devices`` forced CPU devices (and the suite's flags)."""
    flag = "--xla_force_host_platform_device_count="
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(flag)]
    return " ".join([*kept, f"{flag}{devices}"])


def need_devices(n: int):
    """Skip unless this process has ``n`` devices (the suite forces 4 CPU devices; a session on
    one accelerator may have fewer)."""
    if jax.device_count() < n:
        pytest.skip(f"needs {n} devices in the test process, this one has {jax.device_count()} "
                    f"(JAX_PLATFORMS=cpu gives the suite's {DEVICES} CPU devices)")


def run_module(argv: list[str], capfd=None, cwd=None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m MODULE ARGS``, given as ``["-m", MODULE, *ARGS]``,
    run in this process (its ``main`` through :func:`scdc_jax.errors.run_cli`, as ``python -m``
    does) from ``cwd`` (default: the repository root); ``capfd`` is the test's fixture of that name
    (without it, as in a module fixture, the outputs are left to pytest and returned empty).
    Much faster than a subprocess, which first imports jax, scanpy and the package again."""
    import importlib

    from scdc_jax.errors import run_cli

    assert argv[0] == "-m", argv
    main = importlib.import_module(argv[1] + ".__main__").main
    if capfd is not None:
        capfd.readouterr()
    old = os.getcwd()
    os.chdir(cwd or ROOT)
    try:
        with pytest.raises(SystemExit) as exc:
            run_cli(main, [str(a) for a in argv[2:]])
    finally:
        os.chdir(old)
    out, err = capfd.readouterr() if capfd is not None else ("", "")
    return exc.value.code, out, err
