"""Interruption: a run killed with SIGKILL and resumed ends with the labels of an uninterrupted run.

The run that is killed is a real process; the uninterrupted run and the resumed one call the same
``main`` in this process (:func:`conftest.run_module`), which spares two imports of jax and scanpy."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
from conftest import ROOT, run_module, synthetic_counts

ARGS = ["--n-clusters", "3", "--pretrain-epochs", "200", "--maxiter", "100", "--tol", "1e-9", "--batch-size", "64",
        "--checkpoint-every", "10", "--seed", "3", "--quiet"]


def argv(data, save, *extra):
    return ["-m", "scdc_jax.cluster", "--data-file", data, "--save-dir", save, *ARGS, *extra]


def start(data, save, *extra):
    return subprocess.Popen([sys.executable, *argv(data, save, *extra)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def steps(folder):
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def test_sigkill_then_resume_gives_the_uninterrupted_labels(tmp_path, capfd):
    X, groups, _ = synthetic_counts(200, 80, seed=7)
    data = str(tmp_path / "d.h5")
    with h5py.File(data, "w") as f:
        f.create_dataset("X", data=X)
    code, _, err = run_module(argv(data, str(tmp_path / "ref")), capfd)
    assert code == 0, err

    save = str(tmp_path / "killed")
    proc = start(data, save)
    deadline = time.time() + 600
    while time.time() < deadline and not [s for s in steps(os.path.join(save, "pretrain")) if s >= 50]:
        assert proc.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(save, "pred_labels.txt"))
    assert not os.path.isdir(os.path.join(save, "model"))
    assert max(steps(os.path.join(save, "pretrain"))) < 200

    code, _, err = run_module(argv(data, save, "--resume"), capfd)
    assert code == 0, err
    np.testing.assert_array_equal(np.loadtxt(os.path.join(save, "pred_labels.txt")),
                                  np.loadtxt(tmp_path / "ref" / "pred_labels.txt"))
    np.testing.assert_allclose(np.loadtxt(os.path.join(save, "final_latent_file.txt"), delimiter=","),
                               np.loadtxt(tmp_path / "ref" / "final_latent_file.txt", delimiter=","), rtol=1e-5,
                               atol=1e-6)
