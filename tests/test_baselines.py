"""scdc_jax against the PyTorch baselines: same weights, same batch, no noise (sigma 0 or the noise
passed in), so the losses and the parameters after a few optimiser steps must agree.  This also
checks that ``amsgrad_torch`` is ``torch.optim.Adam(amsgrad=True)``, ``adadelta_torch`` is
``torch.optim.Adadelta`` and ``adam_coupled_l2`` is ``torch.optim.Adam(weight_decay=...)``.
scDeepCluster runs in float32 on both sides (the project runs JAX without x64), GsRCL in
float64 (see that test)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from benchmarks.baselines import torch_gsrcl as tg  # noqa: E402
from benchmarks.baselines import torch_scdeepcluster as tsc  # noqa: E402
from scdc_jax import losses  # noqa: E402
from scdc_jax.cluster.config import ClusterConfig  # noqa: E402
from scdc_jax.cluster.train import build_model, cluster_loss, device_data, make_epoch, pretrain_loss  # noqa: E402
from scdc_jax.io import CountData  # noqa: E402
from scdc_jax.nn import GsRCLNet  # noqa: E402
from scdc_jax.optim import adadelta_torch, adam_coupled_l2, amsgrad_torch  # noqa: E402
from scdc_jax.preprocess import prepare  # noqa: E402

from conftest import synthetic_counts  # noqa: E402

N_CELLS, N_GENES, STEPS = 64, 50, 3


@pytest.fixture(scope="module")
def prepared():
    counts, _, _ = synthetic_counts(N_CELLS, N_GENES, 3, seed=1)
    return prepare(CountData(counts))


def _copy(tree):
    return jax.tree.map(jnp.array, tree)


def _t(a):
    return torch.as_tensor(np.array(a), dtype=torch.float32)


def assert_same_autoencoder(state, model, atol=1e-5):
    d = nnx.to_pure_dict(state)
    layers = [(model.enc[i], d["enc"][i]) for i in range(2)] + [(model.dec[i], d["dec"][i]) for i in range(2)]
    layers += [(getattr(model, k), d[k]) for k in ("latent", "mean_head", "disp_head", "pi_head")]
    for layer, p in layers:
        np.testing.assert_allclose(layer.weight.detach().numpy().T, np.asarray(p["kernel"]), rtol=1e-4, atol=atol)
        np.testing.assert_allclose(layer.bias.detach().numpy(), np.asarray(p["bias"]), rtol=1e-4, atol=atol)


def _models(prep):
    graphdef, state = build_model(ClusterConfig(), prep.shape[1], seed=0)
    model = tsc.copy_from_jax(tsc.build_model(prep.shape[1]), state)
    return graphdef, state, model


def test_zinb_loss_and_amsgrad_steps_match(prepared):
    graphdef, state, model = _models(prepared)
    x, raw, sf = _t(prepared.x), _t(prepared.raw), _t(prepared.size_factors)

    mean, disp, pi_logit = nnx.merge(graphdef, state)(jnp.asarray(prepared.x))
    jax_loss = losses.zinb_nll(jnp.asarray(prepared.raw), mean, disp, pi_logit, jnp.asarray(prepared.size_factors))
    with torch.no_grad():
        torch_loss = tsc.zinb_loss(raw, *model.decode(model.encode(x)), sf)
    np.testing.assert_allclose(float(jax_loss), float(torch_loss), rtol=1e-5)

    # One epoch of one full batch is one step; the permutation only reorders rows of a mean.
    tx = amsgrad_torch(1e-3)
    epoch = make_epoch(partial(pretrain_loss, graphdef=graphdef, sigma=0.0), tx, n=N_CELLS, batch_size=N_CELLS,
                       shuffle=True)
    data = device_data(prepared)
    params = _copy(state)
    opt_state = tx.init(params)
    opt = tsc.pretrain_optimizer(model)
    zero = torch.zeros_like(x)
    for step in range(STEPS):
        params, opt_state, means = epoch(params, opt_state, data, jax.random.key(step))
        jl = means["loss"]
        tl = tsc.pretrain_step(model, opt, x, raw, sf, zero)
        np.testing.assert_allclose(float(jl), float(tl), rtol=1e-5)
    assert_same_autoencoder(params, model)


def test_dec_cluster_loss_and_adadelta_steps_match(prepared):
    graphdef, state, model = _models(prepared)
    x, raw, sf = _t(prepared.x), _t(prepared.raw), _t(prepared.size_factors)
    ae = nnx.merge(graphdef, state)
    z0 = ae.encode(jnp.asarray(prepared.x))
    mu = z0[:4] + 0.1
    p = losses.target_distribution(losses.soft_assign(z0, mu))

    mu_t = torch.nn.Parameter(_t(mu))
    q_t = tsc.soft_assign(model.encode(x), mu_t)
    np.testing.assert_allclose(q_t.detach().numpy(), np.asarray(losses.soft_assign(z0, mu)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(tsc.kl_loss(_t(p), q_t).detach()),
                               float(losses.dec_kl(p, losses.log_soft_assign(z0, mu))), rtol=1e-4, atol=1e-7)

    tx = adadelta_torch()
    epoch = make_epoch(partial(cluster_loss, graphdef=graphdef, sigma=0.0, gamma=1.0), tx, n=N_CELLS,
                       batch_size=N_CELLS, shuffle=False)
    data = device_data(prepared)
    params = _copy({"ae": state, "mu": mu})
    opt_state = tx.init(params)
    opt = tsc.cluster_optimizer(model, mu_t)
    p_t, zero = _t(p), torch.zeros_like(x)
    for step in range(STEPS):
        params, opt_state, means = epoch(params, opt_state, data, jax.random.key(step), {"p": p})
        jl, jkl, jz = means["loss"], means["kl"], means["zinb"]
        tl, tkl, tz = tsc.cluster_step(model, mu_t, opt, x, raw, sf, p_t, zero)
        np.testing.assert_allclose([float(jl), float(jkl), float(jz)], [float(tl), float(tkl), float(tz)],
                                   rtol=1e-4, atol=1e-6)
    assert_same_autoencoder(params["ae"], model)
    np.testing.assert_allclose(mu_t.detach().numpy(), np.asarray(params["mu"]), rtol=1e-4, atol=1e-5)


def test_ntxent_and_coupled_adam_steps_match():
    # float64 on both sides: with N(0, 0.02) weights the first layers' gradients are near Adam's
    # eps (1e-8), where float32 rounding alone moves single updates by a visible fraction of lr.
    sizes = dict(encoder=(32, 32, 32, 16), head=(16, 8))
    n, g = 24, 30
    rng = np.random.default_rng(0)
    x = np.log1p(rng.poisson(2.0, (n, g)))
    noises = rng.normal(size=(STEPS, 2, n, g))
    with jax.enable_x64(True):
        graphdef, state = nnx.split(GsRCLNet(g, **sizes, rngs=nnx.Rngs(0)))
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
        net = tg.copy_from_jax(tg.build_model(g, **sizes, dtype=torch.float64), state)

        def loss_fn(params, x, n1, n2):
            m = nnx.merge(graphdef, params)
            return losses.ntxent(m(x + n1)[1], m(x + n2)[1], temperature=0.07)

        tx = adam_coupled_l2(1e-4, 1e-6)

        @jax.jit
        def step(params, opt_state, x, n1, n2):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, n1, n2)
            updates, opt_state = tx.update(grads, opt_state, params)
            return jax.tree.map(lambda p, u: p + u, params, updates), opt_state, loss

        t64 = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        with torch.no_grad():
            tl0 = tg.ntxent(net(t64(x + noises[0, 0]))[1], net(t64(x + noises[0, 1]))[1])
        np.testing.assert_allclose(float(loss_fn(state, x, noises[0, 0], noises[0, 1])), float(tl0), rtol=1e-10)

        params, opt_state = state, tx.init(state)
        opt = tg.make_optimizer(net)
        for s in range(STEPS):
            params, opt_state, jl = step(params, opt_state, x, noises[s, 0], noises[s, 1])
            tl = tg.train_step(net, opt, t64(x), t64(noises[s, 0]), t64(noises[s, 1]))
            np.testing.assert_allclose(float(jl), float(tl), rtol=1e-10)
        d = nnx.to_pure_dict(params)
    for part in ("encoder", "head"):
        linears = [m for m in getattr(net, part) if isinstance(m, torch.nn.Linear)]
        for i, lin in enumerate(linears):
            np.testing.assert_allclose(lin.weight.detach().numpy().T, np.asarray(d[part]["layers"][i]["kernel"]),
                                       rtol=1e-7, atol=1e-10)
            np.testing.assert_allclose(lin.bias.detach().numpy(), np.asarray(d[part]["layers"][i]["bias"]),
                                       rtol=1e-7, atol=1e-10)


def test_baseline_fit_takes_sparse_counts():
    """``prepare`` keeps CSR input sparse; the baseline densifies it and runs the whole method."""
    import scipy.sparse as sp

    X, groups, _ = synthetic_counts(n_cells=90, n_genes=40)
    prep = prepare(CountData(X=sp.csr_matrix(X)))
    pred, _ = tsc.fit(prep.x, prep.raw, prep.size_factors, n_clusters=3, pretrain_epochs=2, maxiter=2,
                      verbose=False)
    assert pred.shape == (prep.shape[0],) and set(np.unique(pred)) <= {0, 1, 2}
