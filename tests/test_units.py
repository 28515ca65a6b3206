"""Unit tests of the small shared modules: nn, checkpoint, parallel, metrics, outputs."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scdc_jax import checkpoint, metrics, outputs, parallel
from scdc_jax.errors import InputError
from scdc_jax.nn import GsRCLNet, ZINBAutoencoder, init_split, torch_uniform


# ---------------------------------------------------------------- nn

def test_zinb_autoencoder_shapes_heads_and_batch_conditioning():
    ae = ZINBAutoencoder(20, n_batches=2, encoder=(16, 8), latent=4, decoder=(8, 16), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 20)), jnp.float32)
    b = jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])]
    z = ae.encode(x, b)
    mean, disp, logit = ae.decode(z, b)
    assert z.shape == (5, 4) and mean.shape == disp.shape == logit.shape == (5, 20)
    assert float(mean.min()) >= 1e-5 and float(mean.max()) <= 1e6
    assert float(disp.min()) >= 1e-4 and float(disp.max()) <= 1e4
    assert ae.enc[0].kernel.shape == (22, 16) and ae.dec[0].kernel.shape == (6, 8)  # B beside x and z
    assert not np.allclose(ae.encode(x, 1 - b), z)  # the batch input changes the latent


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_init_split_draws_the_layer_by_layer_weights_in_one_program(dtype):
    from scdc_jax.nn import _init_state

    sizes = dict(n_genes=30, n_batches=2, encoder=(16, 8), latent=4, decoder=(8, 16), dtype=dtype)
    key = jax.random.key(7)
    graphdef, state = init_split(ZINBAutoencoder, key, **sizes)
    eager_graphdef, eager = nnx.split(ZINBAutoencoder(**sizes, rngs=nnx.Rngs(params=key)))
    assert graphdef == eager_graphdef and jax.tree.structure(state) == jax.tree.structure(eager)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(eager), strict=True):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same values, bit for bit
    compiled = _init_state._cache_size()
    _, other = init_split(ZINBAutoencoder, jax.random.key(8), **sizes)  # another seed: no new program
    assert _init_state._cache_size() == compiled
    assert not np.array_equal(np.asarray(jax.tree.leaves(other)[0]), np.asarray(jax.tree.leaves(state)[0]))


def test_a_second_run_in_a_process_reuses_the_compiled_epoch_programs():
    from functools import partial

    from scdc_jax.cluster.train import make_assign, make_encoder, make_epoch, pretrain_loss
    from scdc_jax.optim import adadelta_torch, amsgrad_torch

    graphdef = init_split(ZINBAutoencoder, jax.random.key(0), n_genes=12, n_batches=0, encoder=(8,), latent=2,
                          decoder=(8,), dtype=None)[0]
    assert amsgrad_torch(1e-3) is amsgrad_torch(1e-3) and amsgrad_torch(1e-3) is not amsgrad_torch(1e-2)
    assert adadelta_torch(1.0) is adadelta_torch(1.0)

    def epoch(sigma, n=100):
        return make_epoch(partial(pretrain_loss, graphdef=graphdef, sigma=sigma), amsgrad_torch(1e-3), n=n,
                          batch_size=32, shuffle=True)

    assert epoch(2.5) is epoch(2.5)  # equal arguments: the same jitted function (and its compilations)
    assert epoch(2.5) is not epoch(1.0) and epoch(2.5) is not epoch(2.5, n=99)
    assert make_encoder(graphdef) is make_encoder(graphdef) and make_assign(graphdef, 1.0) is make_assign(graphdef, 1.0)
    assert make_assign(graphdef, 1.0) is not make_assign(graphdef, 2.0)
    loss = lambda params, batch, key: pretrain_loss(params, batch, key, graphdef=graphdef, sigma=2.5)  # noqa: E731
    assert make_epoch(loss, amsgrad_torch(1e-3), n=100, batch_size=32, shuffle=True) is not \
        make_epoch(lambda *a: loss(*a), amsgrad_torch(1e-3), n=100, batch_size=32, shuffle=True)


def test_torch_uniform_bounds_and_gsrcl_init():
    w = torch_uniform(25)(jax.random.key(0), (2000,))
    assert float(jnp.abs(w).max()) <= 0.2 and float(jnp.abs(w).max()) > 0.19
    net = GsRCLNet(30, encoder=(64, 16), head=(8,), rngs=nnx.Rngs(1))
    kernel = np.asarray(net.encoder.layers[0].kernel[...])
    assert abs(kernel.std() - 0.02) < 0.002 and np.all(np.asarray(net.encoder.layers[0].bias[...]) == 0)
    h, proj = net(jnp.ones((3, 30)))
    assert h.shape == (3, 16) and proj.shape == (3, 8)


# ---------------------------------------------------------------- checkpoint

def test_checkpoint_round_trip_meta_and_missing_folder(tmp_path):
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.int32(7)}}
    checkpoint.save(str(tmp_path / "ck"), 3, state, {"epoch": 3, "note": "x"})
    checkpoint.save(str(tmp_path / "ck"), 5, {"a": state["a"] + 1, "b": state["b"]}, {"epoch": 5})
    assert checkpoint.latest_step(str(tmp_path / "ck")) == 5
    restored, meta = checkpoint.restore(str(tmp_path / "ck"), checkpoint.to_host(state), step=3)
    np.testing.assert_array_equal(restored["a"], state["a"])
    assert int(restored["b"]["c"]) == 7 and meta == {"epoch": 3, "note": "x"}
    assert checkpoint.read_meta(str(tmp_path / "ck")) == {"epoch": 5}
    assert checkpoint.latest_step(str(tmp_path / "none")) is None
    with pytest.raises(InputError, match="holds no scdc_jax checkpoint"):
        checkpoint.read_meta(str(tmp_path / "none"))


def test_run_dir_refuses_a_foreign_fingerprint_on_resume(tmp_path):
    d = str(tmp_path / "run")
    checkpoint.run_dir(d, {"lr": 1e-3, "shape": (2, 3)}, resume=False)
    open(os.path.join(d, "leftover"), "w").close()
    checkpoint.run_dir(d, {"lr": 1e-3, "shape": (2, 3)}, resume=True)  # tuples read back as lists: same run
    assert os.path.exists(os.path.join(d, "leftover"))
    with pytest.raises(InputError, match="different configuration"):
        checkpoint.run_dir(d, {"lr": 1e-2, "shape": (2, 3)}, resume=True)
    with pytest.raises(InputError, match="different configuration"):  # a process that does not write checks too
        checkpoint.run_dir(d, {"lr": 1e-2, "shape": (2, 3)}, resume=True, write=False)
    checkpoint.run_dir(d, {"lr": 1e-2}, resume=False, write=False)  # ... and leaves the folder to the writer
    assert os.path.exists(os.path.join(d, "leftover"))
    checkpoint.run_dir(d, {"lr": 1e-2}, resume=False)  # a fresh run empties the folder
    assert not os.path.exists(os.path.join(d, "leftover"))


# ---------------------------------------------------------------- parallel

def test_mesh_and_padding():
    assert [parallel.padded_size(n, 4) for n in (1, 4, 5, 8)] == [4, 4, 8, 8]
    mesh = parallel.make_mesh(1)
    assert mesh.axis_names == ("data",) and mesh.devices.size == 1
    assert parallel.check_devices(1) == jax.devices()[:1]
    with pytest.raises(InputError, match="available"):
        parallel.check_devices(len(jax.devices()) + 1)
    with pytest.raises(InputError, match="at least 1"):
        parallel.check_devices(0)


# ---------------------------------------------------------------- metrics

def test_clustering_metrics_are_invariant_to_renaming_and_match_clusters():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([5, 5, 3, 3, 9, 9, 3])
    s = metrics.clustering_scores(y, pred)
    assert s["acc"] == pytest.approx(6 / 7)
    assert metrics.clustering_scores(y, np.array([7, 7, 1, 1, 2, 2, 1])) == s  # only the partition counts
    assert metrics.clustering_scores(y, y) == {"ari": 1.0, "nmi": 1.0, "acc": 1.0}
    b = metrics.binary_scores([0, 1, 1, 0], [0, 1, 0, 0], [0.1, 0.9, 0.4, 0.2])
    assert b["f1"] == pytest.approx(2 / 3) and b["ap"] == pytest.approx(1.0) and 0 < b["mcc"] < 1


# ---------------------------------------------------------------- outputs

def test_atomic_path_leaves_nothing_on_failure_and_json_helpers(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with outputs.atomic_path(str(target)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    outputs.write_json(str(target), {"a": np.float32(0.5), "b": np.arange(3), 1: (2, 3)})
    assert json.loads(target.read_text()) == {"a": 0.5, "b": [0, 1, 2], "1": [2, 3]}
    assert outputs.as_json({1: (np.int64(2),)}) == {"1": [2]}
    assert len(set(outputs.palette(25))) == 25
    prov = outputs.provenance(3, {"x": 1}, 2, "cmd")
    assert prov["seed"] == 3 and prov["n_devices"] == 2 and "jax" in prov["versions"]


def test_process_helpers_with_one_process_and_merged_log_statistics():
    import numpy as np
    import pytest

    from scdc_jax import distributed
    from scdc_jax.errors import InputError
    from scdc_jax.preprocess import LogStats

    a = np.array([0.1, 1e-17, 3.0])
    assert distributed.gather(a).shape == (1, 3) and np.array_equal(distributed.gather(a)[0], a)
    assert np.array_equal(distributed.sum_over_processes(a), a)
    assert distributed.my_share([(0, 1), (1, 2)]) == [(0, 1), (1, 2)]
    assert distributed.agree(lambda: 5) == 5
    with pytest.raises(InputError, match="bad"):
        distributed.agree(lambda: (_ for _ in ()).throw(InputError("bad counts")))
    # statistics of two halves merged equal those of the whole (how processes' shares combine)
    rng = np.random.default_rng(0)
    x, scale = rng.poisson(2.0, (300, 7)).astype(np.float64), rng.uniform(0.5, 2.0, 300)
    whole, first, second = LogStats(7), LogStats(7), LogStats(7)
    whole.add(x, scale)
    first.add(x[:130], scale[:130])
    second.add(x[130:], scale[130:])
    first.merge(second.count, second.mean, second.m2)
    np.testing.assert_allclose(first.result()[0], whole.result()[0], rtol=1e-12)
    np.testing.assert_allclose(first.result()[1], whole.result()[1], rtol=1e-12)


def test_rows_of_a_process_placed_on_its_devices_make_the_global_array():
    import jax
    import numpy as np

    from scdc_jax.parallel import data_sharded, make_mesh, process_rows, put_local_copies, put_process_rows, replicated

    mesh = make_mesh(len(jax.devices()))
    n = 4 * mesh.size
    lo, hi = process_rows(data_sharded(mesh), n)
    assert (lo, hi) == (0, n)  # one process holds every row
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    np.testing.assert_array_equal(np.asarray(put_process_rows(x, lo, n, data_sharded(mesh))), x)
    g = put_local_copies(x[0], replicated(mesh))
    assert g.sharding == replicated(mesh) and np.array_equal(np.asarray(g), x[0])
