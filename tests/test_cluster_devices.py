"""--devices 1 and --devices 4 (forced CPU devices) give the same clustering for the same seed,
for a single model and for the members of an ensemble."""
from __future__ import annotations

from conftest import need_devices, synthetic_counts
from sklearn.metrics import adjusted_rand_score

from scdc_jax.cluster import ClusterConfig, run
from scdc_jax.io import CountData


def test_one_and_four_devices_give_the_same_clustering():
    need_devices(4)
    X, groups, _ = synthetic_counts(300, 100, seed=11)
    data = CountData(X=X, labels=groups, label_names=["a", "b", "c"])
    cfg = dict(n_clusters=3, pretrain_epochs=20, maxiter=10, batch_size=70, kmeans_n_init=5, encoder=[64, 32],
               decoder=[32, 64], latent=8, seed=2)
    one = run(data, ClusterConfig(devices=1, **cfg), progress=False)
    four = run(data, ClusterConfig(devices=4, **cfg), progress=False)
    assert adjusted_rand_score(one.labels, four.labels) >= 0.99
    l1, l4 = one.history["pretrain_loss"][-1], four.history["pretrain_loss"][-1]
    assert abs(l1 - l4) <= 1e-4 * abs(l1), (l1, l4)

    ens = {**cfg, "pretrain_epochs": 10, "maxiter": 5, "ensemble": 2}
    e1 = run(data, ClusterConfig(devices=1, **ens), progress=False).ensemble
    e4 = run(data, ClusterConfig(devices=4, **ens), progress=False).ensemble
    for a, b in zip(e1["member_labels"], e4["member_labels"]):
        assert adjusted_rand_score(a, b) >= 0.99  # each ensemble member as on one device
