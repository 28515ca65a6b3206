"""PyTorch baseline of scDeepCluster, written from REFERENCE.md (not from the reference code).

It is the comparison point for scdc_jax's speed and a cross-check of its maths: the same network
(``G -> 256 -> 64 -> 32``, decoder ``32 -> 64 -> 256`` and three ``256 -> G`` heads), the same
initialisation, the reference's ZINB formula written literally (probabilities, eps = 1e-10), the
DEC Student-t / target / KL, Adam(amsgrad=True) pretraining and Adadelta clustering, in the
usual eager PyTorch style: one Python step per minibatch.

Run the whole method::

    python benchmarks/baselines/torch_scdeepcluster.py --data-file ../shared/data/mouse_bladder_cell_select_2100.h5 \\
        --select-genes 2000 --n-clusters 16 --pretrain-epochs 300 --dtype float64

Preprocessing is scdc_jax's (``scdc_jax.preprocess.prepare``), so both frameworks see the same
arrays; only the model, the loss and the training loops are PyTorch here.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

EPS = 1e-10


# ---------------------------------------------------------------- network

def _linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.uniform_(layer.bias, -bound, bound)
    return layer


class ZINBAutoencoder(nn.Module):
    """Encoder ``G -> 256 -> 64 -> 32`` (ReLU, linear latent), decoder ``32 -> 64 -> 256`` (ReLU),
    heads mean ``clip(exp)``, dispersion ``clip(softplus)``, dropout ``sigmoid`` (each ``256 -> G``)."""

    def __init__(self, n_genes: int, encoder=(256, 64), latent: int = 32, decoder=(64, 256)):
        super().__init__()
        enc = [n_genes, *encoder]
        self.enc = nn.ModuleList([_linear(a, b) for a, b in zip(enc[:-1], enc[1:])])
        self.latent = _linear(enc[-1], latent)
        dec = [latent, *decoder]
        self.dec = nn.ModuleList([_linear(a, b) for a, b in zip(dec[:-1], dec[1:])])
        self.mean_head = _linear(dec[-1], n_genes)
        self.disp_head = _linear(dec[-1], n_genes)
        self.pi_head = _linear(dec[-1], n_genes)

    def encode(self, x):
        h = x
        for layer in self.enc:
            h = torch.relu(layer(h))
        return self.latent(h)

    def decode(self, z):
        h = z
        for layer in self.dec:
            h = torch.relu(layer(h))
        mean = torch.clamp(torch.exp(self.mean_head(h)), 1e-5, 1e6)
        disp = torch.clamp(nn.functional.softplus(self.disp_head(h)), 1e-4, 1e4)
        pi = torch.sigmoid(self.pi_head(h))
        return mean, disp, pi

    def forward(self, x, noise):
        """Denoising path on ``x + noise`` -> (mean, disp, pi); clean pass -> z0."""
        mean, disp, pi = self.decode(self.encode(x + noise))
        return self.encode(x), mean, disp, pi


def build_model(n_genes: int, *, dtype=torch.float32, device="cpu", seed: int = 0) -> ZINBAutoencoder:
    torch.manual_seed(seed)
    return ZINBAutoencoder(n_genes).to(device=device, dtype=dtype)


def dense(a) -> np.ndarray:
    """A host array of ``a``, densifying a SciPy sparse matrix (this baseline holds dense counts)."""
    return a.toarray() if hasattr(a, "toarray") else np.asarray(a)


def _np(a):
    return np.asarray(a)


def copy_from_jax(model: ZINBAutoencoder, state) -> ZINBAutoencoder:
    """Load the weights of a scdc_jax ``ZINBAutoencoder`` state (nnx kernels are (in, out))."""
    from flax import nnx

    d = nnx.to_pure_dict(state)
    pairs = [(model.enc[i], d["enc"][i]) for i in range(len(model.enc))]
    pairs += [(model.dec[i], d["dec"][i]) for i in range(len(model.dec))]
    pairs += [(getattr(model, k), d[k]) for k in ("latent", "mean_head", "disp_head", "pi_head")]
    ref = next(model.parameters())
    with torch.no_grad():
        for layer, p in pairs:
            layer.weight.copy_(torch.as_tensor(_np(p["kernel"]).T.copy(), dtype=ref.dtype))
            layer.bias.copy_(torch.as_tensor(_np(p["bias"]).copy(), dtype=ref.dtype))
    return model


# ---------------------------------------------------------------- losses

def zinb_loss(x, mean, disp, pi, sf):
    """Mean ZINB NLL over the batch, the reference formula literally (``mu = mean * s``)."""
    mu = mean * sf[:, None]
    t1 = torch.lgamma(disp + EPS) + torch.lgamma(x + 1.0) - torch.lgamma(x + disp + EPS)
    t2 = (disp + x) * torch.log(1.0 + mu / (disp + EPS)) + x * (torch.log(disp + EPS) - torch.log(mu + EPS))
    nb_case = t1 + t2 - torch.log(1.0 - pi + EPS)
    zero_nb = torch.pow(disp / (disp + mu + EPS), disp)
    zero_case = -torch.log(pi + (1.0 - pi) * zero_nb + EPS)
    return torch.where(x <= 1e-8, zero_case, nb_case).mean()


def soft_assign(z, mu, alpha: float = 1.0):
    """Student-t q (n, k), rows summing to 1."""
    q = 1.0 / (1.0 + torch.sum((z[:, None, :] - mu[None, :, :]) ** 2, dim=2) / alpha)
    q = q ** ((alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


def target_distribution(q):
    w = q ** 2 / q.sum(0)
    return w / w.sum(1, keepdim=True)


def kl_loss(p, q):
    """KL(P || Q) summed over clusters, mean over rows; p = 0 contributes 0."""
    return torch.mean(torch.sum(torch.xlogy(p, p) - p * torch.log(q), dim=1))


# ---------------------------------------------------------------- training steps and epochs

def pretrain_step(model, opt, xb, rb, sb, noise):
    """One AMSGrad step on the ZINB loss of the denoising path; returns the loss."""
    opt.zero_grad(set_to_none=True)
    mean, disp, pi = model.decode(model.encode(xb + noise))
    loss = zinb_loss(rb, mean, disp, pi, sb)
    loss.backward()
    opt.step()
    return loss.detach()


def cluster_step(model, mu, opt, xb, rb, sb, pb, noise, gamma: float = 1.0):
    """One Adadelta step on ``gamma * KL(p || q(z0)) + ZINB``; returns (loss, kl, zinb)."""
    opt.zero_grad(set_to_none=True)
    z0, mean, disp, pi = model(xb, noise)
    zinb = zinb_loss(rb, mean, disp, pi, sb)
    kl = kl_loss(pb, soft_assign(z0, mu))
    loss = gamma * kl + zinb
    loss.backward()
    opt.step()
    return loss.detach(), kl.detach(), zinb.detach()


def pretrain_optimizer(model, lr: float = 1e-3):
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, amsgrad=True)


def cluster_optimizer(model, mu, lr: float = 1.0):
    return torch.optim.Adadelta([*model.parameters(), mu], lr=lr, rho=0.95, eps=1e-6)


def _gen_device(generator: torch.Generator | None):
    """Draw on the generator's own device: a CUDA generator keeps the noise on the GPU."""
    return "cpu" if generator is None else generator.device


