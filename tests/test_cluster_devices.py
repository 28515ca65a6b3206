"""--devices 1 and --devices 4 (forced CPU devices) give the same clustering for the same seed,
for a single model and for the members of an ensemble."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import ROOT, xla_flags

SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    import jax
    assert len(jax.devices()) == 4
    import numpy as np
    from conftest import synthetic_counts
    from sklearn.metrics import adjusted_rand_score
    from scdc_jax.cluster import ClusterConfig, run
    from scdc_jax.io import CountData
    X, groups, _ = synthetic_counts(300, 100, seed=11)
    data = CountData(X=X, labels=groups, label_names=["a", "b", "c"])
    cfg = dict(n_clusters=3, pretrain_epochs=20, maxiter=10, batch_size=70, kmeans_n_init=5, encoder=[64, 32],
               decoder=[32, 64], latent=8, seed=2)
    one = run(data, ClusterConfig(devices=1, **cfg), progress=False)
    four = run(data, ClusterConfig(devices=4, **cfg), progress=False)
    print("ARI", adjusted_rand_score(one.labels, four.labels))
    print("LOSS", one.history["pretrain_loss"][-1], four.history["pretrain_loss"][-1])
    ens = {**cfg, "pretrain_epochs": 10, "maxiter": 5, "ensemble": 2}
    e1 = run(data, ClusterConfig(devices=1, **ens), progress=False).ensemble
    e4 = run(data, ClusterConfig(devices=4, **ens), progress=False).ensemble
    print("ENSEMBLE", min(adjusted_rand_score(a, b) for a, b in zip(e1["member_labels"], e4["member_labels"])))
""")


def test_one_and_four_devices_give_the_same_clustering():
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": xla_flags(4)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, ROOT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert float(lines["ARI"]) >= 0.99, out.stdout
    l1, l4 = map(float, lines["LOSS"].split())
    assert abs(l1 - l4) <= 1e-4 * abs(l1), out.stdout
    assert float(lines["ENSEMBLE"]) >= 0.99, out.stdout  # each ensemble member as on one device
