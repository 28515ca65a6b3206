"""GsRCL (Alsaggaf, Buchan & Wan 2023): Gaussian-noise contrastive representations for cell-type
identification, in JAX.  ``protocol.evaluate`` runs the paper's one-vs-rest evaluation;
``annotate.train_reference`` and ``annotate.annotate`` label new cells."""
from .config import GsRCLConfig, load_config

__all__ = ["GsRCLConfig", "load_config"]
