"""Where a scdc_jax pretraining epoch spends its time: timing variants of the loss, the noise and the PRNG.

A diagnostic, not product code: it swaps functions inside scdc_jax.cluster.train (restored after
each compile) and times the variants alternately.  python benchmarks/profile_pretrain.py ROUNDS
"""
import argparse
import os
import statistics
import sys
import time
from functools import partial

VARIANTS = ["baseline", "autodiff_zinb", "no_lgamma", "no_noise", "rbg", "unsafe_rbg", "uniform_noise", "mse_only",
            "no_noise_mse"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'mouse_bladder_cell_select_2100.h5')
ap = argparse.ArgumentParser(description="Time a pretraining epoch's variants (loss, noise, PRNG) against the "
                             "product's, alternately, on the bladder file (2100 cells, 2000 genes).")
ap.add_argument("rounds", nargs="?", type=int, default=5, help="timed epochs per variant (default 5)")
ap.add_argument("variants", nargs="?", default=",".join(VARIANTS),
                help=f"comma-separated, 'baseline' always included (default: all: {','.join(VARIANTS)})")
args = ap.parse_args()
variants = ["baseline"] + [v for v in args.variants.split(",") if v != "baseline"]
unknown = sorted(set(variants) - set(VARIANTS))
if unknown or args.rounds < 1:
    ap.error(f"unknown variants {unknown}" if unknown else "rounds must be 1 or more")
if not os.path.isfile(DATA):
    sys.exit(f"needs {DATA} (the shared data folder beside the repository)")
sys.path.insert(0, ROOT)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scdc_jax.cluster import train
from scdc_jax.cluster.config import ClusterConfig
from scdc_jax.io import read_counts
from scdc_jax.preprocess import prepare
from scdc_jax.optim import amsgrad_torch
from scdc_jax import losses

prep = prepare(read_counts(DATA), select_genes_n=2000)
n, g = prep.shape
cfg = ClusterConfig()
graphdef, state = train.build_model(cfg, g, 0)
data = train.device_data(prep)
tx = amsgrad_torch()

orig_zinb = train.zinb_nll_logits
orig_noisy = train._noisy_zinb

def zinb_autodiff(x, a, b, l, scale_factor, *, ridge_lambda=0.0, mask=None, include_constant=True):
    # the loss of the activations, differentiated by autodiff (before the hand-written gradient)
    return losses.zinb_nll(x, losses.zinb_mean(a), losses.zinb_dispersion(b), l, scale_factor,
                           ridge_lambda=ridge_lambda, mask=mask, include_constant=include_constant)

def zinb_no_lgamma(x, a, b, pi_logit, scale_factor, *, ridge_lambda=0.0, mask=None, include_constant=True):
    mean, disp = losses.zinb_mean(a), losses.zinb_dispersion(b)
    mu = mean * scale_factor[:, None]
    log_theta = jnp.log(disp + 1e-10)
    t2 = (disp + x) * jnp.log1p(mu / (disp + 1e-10)) + x * (log_theta - jnp.log(mu + 1e-10))
    log_pi = jax.nn.log_sigmoid(pi_logit); log_1mpi = jax.nn.log_sigmoid(-pi_logit)
    nb = t2 - log_1mpi
    zero = -jnp.logaddexp(log_pi, log_1mpi + disp * (log_theta - jnp.log(disp + mu + 1e-10)))
    el = jnp.where(x <= 1e-8, zero, nb)
    return losses.masked_mean(el.mean(1), mask)

def mse_loss(x, a, b, pi_logit, scale_factor, *, ridge_lambda=0.0, mask=None, include_constant=True):
    el = (losses.zinb_mean(a) * scale_factor[:, None] - x) ** 2 + b + pi_logit
    return losses.masked_mean(el.mean(1), mask)

def noisy_without_noise(model, batch, key, sigma, ridge):
    z = model.encode(batch["x"], batch["b"])
    return train.zinb_nll_logits(batch["raw"], *model.decode_logits(z, batch["b"]), batch["sf"], ridge_lambda=ridge,
                                 mask=batch["mask"], include_constant=False)

def noisy_uniform_noise(model, batch, key, sigma, ridge):
    # cheaper noise: uniform bits (not Gaussian; timing only)
    x = batch["x"]
    z = model.encode(x + sigma * jax.random.uniform(key, x.shape, x.dtype), batch["b"])
    return train.zinb_nll_logits(batch["raw"], *model.decode_logits(z, batch["b"]), batch["sf"], ridge_lambda=ridge,
                                 mask=batch["mask"], include_constant=False)

def make(variant):
    train.zinb_nll_logits = {"autodiff_zinb": zinb_autodiff, "no_lgamma": zinb_no_lgamma,
                             "mse_only": mse_loss}.get(variant, orig_zinb)
    train._noisy_zinb = {"no_noise": noisy_without_noise, "uniform_noise": noisy_uniform_noise,
                         "no_noise_mse": noisy_without_noise}.get(variant, orig_noisy)
    if variant == "no_noise_mse":
        train.zinb_nll_logits = mse_loss
    ep = train.make_epoch(partial(train.pretrain_loss, graphdef=graphdef, sigma=2.5), tx, n=n, batch_size=256,
                          shuffle=True)
    st = {"s": None}
    params = jax.tree.map(jnp.array, state)
    st["s"] = [params, tx.init(params)]
    rbg = variant in ("rbg", "unsafe_rbg")
    impl = variant if rbg else None
    def run(i):
        key = jax.random.key(i, impl=impl) if rbg else train.stage_key(0, 1, i)
        p, o, l = ep(*st["s"], data, key)
        jax.block_until_ready(l)
        st["s"] = [p, o]
    run(0)  # compile
    train.zinb_nll_logits, train._noisy_zinb = orig_zinb, orig_noisy
    return run

runs = {v: make(v) for v in variants}
R = args.rounds
times = {v: [] for v in variants}
for r in range(R):
    for v in variants:
        t0 = time.perf_counter(); runs[v](r + 1); times[v].append(time.perf_counter() - t0)
base = statistics.median(times["baseline"])
for v in variants:
    m = statistics.median(times[v])
    print(f"{v:14s} median {m:.3f} s  ({m / base:.2f} of baseline)  rounds {[round(t, 3) for t in times[v]]}")
