"""Several processes as one run (jax.distributed on localhost, 2 CPU devices per process).

Two processes with two devices each form one global 4-device mesh: the same seed must give the
labels and latent space of one process with four devices, and a two-process run killed part way
must resume on one process with four devices and end as the uninterrupted run.  The two
processes hold the cells in memory with each reading only its devices' rows of the file (split by
rows over all devices, padded); the one process reads the file whole.  The several
processes are real ones; each 1-process run is the same ``main`` called in the pytest process,
which has four CPU devices (see conftest.py).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import ROOT, need_devices, run_module, synthetic_counts, xla_flags

TIMEOUT_S = 420
CONFIG = """encoder = [64, 32]
decoder = [32, 64]
latent = 8
kmeans_n_init = 5
"""
ARGS = ["--n-clusters", "3", "--pretrain-epochs", "40", "--maxiter", "10", "--tol", "1e-9", "--batch-size", "115",
        "--checkpoint-every", "5", "--seed", "4", "--quiet"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    try:
        socket.getaddrinfo("localhost", None)
    except OSError as exc:
        pytest.skip(f"the host name localhost does not resolve here ({exc}); multi-process runs need it")
    d = tmp_path_factory.mktemp("multihost")
    X, _, _ = synthetic_counts(230, 90, seed=5)
    with h5py.File(d / "d.h5", "w") as f:
        f.create_dataset("X", data=X)
    (d / "small.toml").write_text(CONFIG)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cluster_args(case, save: str, *extra) -> list[str]:
    return ["scdc_jax.cluster", "--data-file", str(case / "d.h5"), "--config", str(case / "small.toml"),
            "--save-dir", save, *ARGS, *extra]


def launch(case, save: str, n_processes: int, devices_each: int, *extra) -> list[subprocess.Popen]:
    """Start the run on ``n_processes`` local processes of ``devices_each`` CPU devices each."""
    return start(cluster_args(case, save, *extra), n_processes, devices_each)


def start(module_args: list[str], n_processes: int, devices_each: int) -> list[subprocess.Popen]:
    """Start ``python -m MODULE ARGS`` on ``n_processes`` local processes of ``devices_each`` CPU
    devices each, joined into one run."""
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(devices_each)}
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", *module_args, "--coordinator", f"localhost:{port}",
                              "--num-processes", str(n_processes), "--process-id", str(i)],
                             cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(n_processes)]


def one_process(module_args: list[str]) -> None:
    """``python -m MODULE ARGS --devices 4`` as one process: run in this one (which, like every
    process of the suite, has 4 CPU devices), sparing an import of jax and scanpy."""
    need_devices(4)
    code, _, _ = run_module(["-m", *module_args, "--devices", "4"])
    assert code == 0, "the 1-process run failed (its stderr is in the captured output)"


def kill(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()


def finish(procs) -> list[str]:
    """Wait for every process (killing all of them on a timeout or a failure); their stdouts."""
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"process {procs.index(p)} failed:\n{err[-3000:]}"
            outs.append(out)
    finally:
        kill(procs)
    return outs


# The gradients' all-reduce between processes (gloo) adds the devices' partial sums in another
# order than XLA does within one process, so the runs agree to float32 rounding (about 1e-6 on
# latent values of order 1 after 80 epochs), not bit for bit; the labels must agree exactly.
LATENT_ATOL = 1e-5


def product_lines(stdout: str) -> list[str]:
    """The lines of ``stdout`` that the product printed: without gloo's notes on its connections
    (printed by gloo's threads, so a note can arrive cut in two by another one, or run into the
    next one and leave its line ending as an empty line: CI saw ``...is : 3[Gloo] Rank 3 ...\n\n``)."""
    return [line for line in stdout.splitlines()
            if line.strip() and not line.startswith("[Gloo]") and "peer ranks" not in line]


def run_json(save: str) -> dict:
    with open(os.path.join(save, "run.json")) as fh:
        return json.load(fh)


def outputs(save: str):
    return (np.loadtxt(os.path.join(save, "pred_labels.txt")),
            np.loadtxt(os.path.join(save, "final_latent_file.txt"), delimiter=","))


@pytest.fixture(scope="module")
def reference(case):
    save = str(case / "one_process")
    one_process(cluster_args(case, save))
    return outputs(save)


def test_two_processes_match_one_process_with_four_devices(case, reference):
    save = str(case / "two_processes")
    first, second = finish(launch(case, save, 2, 2))
    labels, latent = outputs(save)
    np.testing.assert_array_equal(labels, reference[0])
    np.testing.assert_allclose(latent, reference[1], rtol=1e-5, atol=LATENT_ATOL)
    assert "wrote" in first and not product_lines(second), "only the first process reports and writes outputs"
    # the two processes held the cells in memory, each reading only its devices' rows of the file;
    # the one process read it whole
    assert [run_json(s)["read_by_process_rows"] for s in (save, str(case / "one_process"))] == [True, False]


STREAM = ["--stream", "--block-cells", "100", "--pretrain-epochs", "12", "--maxiter", "4"]


def test_streamed_two_processes_each_reading_their_rows_match_one_process(case):
    """Streamed, each process reads its share of the blocks in the preparation and its devices'
    rows of every block in training (230 cells in blocks of 100, 100 and 30: the last one padded
    to 32 rows and split 16 / 14 real cells); the run equals one process with four devices."""
    one, two = str(case / "stream_one"), str(case / "stream_two")
    one_process(cluster_args(case, one, *STREAM))
    finish(launch(case, two, 2, 2, *STREAM))
    labels, latent = outputs(two)
    ref_labels, ref_latent = outputs(one)
    assert len(labels) == 230
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(latent, ref_latent, rtol=1e-5, atol=LATENT_ATOL)


def steps(folder) -> list[int]:
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def test_two_processes_killed_resume_on_one_process(case, reference):
    save = str(case / "killed")
    procs = launch(case, save, 2, 2)
    try:
        deadline = time.time() + TIMEOUT_S
        while time.time() < deadline and not [s for s in steps(os.path.join(save, "pretrain")) if s >= 10]:
            assert all(p.poll() is None for p in procs), "a process ended before the run could be interrupted"
            time.sleep(0.02)
    finally:
        kill(procs)
    assert not os.path.exists(os.path.join(save, "pred_labels.txt"))
    assert max(steps(os.path.join(save, "pretrain"))) < 40
    one_process(cluster_args(case, save, "--resume"))
    labels, latent = outputs(save)
    np.testing.assert_array_equal(labels, reference[0])
    np.testing.assert_allclose(latent, reference[1], rtol=1e-5, atol=LATENT_ATOL)


# ---- GsRCL ----------------------------------------------------------------------------------------
GSRCL_CONFIG = """[gsrcl]
encoder = [16, 8]
head = [8, 4]
n_folds = 2
svm_cv = 2
svm_gamma = ["scale", 0.01]
svm_c = [0.1, 1.0]
svm_workers = 0
lr = 1e-3
"""
# 70 cells: fold-train parts of 28 cells, 2 batches of 16 slots (the last one 12 cells and 4 of padding)
GSRCL_ARGS = ["--epochs", "6", "--eval-every", "2", "--batch-size", "16", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def gsrcl_case(case):
    X, y, _ = synthetic_counts(70, 40, n_groups=3, seed=6)
    with h5py.File(case / "labelled.h5", "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset("Y", data=y)
    (case / "gsrcl.toml").write_text(GSRCL_CONFIG)
    return case


def gsrcl_args(case, out: str) -> list[str]:
    return ["scdc_jax.gsrcl", "evaluate", "--data-file", str(case / "labelled.h5"), "--config",
            str(case / "gsrcl.toml"), "--out-dir", out, *GSRCL_ARGS]


# The two runs' encoders agree to float32 rounding (gloo sums the gradients in another order); on
# these cells that moves none across an SVM's decision boundary nor changes a ranking, so the SVMs
# make the same predictions: the selected epochs and settings are equal and the MCCs, F1s and APs
# (float64 functions of the predictions and ranks) equal up to float64 rounding.  A cell that close
# to a boundary would change a score by a whole prediction, which no tolerance could absorb.
def test_gsrcl_two_processes_match_one_process_with_four_devices(gsrcl_case):
    one_process(gsrcl_args(gsrcl_case, str(gsrcl_case / "gsrcl_1")))
    first, second = finish(start(gsrcl_args(gsrcl_case, str(gsrcl_case / "gsrcl_2")), 2, 2))
    one, two = (json.loads((gsrcl_case / f"gsrcl_{n}" / "results.json").read_text()) for n in (1, 2))
    assert two["n_devices"] == 4 and [t["cell_type"] for t in two["tasks"]] == [t["cell_type"] for t in one["tasks"]]
    for a, b in zip(one["tasks"], two["tasks"]):
        for fa, fb in zip(a["folds"], b["folds"]):
            assert (fb["best_epoch"], fb["gsrcl_svm"], fb["raw_svm"]) == (fa["best_epoch"], fa["gsrcl_svm"],
                                                                          fa["raw_svm"]), a["cell_type"]
            np.testing.assert_allclose([h["val_mcc"] for h in fb["selection"]],
                                       [h["val_mcc"] for h in fa["selection"]], rtol=0, atol=1e-12)
            np.testing.assert_allclose(fb["final_loss"], fa["final_loss"], rtol=1e-5)
        for method in ("raw", "gsrcl"):
            assert b[method].keys() == a[method].keys()
            np.testing.assert_allclose(list(b[method].values()), list(a[method].values()), rtol=0, atol=1e-12)
    assert any(f["best_epoch"] for t in one["tasks"] for f in t["folds"]), "a selection beyond epoch 0 to compare"
    assert "wrote" in first and not product_lines(second), "only the first process reports and writes outputs"
    assert sorted(os.listdir(gsrcl_case / "gsrcl_2" / "folds")) == ["00000000_0.json", "00000000_1.json",
                                                                  "fingerprint.json"]