def pretrain_epoch(model, opt, x, raw, sf, *, batch_size: int = 256, sigma: float = 2.5,
                   generator: torch.Generator | None = None) -> float:
    """One shuffled pass (the last partial batch kept as a step); returns the mean loss per cell.

    The clean encoder pass is skipped here: pretraining never uses z0, so computing it would
    only slow the baseline down.
    """
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator, device=_gen_device(generator)).to(x.device)
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        xb = x[idx]
        noise = sigma * torch.randn(xb.shape, generator=generator, dtype=xb.dtype, device=_gen_device(generator)).to(x.device)
        total += pretrain_step(model, opt, xb, raw[idx], sf[idx], noise) * len(idx)
    return float(total) / n


def cluster_epoch(model, mu, opt, x, raw, sf, p, *, batch_size: int = 256, sigma: float = 2.5,
                  gamma: float = 1.0, generator: torch.Generator | None = None) -> float:
    """One in-order pass minimising ``gamma * KL + ZINB``; returns the mean loss per cell."""
    n = x.shape[0]
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        xb = x[sl]
        noise = sigma * torch.randn(xb.shape, generator=generator, dtype=xb.dtype, device=_gen_device(generator)).to(x.device)
        loss, _, _ = cluster_step(model, mu, opt, xb, raw[sl], sf[sl], p[sl], noise, gamma)
        total += loss * xb.shape[0]
    return float(total) / n


