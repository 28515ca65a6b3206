"""Flax (nnx) networks: the scDeepCluster ZINB autoencoder and the building blocks they share."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .losses import zinb_dispersion, zinb_mean


def init_split(cls, key, **sizes):
    """``nnx.split(cls(**sizes, rngs=nnx.Rngs(params=key)))``, the weights drawn in one compiled
    program (compiled once per class and sizes in a process) instead of one small program per
    weight shape, which costs a small run seconds; the values are the same.  ``sizes`` must be
    hashable (ints, tuples, dtypes)."""
    spec = (cls, tuple(sorted(sizes.items())))
    state = _init_state(*spec, key)
    return _GRAPHDEFS[spec], state


_GRAPHDEFS: dict = {}  # (class, sizes) -> graphdef, recorded when _init_state traces


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_state(cls, sizes: tuple, key):
    graphdef, state = nnx.split(cls(**dict(sizes), rngs=nnx.Rngs(params=key)))
    _GRAPHDEFS[cls, sizes] = graphdef
    return state


def torch_uniform(fan_in: int):
    """PyTorch's default Linear initialisation: uniform(+-1/sqrt(fan_in)) for weights and biases."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(fan_in: int, fan_out: int, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
    """``nnx.Linear`` with PyTorch's initialisation; ``dtype`` is its computation type."""
    init = torch_uniform(fan_in)
    return nnx.Linear(fan_in, fan_out, kernel_init=init, bias_init=init, dtype=dtype, rngs=rngs)


class ZINBAutoencoder(nnx.Module):
    """ZINB denoising autoencoder of scDeepCluster, optionally conditioned on one-hot batches.

    Encoder ``G(+B) -> 256 -> 64 -> 32`` (ReLU, linear latent); decoder ``32(+B) -> 64 -> 256``
    (ReLU) and three heads ``256 -> G``: mean ``clip(exp, 1e-5, 1e6)``, dispersion
    ``clip(softplus, 1e-4, 1e4)`` and the dropout logit (``pi = sigmoid``).

    ``dtype`` is the computation type of the Dense layers (bfloat16 for mixed precision; None is
    float32).  The parameters stay float32, and what leaves the network is float32 whatever
    ``dtype`` is: the latent (so the soft assignments and the DEC KL are float32) and the three
    heads' logits (so the ZINB likelihood is evaluated in float32).
    """

    def __init__(self, n_genes: int, *, n_batches: int = 0, encoder: Sequence[int] = (256, 64),
                 latent: int = 32, decoder: Sequence[int] = (64, 256), dtype=None, rngs: nnx.Rngs):
        self.n_batches = n_batches
        enc = [n_genes + n_batches, *encoder]
        self.enc = nnx.List([torch_linear(a, b, rngs, dtype) for a, b in zip(enc[:-1], enc[1:])])
        self.latent = torch_linear(enc[-1], latent, rngs, dtype)
        dec = [latent + n_batches, *decoder]
        self.dec = nnx.List([torch_linear(a, b, rngs, dtype) for a, b in zip(dec[:-1], dec[1:])])
        self.mean_head = torch_linear(dec[-1], n_genes, rngs, dtype)
        self.disp_head = torch_linear(dec[-1], n_genes, rngs, dtype)
        self.pi_head = torch_linear(dec[-1], n_genes, rngs, dtype)

    def _cat(self, h, b):
        return h if b is None or self.n_batches == 0 else jnp.concatenate([h, b], axis=1)

    def encode(self, x, b=None):
        """(n, G) expression [+ (n, B) one-hot] -> (n, latent) float32."""
        h = self._cat(x, b)
        for layer in self.enc:
            h = jax.nn.relu(layer(h))
        return self.latent(h).astype(jnp.float32)

    def decode_logits(self, z, b=None):
        """(n, latent) [+ (n, B)] -> the three heads before their activations, each (n, G) float32."""
        h = self._cat(z, b)
        for layer in self.dec:
            h = jax.nn.relu(layer(h))
        return tuple(head(h).astype(jnp.float32) for head in (self.mean_head, self.disp_head, self.pi_head))

    def decode(self, z, b=None):
        """(n, latent) [+ (n, B)] -> (mean, dispersion, pi logit), each (n, G)."""
        mean_logit, disp_logit, pi_logit = self.decode_logits(z, b)
        return zinb_mean(mean_logit), zinb_dispersion(disp_logit), pi_logit

    def __call__(self, x, b=None):
        return self.decode(self.encode(x, b), b)


def normal_init(std: float = 0.02):
    return jax.nn.initializers.normal(stddev=std)


class MLP(nnx.Module):
    """Dense layers with ReLU between them (none after the last); optional BatchNorm after each
    hidden Dense.  Weights N(0, ``init_std``), biases 0 (GsRCL's initialisation)."""

    def __init__(self, sizes: Sequence[int], *, batch_norm: bool = False, init_std: float = 0.02,
                 dtype=None, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, kernel_init=normal_init(init_std), dtype=dtype, rngs=rngs)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.norms = nnx.List([nnx.BatchNorm(b, rngs=rngs) for b in sizes[1:-1]] if batch_norm else [])

    def __call__(self, x, mask=None):
        """``mask`` (n,) marks the rows that count in the BatchNorm statistics (default all)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                if len(self.norms):
                    x = self.norms[i](x, mask=None if mask is None else mask[:, None])
                x = jax.nn.relu(x)
        return x


class GsRCLNet(nnx.Module):
    """GsRCL encoder ``G -> 4096 -> 4096 -> 4096 -> 2048`` (representation h) and projection head
    ``2048 -> 512 -> 128``.  ``__call__`` returns (h, projection).

    ``dtype`` is the computation type of the Dense layers (e.g. bfloat16 for mixed precision);
    the parameters stay float32 and BatchNorm computes in float32.
    """

    def __init__(self, n_genes: int, *, encoder: Sequence[int] = (4096, 4096, 4096, 2048),
                 head: Sequence[int] = (512, 128), batch_norm: bool = False, dtype=None, rngs: nnx.Rngs):
        self.encoder = MLP([n_genes, *encoder], batch_norm=batch_norm, dtype=dtype, rngs=rngs)
        self.head = MLP([encoder[-1], *head], batch_norm=batch_norm, dtype=dtype, rngs=rngs)

    def __call__(self, x, mask=None):
        h = self.encoder(x, mask)
        return h, self.head(h, mask)
