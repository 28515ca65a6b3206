"""Several processes (hosts) as one JAX program, with JAX's own multi-controller runtime.

Every process runs the same command; :func:`initialize` joins them through
``jax.distributed.initialize`` (a coordinator at ``HOST:PORT``, the number of processes and this
process's index, given or detected by JAX on Slurm and other clusters it knows).  Afterwards
``jax.devices()`` lists the devices of all processes, a mesh over them is one global mesh, and
every jitted step is one program run by all processes together (XLA inserts the collectives;
on CPUs they go through gloo).

What the processes share and what only one does:

* from an .h5ad, .zarr or .h5 file, each scDeepCluster process reads only its share: its blocks
  in the preparation's passes (the sums, totals and statistics then added up across processes
  with :func:`gather`, bad counts reported by every process through :func:`agree`), then its
  devices' rows of the cells, held for the run or, streamed (``--stream``), of every block
  (global arrays sharded by rows, built from the process-local rows); other inputs are read
  whole by every process and held replicated;
* every process draws the same keys and takes part in every compiled step and every checkpoint
  save (orbax writes each array once);
* the first process (:func:`is_primary`) alone writes outputs, manifests and the run folder's
  fingerprint, prints progress, and moves a finished ``--overwrite`` run in place; the others
  wait at a :func:`barrier` where one process's files must exist before another reads them.

Arrays come back to the host with :func:`scdc_jax.checkpoint.to_host`, which also reads global
arrays.  Nothing here imports the pipelines (nor JAX at import time, for the command lines' ``--help``);
with one process every helper is a no-op.
"""
from __future__ import annotations

import os

from .errors import InputError, option

# variables by which JAX's cluster detection (Slurm, Open MPI, Kubernetes jobsets...) recognises
# a multi-process launch; a single-process job under Slurm (SLURM_NTASKS=1) is not one
_CLUSTER_TASKS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _launched_by_cluster() -> bool:
    for var in _CLUSTER_TASKS:
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


DISTRIBUTED_HELP = ("one run over several processes (hosts), each started with the same command: "
                    "--coordinator HOST:PORT of process 0, --num-processes N and this process's --process-id; "
                    "on Slurm (srun, one task per host) JAX finds all three itself. Every process reads the "
                    "input (scDeepCluster on an .h5ad, .zarr or .h5 file: only its share of the cells, held in "
                    "memory split over the devices or streamed); the first writes the outputs")


def add_distributed_arguments(parser, note: str = "") -> None:
    """The three flags of a multi-process run, as their own group of ``parser`` (``note``: a
    sentence on what the command's processes do, added to the group's description)."""
    g = parser.add_argument_group("several processes", DISTRIBUTED_HELP + (f". {note}" if note else ""))
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the run")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 .. N-1")


def check_args(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """One sentence (InputError) for flags that cannot start a multi-process run; no JAX work."""
    given = [a is not None for a in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise InputError(f"{option('coordinator')}, {option('num_processes')} and {option('process_id')} go "
                         "together: give all three (the same coordinator and count to every process), or none "
                         "on a cluster JAX detects (Slurm).")
    if not any(given):
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{option('coordinator', coordinator)} must be HOST:PORT, e.g. node01:12355.")
    if num_processes < 1:
        raise InputError(f"{option('num_processes', num_processes)} must be at least 1.")
    if not 0 <= process_id < num_processes:
        raise InputError(f"{option('process_id', process_id)} must be between 0 and {num_processes - 1} "
                         f"for {num_processes} processes.")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300) -> int:
    """Join this process to a multi-process run; returns the number of processes (1: nothing done).

    Without arguments it joins only when a cluster launcher started several tasks (JAX detects
    the coordinator and this task's index itself, e.g. on Slurm).  Must run before any JAX
    computation.  On CPUs the cross-process collectives use gloo.
    """
    check_args(coordinator, num_processes, process_id)
    import jax

    if coordinator is None and not _launched_by_cluster():
        return 1
    if jax.distributed.is_initialized():
        return jax.process_count()
    if num_processes == 1:
        return 1
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # a JAX without the option: CPU runs keep one process's devices
        pass
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not join the multi-process run at {coordinator or 'the detected coordinator'} "
                         f"({first}); start every process with the same {option('coordinator')} and "
                         f"{option('num_processes')}, each with its own {option('process_id')}.") from None
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the outputs (the first one; always true with one process)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ---- host values shared between processes (the streamed preprocessing's sums) -----------------

def my_share(items: list) -> list:
    """This process's items of ``items`` (every ``process_count``-th, from its index; all of them
    with one process): how the passes of a streamed preparation divide a file's blocks."""
    import jax

    return list(items)[jax.process_index()::jax.process_count()]


def gather(a) -> "np.ndarray":
    """``a`` (a NumPy array of the same shape and dtype on every process) from every process,
    stacked in process order (1, ...) with one process.  Exact: floating-point values travel as
    their bits (JAX without x64 would round float64)."""
    import jax
    import numpy as np

    a = np.ascontiguousarray(a)
    if jax.process_count() == 1:
        return a[None]
    from jax.experimental import multihost_utils

    bits = a.reshape(-1).view(np.uint8)
    got = np.asarray(multihost_utils.process_allgather(bits))  # (processes, nbytes)
    return np.ascontiguousarray(got).view(a.dtype).reshape((jax.process_count(),) + a.shape)


def sum_over_processes(a) -> "np.ndarray":
    """The element-wise sum of ``a`` over the processes, added in process order (``a`` itself with one)."""
    parts = gather(a)
    total = parts[0].copy()
    for p in parts[1:]:
        total = total + p
    return total


def agree(fn):
    """``fn()`` on every process, and the same outcome on all: when it raises
    :class:`~scdc_jax.errors.InputError` on some process (bad counts in that process's share of a
    file), every process raises it, with the first such process's sentence, instead of the others
    waiting at the next collective."""
    import jax
    import numpy as np

    try:
        result, message = fn(), b""
    except InputError as exc:
        if jax.process_count() == 1:
            raise
        result, message = None, (str(exc) or "bad input").encode()[:4000]
    if jax.process_count() == 1:
        return result
    box = np.zeros(4001, np.uint8)
    box[0] = bool(message)
    box[1:1 + len(message)] = np.frombuffer(message, np.uint8)
    for row in gather(box):
        if row[0]:
            raise InputError(bytes(row[1:]).rstrip(b"\0").decode(errors="replace"))
    return result
