"""Manifests of shared folders: any change is refused in one sentence, and the scDeepCluster model
folders (``model/`` for predict, ``pretrain/`` for --ae-weights) are checked before they are read."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import crafted_pickle, flip_byte, largest_file, synthetic_counts

from scdc_jax import checkpoint, manifest
from scdc_jax.errors import InputError
from scdc_jax.io import CountData

KIND = "test folder"


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "shared"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text('{"x": 1}')
    (d / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4)
    manifest.write(str(d), KIND)
    return d


def _set_manifest(d, **changes):
    path = d / manifest.NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


CHANGES = {  # name: (change to the folder, words of the refusal)
    "one byte changed": (lambda d: flip_byte(d / "sub" / "b.bin"), "altered or damaged"),
    "file cut short": (lambda d: (d / "a.json").write_text('{"x"'), "altered or damaged"),
    "file removed": (lambda d: os.remove(d / "sub" / "b.bin"), "incomplete: sub/b.bin listed"),
    "file added": (lambda d: (d / "sub" / "notes.txt").write_text("hi"), "does not list (sub/notes.txt)"),
    "pickle added": (lambda d: (d / "sub" / "x.pkl").write_bytes(b"\x80\x04N."), "holds a pickle (sub/x.pkl)"),
    "joblib file added": (lambda d: (d / "y.joblib").write_bytes(b"\x80\x04N."), "holds a pickle (y.joblib)"),
    "link added": (lambda d: os.symlink("/etc/hostname", d / "link"), "not plain files (link)"),
    "manifest removed": (lambda d: os.remove(d / manifest.NAME), "has no manifest.json"),
    "manifest damaged": (lambda d: (d / manifest.NAME).write_text("{not json"), "damaged"),
    "unknown format version": (lambda d: _set_manifest(d, format_version=2), "format version 2"),
    "another kind": (lambda d: _set_manifest(d, kind="GsRCL reference"), "holds a GsRCL reference, not a test folder"),
}


def test_an_untouched_folder_passes(folder):
    m = manifest.verify(str(folder), KIND, "make it again")
    assert set(m["files"]) == {"a.json", "sub/b.bin"} and m["format_version"] == manifest.FORMAT_VERSION
    assert m["files"]["sub/b.bin"]["size"] == 1024 and "numpy" in m["versions"]


@pytest.mark.parametrize("name", list(CHANGES))
def test_any_change_is_refused_in_one_sentence(folder, name):
    change, words = CHANGES[name]
    change(folder)
    with pytest.raises(InputError) as exc:
        manifest.verify(str(folder), KIND, "make it again")
    msg = str(exc.value)
    assert words in msg and "\n" not in msg and msg.endswith("."), msg


def test_saving_a_checkpoint_discards_the_folders_manifest(tmp_path):
    state = {"w": np.arange(3.0)}
    checkpoint.save(str(tmp_path), 1, state, {})
    manifest.write(str(tmp_path), KIND)
    checkpoint.save(str(tmp_path), 2, state, {})  # the folder changes: it is no longer the one listed
    assert not (tmp_path / manifest.NAME).exists()


# ---- scDeepCluster folders ------------------------------------------------------------------

def _data():
    X, groups, _ = synthetic_counts(80, 40, n_groups=2, seed=1)
    return CountData(X=X, labels=groups, label_names=["a", "b"], gene_names=np.array([f"g{i}" for i in range(40)]))


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory):
    from scdc_jax.cluster import ClusterConfig, run

    d = tmp_path_factory.mktemp("cluster")
    cfg = ClusterConfig(n_clusters=2, pretrain_epochs=2, maxiter=1, batch_size=32, encoder=[8], decoder=[8],
                        latent=4, kmeans_n_init=1)
    run(_data(), cfg, save_dir=str(d), progress=False)
    return d


def test_model_folders_hold_a_manifest_of_their_files_and_no_pickle(save_dir):
    for sub, kind in (("pretrain", "scDeepCluster pretrained autoencoder"), ("model", "scDeepCluster model")):
        m = manifest.verify(str(save_dir / sub), kind, "train it again")
        files = {os.path.relpath(os.path.join(d, n), save_dir / sub) for d, _, names in os.walk(save_dir / sub)
                 for n in names} - {manifest.NAME}
        assert set(m["files"]) == files and files
        for rel in files:  # what orbax writes: JSON, text and OCDBT stores; a pickle starts \x80 <protocol>
            head = (save_dir / sub / rel).read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), rel


def test_a_copied_model_predicts_exactly_as_the_original(save_dir, tmp_path):
    from scdc_jax.cluster import predict

    shutil.copytree(save_dir / "model", tmp_path / "model")
    a, b = predict(str(save_dir), _data()), predict(str(tmp_path), _data())
    for key in ("latent", "q", "labels"):
        np.testing.assert_array_equal(a[key], b[key])


def _copy_changed(src, dst, change):
    shutil.copytree(src, dst)
    change(dst)
    return str(dst)


@pytest.mark.parametrize("change, words", [
    (lambda d: flip_byte(largest_file(d / "model")), "altered or damaged"),
    (lambda d: os.remove(largest_file(d / "model")), "incomplete"),
    (lambda d: os.remove(d / "model" / manifest.NAME), "has no manifest.json"),
    (lambda d: (d / "model" / "weights.pickle").write_bytes(crafted_pickle(d / "marker")), "holds a pickle"),
], ids=["one byte changed", "file removed", "no manifest", "pickle added"])
def test_predict_refuses_a_changed_model(save_dir, tmp_path, change, words):
    from scdc_jax.cluster import predict

    where = _copy_changed(save_dir, tmp_path / "run", change)
    with pytest.raises(InputError, match=words):
        predict(where, _data())
    assert not (tmp_path / "run" / "marker").exists()


def test_predict_refuses_a_pretrained_autoencoder_for_a_model(save_dir):
    from scdc_jax.cluster import predict

    with pytest.raises(InputError, match="holds a scDeepCluster pretrained autoencoder, not a scDeepCluster model"):
        predict(str(save_dir / "pretrain"), _data())


@pytest.mark.parametrize("change, words", [
    (lambda d: flip_byte(largest_file(d / "pretrain")), "altered or damaged"),
    (lambda d: os.remove(largest_file(d / "pretrain")), "incomplete"),
], ids=["one byte changed", "file removed"])
def test_ae_weights_refuses_a_changed_pretrained_autoencoder(save_dir, tmp_path, change, words):
    from scdc_jax.cluster import ClusterConfig, run

    where = _copy_changed(save_dir, tmp_path / "run", change)
    cfg = ClusterConfig(n_clusters=2, pretrain_epochs=2, maxiter=1, batch_size=32, encoder=[8], decoder=[8],
                        latent=4, kmeans_n_init=1)
    with pytest.raises(InputError, match=words):
        run(_data(), cfg, ae_weights=where, progress=False)
