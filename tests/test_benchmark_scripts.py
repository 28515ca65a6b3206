"""The benchmark scripts' own bookkeeping (no training here)."""

from __future__ import annotations

import json

import pytest

from benchmarks import accuracy


def _row(impl, dataset, seed, mode="estimated", **extra):
    return {"impl": impl, "dataset": dataset, "seed": seed, "mode": mode,
            "ari": 0.5, "nmi": 0.6, "acc": 0.7, "k": 9, "wall_s": 1.0, **extra}


def test_resume_keeps_only_finished_requested_runs(tmp_path):
    log = tmp_path / "run.log"
    incomplete = _row("torch_f32", "pbmc", 1)
    del incomplete["ari"]
    lines = ["resuming: something", json.dumps(_row("scdc_jax", "bladder", 0)), "Traceback (most recent call last):",
             json.dumps(_row("scdc_jax", "bladder", 7)),            # a seed not asked for now
             json.dumps(_row("scdc_jax", "worm", 0, mode="given")),  # another mode
             json.dumps(incomplete), "[1, 2]", "{not json"]
    log.write_text("\n".join(lines) + "\n")
    runs = [(i, d, s, "estimated") for d in ("bladder", "pbmc") for i in ("scdc_jax", "torch_f32") for s in (0, 1)]
    done = accuracy.load_rows(str(log), runs)
    assert list(done) == [("scdc_jax", "bladder", 0, "estimated")]
    assert done[("scdc_jax", "bladder", 0, "estimated")]["ari"] == 0.5


def test_resume_from_a_missing_log_is_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="is not a file"):
        accuracy.load_rows(str(tmp_path / "nope.log"), [])
