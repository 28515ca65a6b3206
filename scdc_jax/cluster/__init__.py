"""scDeepCluster: ZINB autoencoder + deep embedded clustering (``python -m scdc_jax.cluster``).

The public names are imported lazily so that the command line answers ``--help`` and bad input
without loading JAX.
"""
from importlib import import_module

_EXPORTS = {"fit": "api", "write_to_adata": "api", "ClusterConfig": "config", "load_config": "config",
            "ClusterResult": "pipeline", "run": "pipeline", "predict": "inference", "SCDeepCluster": "model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
