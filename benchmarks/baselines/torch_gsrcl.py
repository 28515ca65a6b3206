"""PyTorch baseline of GsRCL's contrastive training step, written from REFERENCE.md.

Encoder ``G -> 4096 -> 4096 -> 4096 -> 2048`` (ReLU between, linear output h), projection head
``2048 -> 512 -> 128``, weights N(0, 0.02) and zero biases (no BatchNorm: folds of at most 8192
cells).  One step: two views ``x + N(0, 1)``, NT-Xent (temperature 0.07, projections
L2-normalised, negatives from the whole batch, both directions summed), Adam lr 1e-4 with coupled
weight decay 1e-6.

Time a few steps::

    python benchmarks/baselines/torch_gsrcl.py --data-file ../shared/data/baron_mouse1.h5 --steps 3
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn


def _mlp(sizes) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, 0.0, 0.02)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GsRCLNet(nn.Module):
    def __init__(self, n_genes: int, encoder=(4096, 4096, 4096, 2048), head=(512, 128)):
        super().__init__()
        self.encoder = _mlp([n_genes, *encoder])
        self.head = _mlp([encoder[-1], *head])

    def forward(self, x):
        h = self.encoder(x)
        return h, self.head(h)


def build_model(n_genes: int, *, encoder=(4096, 4096, 4096, 2048), head=(512, 128),
                dtype=torch.float32, device="cpu", seed: int = 0) -> GsRCLNet:
    torch.manual_seed(seed)
    return GsRCLNet(n_genes, encoder, head).to(device=device, dtype=dtype)


def copy_from_jax(model: GsRCLNet, state) -> GsRCLNet:
    """Load the weights of a scdc_jax ``GsRCLNet`` state (nnx kernels are (in, out))."""
    from flax import nnx

    d = nnx.to_pure_dict(state)
    ref = next(model.parameters())
    with torch.no_grad():
        for part in ("encoder", "head"):
            linears = [m for m in getattr(model, part) if isinstance(m, nn.Linear)]
            for i, lin in enumerate(linears):
                p = d[part]["layers"][i]
                lin.weight.copy_(torch.as_tensor(np.asarray(p["kernel"]).T.copy(), dtype=ref.dtype))
                lin.bias.copy_(torch.as_tensor(np.asarray(p["bias"]).copy(), dtype=ref.dtype))
    return model


def ntxent(z1, z2, temperature: float = 0.07):
    """NT-Xent of two views, ``mean_i l(1->2) + mean_i l(2->1)`` (GsRCL sums the directions)."""
    z1 = nn.functional.normalize(z1, dim=1)
    z2 = nn.functional.normalize(z2, dim=1)
    n = z1.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z1.device)
    target = torch.arange(n, device=z1.device)

    def direction(a, b):
        s_aa = (a @ a.T / temperature).masked_fill(eye, float("-inf"))
        logits = torch.cat([a @ b.T / temperature, s_aa], dim=1)
        return nn.functional.cross_entropy(logits, target)

    return direction(z1, z2) + direction(z2, z1)


def make_optimizer(model, lr: float = 1e-4, weight_decay: float = 1e-6):
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def train_step(model, opt, x, noise1, noise2, temperature: float = 0.07):
    """One Adam step on NT-Xent of the views ``x + noise1`` and ``x + noise2``; returns the loss."""
    opt.zero_grad(set_to_none=True)
    _, p1 = model(x + noise1)
    _, p2 = model(x + noise2)
    loss = ntxent(p1, p2, temperature)
    loss.backward()
    opt.step()
    return loss.detach()


def random_step(model, opt, x, generator=None, temperature: float = 0.07):
    """A training step with fresh N(0, 1) views."""
    dev = "cpu" if generator is None else generator.device  # a CUDA generator draws on the GPU
    n1 = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)
    n2 = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)
    return train_step(model, opt, x, n1, n2, temperature)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-file", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args(argv)
    import h5py

    with h5py.File(args.data_file, "r") as fh:
        x = np.log1p(np.asarray(fh["X"], np.float64))
    dtype = getattr(torch, args.dtype)
    xt = torch.as_tensor(x, dtype=dtype, device=args.device)
    model = build_model(x.shape[1], dtype=dtype, device=args.device)
    opt = make_optimizer(model)
    gen = torch.Generator(device=args.device).manual_seed(0)
    for s in range(args.steps):
        t0 = time.perf_counter()
        loss = float(random_step(model, opt, xt, gen))
        print(f"step {s}: NT-Xent {loss:.4f} ({time.perf_counter() - t0:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
