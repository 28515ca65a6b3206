"""scdc_jax: accelerator-native scDeepCluster and GsRCL in JAX/Flax.

``scdc_jax.tl`` holds the scanpy-style functions, ``scdc_jax.datasets`` the bundled example data,
``scdc_jax.cluster`` and ``scdc_jax.gsrcl`` the two methods.  The subpackages are imported on
first use, so that ``import scdc_jax`` does not load JAX.
"""
from importlib import import_module

__version__ = "0.1.0"
_SUBMODULES = ("tl", "datasets", "cluster", "gsrcl")


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
