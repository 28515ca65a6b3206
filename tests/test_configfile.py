"""TOML configurations: every value is checked against its dataclass field's type."""
from __future__ import annotations

import pytest

from scdc_jax.cluster.config import load_config as cluster_config
from scdc_jax.errors import InputError
from scdc_jax.gsrcl.config import load_config as gsrcl_config


def toml(tmp_path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("line, expected", [
    ('pretrain_epochs = "twenty"', "pretrain_epochs must be an integer, got 'twenty'."),
    ("n_clusters = true", "n_clusters must be an integer, got True."),  # a bool is no integer
    ("sigma = \"2.5\"", "sigma must be a number, got '2.5'."),
    ("encoder = [256, 64.5]", "encoder must be a list of integers, got [256, 64.5]."),
    ("community = 3", "community must be a string, got 3."),
])
def test_wrong_type_in_a_file_is_one_sentence_naming_key_type_and_file(tmp_path, line, expected):
    path = toml(tmp_path, f"[scdeepcluster]\n{line}\n")
    with pytest.raises(InputError) as exc:
        cluster_config(path)
    assert str(exc.value) == f"config file {path}: {expected}"


def test_integers_stand_for_floats_and_object_and_list_fields_take_their_values(tmp_path):
    cfg = cluster_config(toml(tmp_path, "sigma = 2\ngamma = 1\nencoder = [32, 16]\n"))
    assert cfg.sigma == 2.0 and isinstance(cfg.sigma, float) and cfg.encoder == [32, 16]
    # GsRCL: batch_norm is typed object ("auto", true or false), svm_gamma a list of mixed values
    g = gsrcl_config(toml(tmp_path, '[gsrcl]\nbatch_norm = true\nsvm_gamma = ["scale", 1]\nsvm_c = [1, 10]\n'))
    assert g.batch_norm is True and g.svm_gamma == ["scale", 1] and g.svm_c == [1.0, 10.0]
    with pytest.raises(InputError, match=r"svm_gamma must be a list, got 'scale'"):
        gsrcl_config(toml(tmp_path, '[gsrcl]\nsvm_gamma = "scale"\n'))


def test_overrides_are_checked_too():
    with pytest.raises(InputError, match=r"^pretrain_epochs must be an integer, got 'twenty'.$"):
        cluster_config(None, pretrain_epochs="twenty")
    with pytest.raises(InputError, match=r"unknown setting\(s\): pretrain_epoch "):
        cluster_config(None, pretrain_epoch=3)


def test_a_misspelt_setting_is_named_with_its_likely_meaning_and_another_commands_table_is_told(tmp_path):
    with pytest.raises(InputError, match=r"unknown setting\(s\): n_cluster \(did you mean n_clusters\?\), zzz\.$"):
        cluster_config(toml(tmp_path, "[scdeepcluster]\nn_cluster = 3\nzzz = 1\n"))
    path = toml(tmp_path, "[gsrcl]\nepochs = 3\n")  # GsRCL's file given to the clustering
    with pytest.raises(InputError) as exc:
        cluster_config(path)
    assert str(exc.value) == (f"config file {path} has a [gsrcl] table, but this command reads its settings from "
                              "[scdeepcluster] or the top level.")
    with pytest.raises(InputError, match=r"has a \[scdeepcluster\] table, but this command reads its settings "
                                         r"from \[gsrcl\]"):
        gsrcl_config(toml(tmp_path, "[scdeepcluster]\nmaxiter = 3\n"))
