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
