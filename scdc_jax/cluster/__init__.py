"""scDeepCluster: ZINB autoencoder + deep embedded clustering (``python -m scdc_jax.cluster``)."""
from .api import fit, write_to_adata
from .config import ClusterConfig, load_config
from .pipeline import ClusterResult, run

__all__ = ["ClusterConfig", "ClusterResult", "fit", "load_config", "run", "write_to_adata"]