@torch.no_grad()
def encode_all(model, x, chunk: int = 4096):
    return torch.cat([model.encode(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


# ---------------------------------------------------------------- the whole method

def fit(x, raw, sf, *, n_clusters: int, pretrain_epochs: int = 300, maxiter: int = 2000,
        tol: float = 1e-3, batch_size: int = 256, sigma: float = 2.5, gamma: float = 1.0,
        dtype=torch.float32, device="cpu", seed: int = 0, labels=None, verbose: bool = True,
        knn: int = 20, resolution: float = 0.8):
    """Pretrain, initial clusters on z0, then DEC clustering; returns (labels, z0).

    ``n_clusters > 0``: k-means with 20 restarts; ``0``: Louvain at ``resolution`` on the
    ``knn``-NN graph (scdc_jax's community detection, so both implementations share it).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    gen = torch.Generator(device=device).manual_seed(seed)
    to = dict(dtype=dtype, device=device)
    x_t, raw_t, sf_t = (torch.as_tensor(dense(a), **to) for a in (x, raw, sf))
    model = build_model(x_t.shape[1], dtype=dtype, device=device, seed=seed)

    opt = pretrain_optimizer(model)
    t0 = time.perf_counter()
    for ep in range(pretrain_epochs):
        loss = pretrain_epoch(model, opt, x_t, raw_t, sf_t, batch_size=batch_size, sigma=sigma, generator=gen)
        if verbose and (ep % 25 == 0 or ep == pretrain_epochs - 1):
            print(f"pretrain epoch {ep + 1}: ZINB {loss:.5f}", flush=True)
    if verbose:
        print(f"pretraining {time.perf_counter() - t0:.1f} s", flush=True)

    z0 = encode_all(model, x_t).cpu().double().numpy()
    if n_clusters > 0:
        km = KMeans(n_clusters, n_init=20, random_state=seed).fit(z0)
        centres, pred_last = km.cluster_centers_, km.labels_
    else:
        from scdc_jax.cluster.init import centres_of, community_labels

        pred_last = community_labels(z0.astype(np.float32), knn=knn, resolution=resolution, seed=seed)
        centres = centres_of(z0, pred_last)
    mu = nn.Parameter(torch.as_tensor(centres, **to))
    opt = cluster_optimizer(model, mu)
    for ep in range(maxiter):
        with torch.no_grad():
            q = soft_assign(encode_all(model, x_t), mu)
            p = target_distribution(q)
        pred = q.argmax(1).cpu().numpy()
        if verbose and labels is not None:
            print(f"cluster epoch {ep}: ARI {adjusted_rand_score(labels, pred):.4f} "
                  f"NMI {normalized_mutual_info_score(labels, pred):.4f}", flush=True)
        delta = float(np.mean(pred != pred_last))
        pred_last = pred
        if ep > 0 and delta < tol:
            break
        cluster_epoch(model, mu, opt, x_t, raw_t, sf_t, p, batch_size=batch_size, sigma=sigma,
                      gamma=gamma, generator=gen)
    return pred_last, encode_all(model, x_t).cpu().numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-file", required=True)
    ap.add_argument("--select-genes", type=int, default=0)
    ap.add_argument("--n-clusters", type=int, required=True)
    ap.add_argument("--pretrain-epochs", type=int, default=300)
    ap.add_argument("--maxiter", type=int, default=2000)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--sigma", type=float, default=2.5)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args(argv)

    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from scdc_jax.io import read_counts
    from scdc_jax.preprocess import prepare

    prep = prepare(read_counts(args.data_file), select_genes_n=args.select_genes)
    labels = prep.data.labels
    t0 = time.perf_counter()
    pred, _ = fit(prep.x, prep.raw, prep.size_factors, n_clusters=args.n_clusters,
                  pretrain_epochs=args.pretrain_epochs, maxiter=args.maxiter, tol=args.tol,
                  batch_size=args.batch_size, sigma=args.sigma, gamma=args.gamma,
                  dtype=getattr(torch, args.dtype), device=args.device, seed=args.seed, labels=labels)
    print(f"total {time.perf_counter() - t0:.1f} s")
    if labels is not None:
        print(f"ARI {adjusted_rand_score(labels, pred):.4f} NMI {normalized_mutual_info_score(labels, pred):.4f}")


if __name__ == "__main__":
    import os
    import sys

    # Run as a script from anywhere: make the repository root (for scdc_jax) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()
