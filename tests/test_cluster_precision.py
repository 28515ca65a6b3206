"""scDeepCluster in bfloat16 (``precision="bf16"``): what is bf16, what stays float32, how close it is."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_counts
from flax import nnx

from scdc_jax import checkpoint
from scdc_jax.cluster import ClusterConfig, fit
from scdc_jax.cluster.inference import predict
from scdc_jax.cluster.train import build_model, device_data, make_pretrain_epoch, stage_key
from scdc_jax.errors import InputError
from scdc_jax.io import CountData
from scdc_jax.optim import amsgrad_torch
from scdc_jax.preprocess import prepare

# build_model is called with keywords only, which fit its signature before and after the
# make_epoch refactor of cluster/train.py.
SMALL = dict(encoder=[64, 32], decoder=[32, 64], latent=8)
# bfloat16 keeps 8 significant bits: each rounding is off by at most u = 2**-8 (0.39 %) of the
# value.  The denoising path has six Dense layers in series; each rounds its weights and its
# output, the first also its input: 13 roundings, so with errors of one sign all the way and no
# amplification the logits, and a loss of relative condition number ~1 in them, are off by at
# most 13u = 5 %.  The loss averages cells x genes terms whose errors mostly cancel: measured 0.05 %.
BF16_LOSS_RTOL = 13 * 2.0 ** -8


def test_bf16_parameters_stay_float32_and_the_layers_compute_in_bfloat16():
    graphdef, state = build_model(cfg=ClusterConfig(precision="bf16", **SMALL), n_genes=30, seed=0, n_batches=2)
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
    model = nnx.merge(graphdef, state)
    x, b = jnp.ones((4, 30)), jnp.eye(2)[jnp.array([0, 1, 0, 1])]
    hidden = model.enc[0](jnp.concatenate([x, b], axis=1))
    assert hidden.dtype == jnp.bfloat16
    z = model.encode(x, b)
    heads = model.decode_logits(z, b)
    assert z.dtype == jnp.float32 and all(h.dtype == jnp.float32 for h in heads)  # what the losses get
    products = [e for e in jax.make_jaxpr(lambda x: model.decode_logits(model.encode(x, b), b))(x).eqns
                if e.primitive.name == "dot_general"]
    assert len(products) == 8 and all(v.aval.dtype == jnp.bfloat16 for e in products for v in e.invars)
    f32 = nnx.merge(*build_model(cfg=ClusterConfig(**SMALL), n_genes=30, seed=0, n_batches=2))
    assert f32.enc[0](jnp.concatenate([x, b], axis=1)).dtype == jnp.float32


def test_bf16_pretraining_loss_is_close_to_float32():
    counts, _, _ = synthetic_counts(200, 100, seed=4)
    prep = prepare(CountData(X=counts))
    data = device_data(prep.raw, prep.norm)
    losses = {}
    for precision in ("f32", "bf16"):
        graphdef, ae = build_model(cfg=ClusterConfig(precision=precision, **SMALL), n_genes=prep.shape[1],
                                   seed=3, n_batches=0)
        tx = amsgrad_torch()
        opt = tx.init(ae)
        epoch = make_pretrain_epoch(graphdef, tx, n=prep.shape[0], batch_size=64, sigma=2.5)
        losses[precision] = []
        for e in range(8):
            ae, opt, loss = epoch(ae, opt, data, stage_key(3, 1, e))
            assert loss.dtype == jnp.float32
            losses[precision].append(float(loss))
        floats = [leaf.dtype for leaf in jax.tree.leaves((ae, opt)) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        assert set(floats) == {jnp.dtype(jnp.float32)}  # parameters and AMSGrad moments
    f32, bf16 = np.array(losses["f32"]), np.array(losses["bf16"])
    np.testing.assert_allclose(bf16, f32, rtol=BF16_LOSS_RTOL)
    assert not np.array_equal(bf16, f32)  # the products did run in bfloat16
    assert bf16[-1] < 0.9 * bf16[0]  # and it learns


def test_bf16_run_end_to_end_and_predict_rebuilds_the_bf16_network(tmp_path):
    counts, groups, _ = synthetic_counts(seed=0)
    import anndata

    adata = anndata.AnnData(X=counts.astype(np.float32))
    adata.obs["group"] = groups.astype(str)
    fit(adata, 3, label_key="group", save_dir=str(tmp_path), verbose=False, precision="bf16", pretrain_epochs=30,
        maxiter=5, batch_size=64, kmeans_n_init=3, **SMALL)
    rec = adata.uns["scdc"]
    assert rec["params"]["precision"] == "bf16" and rec["scores"]["ari"] > 0.6, rec["scores"]  # it clusters (chance: 0)
    assert adata.obsm["X_scdc"].dtype == np.float32 and adata.obsm["scdc_q"].dtype == np.float32
    assert checkpoint.read_meta(str(tmp_path / "model"))["config"]["precision"] == "bf16"
    out = predict(str(tmp_path), CountData(X=counts))
    # the training cells again: the same bf16 network gives the same latent (a float32 rebuild
    # would differ by bf16 rounding, ~1e-2)
    np.testing.assert_allclose(out["latent"], adata.obsm["X_scdc"], rtol=1e-5, atol=1e-5)


def test_bad_precision_is_one_sentence():
    with pytest.raises(InputError, match="precision must be 'f32' or 'bf16', got 'fp16'"):
        ClusterConfig(precision="fp16").validate()


def test_cli_has_the_precision_flag():
    from scdc_jax.cluster.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(["--precision", "bf16"]).precision == "bf16"
    assert "usually slower" in " ".join(parser.format_help().split())
