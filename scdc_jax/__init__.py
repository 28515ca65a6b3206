"""scdc_jax: accelerator-native scDeepCluster and GsRCL in JAX/Flax."""
__version__ = "0.1.0"
