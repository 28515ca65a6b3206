"""Device meshes for data parallelism: parameters replicated, batches split on the "data" axis."""
from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from .errors import InputError, option


def check_devices(n_devices: int) -> list:
    """The first ``n_devices`` devices; InputError when fewer are available (checked before any
    work, without building a mesh)."""
    available = jax.devices()
    if n_devices < 1:
        raise InputError(f"{option('devices')} must be at least 1, got {n_devices}.")
    if jax.process_count() > 1 and n_devices != len(available):
        raise InputError(f"{option('devices', n_devices)} asked for, but in a run of {jax.process_count()} "
                         f"processes every one of the {len(available)} devices takes part; leave "
                         f"{option('devices')} out (or give {len(available)}).")
    if n_devices > len(available):
        kind = available[0].platform.upper()
        raise InputError(f"{option('devices', n_devices)} asked for, but only {len(available)} {kind} device(s) are "
                         "available; use fewer (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                         "simulates N devices).")
    return available[:n_devices]


def make_mesh(n_devices: int) -> jax.sharding.Mesh:
    """A 1-D mesh of the first ``n_devices`` devices with an Auto "data" axis (InputError when
    more are asked for than this machine has)."""
    return jax.make_mesh((n_devices,), ("data",), axis_types=(AxisType.Auto,), devices=check_devices(n_devices))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
    """Split the leading (batch) axis over the mesh's "data" axis."""
    return NamedSharding(mesh, P("data"))


def padded_size(n: int, n_devices: int) -> int:
    """Smallest multiple of ``n_devices`` that holds ``n`` rows."""
    return -(-n // n_devices) * n_devices


def process_rows(sharding: NamedSharding, n_rows: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of an ``(n_rows, ...)`` array split by rows with ``sharding`` that
    this process's devices hold, as one span covering them all."""
    idx = sharding.addressable_devices_indices_map((n_rows,)).values()
    lo = min(s[0].start or 0 for s in idx)
    hi = max(n_rows if s[0].stop is None else s[0].stop for s in idx)
    return lo, hi


def put_process_rows(local, lo: int, n_rows: int, sharding: NamedSharding) -> jax.Array:
    """The global ``(n_rows, ...)`` array split by rows with ``sharding``, built from this process's
    rows ``local`` (rows ``lo ..`` of the whole, covering :func:`process_rows`): each of its
    devices gets its own rows, and no process needs the others' rows."""
    shape = (n_rows,) + tuple(local.shape[1:])
    shards = []
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        a = (index[0].start or 0) - lo
        b = (n_rows if index[0].stop is None else index[0].stop) - lo
        shards.append(jax.device_put(local[a:b], device))
    return jax.make_array_from_single_device_arrays(shape, sharding, shards)


def put_local_copies(x, sharding: NamedSharding) -> jax.Array:
    """``x`` (the same on every process) as a global array replicated with ``sharding``, built from
    this process's copies alone: unlike ``jax.device_put`` onto a mesh of several processes, no
    step is taken with the other processes (so it may run on a background thread)."""
    shards = [jax.device_put(x, d) for d in sharding.addressable_devices]
    return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)
