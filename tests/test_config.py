"""Config resolution: plugin files after RecBole's, in order; the user's values win; one protocol for every model."""
import os
import sys

import pytest
import yaml

import recbole_compress.config as config_module
from recbole_compress.config import Config
from recbole_compress.utils import ConfigError, plugin_models, runnable_plugin_models

PROTOCOL_KEYS = ("eval_args", "metrics", "topk", "valid_metric", "MAX_ITEM_LIST_LENGTH", "repeatable")


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)


@pytest.fixture
def fake_properties(tmp_path, monkeypatch):
    """A plugin properties tree where every level sets learning_rate, so the winner shows the order."""
    root = tmp_path / "properties"
    _write(str(root / "overall.yaml"), {"learning_rate": 0.005, "strict_config_keys": True})
    _write(str(root / "quick_start_config" / "sequential_base.yaml"), {"train_neg_sample_args": None})
    # a plugin model YAML beats RecBole's own YAML of the same model (RecBole's SASRec.yaml says hidden_size 64)
    _write(str(root / "model" / "SASRec.yaml"), {"learning_rate": 0.003, "hidden_size": 24})
    _write(str(root / "quick_start_config" / "SASRec_on_tiny.yaml"), {"learning_rate": 0.002})
    monkeypatch.setattr(config_module, "properties_path", lambda *p: os.path.join(str(root), *p))
    return root


def _cfg(tiny_config, **kw):
    cfg = dict(tiny_config)
    for key in ("hidden_size", "inner_size", "embedding_size", "n_layers", "n_heads"):
        cfg.pop(key)
    cfg.update(kw)
    return cfg


def test_plugin_files_load_after_recbole_in_order(fake_properties, tiny_config):
    config = Config("SASRec", "tiny", config_dict=_cfg(tiny_config), read_cmd_line=False)
    assert config["learning_rate"] == 0.002  # <Model>_on_<dataset>.yaml is the last plugin file
    assert config["hidden_size"] == 24  # plugin model YAML over RecBole's model YAML
    assert config["n_layers"] == 2  # RecBole's own SASRec.yaml still applies where the plugin says nothing
    os.remove(fake_properties / "quick_start_config" / "SASRec_on_tiny.yaml")
    assert Config("SASRec", "tiny", config_dict=_cfg(tiny_config), read_cmd_line=False)["learning_rate"] == 0.003
    os.remove(fake_properties / "model" / "SASRec.yaml")
    assert Config("SASRec", "tiny", config_dict=_cfg(tiny_config), read_cmd_line=False)["learning_rate"] == 0.005


def test_user_values_win_command_line_first(fake_properties, tiny_config, tmp_path, monkeypatch):
    file = tmp_path / "user.yaml"
    _write(str(file), {"learning_rate": 0.0011, "hidden_size": 40})
    config = Config("SASRec", "tiny", config_file_list=[str(file)], config_dict=_cfg(tiny_config), read_cmd_line=False)
    assert config["learning_rate"] == 0.0011 and config["hidden_size"] == 40
    config = Config("SASRec", "tiny", config_file_list=[str(file)],
                    config_dict=_cfg(tiny_config, learning_rate=0.0012), read_cmd_line=False)
    assert config["learning_rate"] == 0.0012 and config["hidden_size"] == 40
    monkeypatch.setattr(sys, "argv", ["run", "--learning_rate=0.0013"])
    config = Config("SASRec", "tiny", config_file_list=[str(file)], config_dict=_cfg(tiny_config, learning_rate=0.0012))
    assert config["learning_rate"] == 0.0013
    # our CLI and Ray workers do not let sys.argv in
    assert Config("SASRec", "tiny", config_dict=_cfg(tiny_config), read_cmd_line=False)["learning_rate"] != 0.0013


def test_ce_models_get_no_negative_sampling_and_pairwise_keep_it(tiny_config):
    sasrec = Config("SASRec", "tiny", config_dict=_cfg(tiny_config), read_cmd_line=False)
    assert sasrec["train_neg_sample_args"]["distribution"] == "none"
    fpmc = Config("FPMC", "tiny", config_dict=_cfg(tiny_config), read_cmd_line=False)
    assert fpmc["train_neg_sample_args"]["distribution"] == "uniform"
    bpr_sasrec = Config("SASRec", "tiny", config_dict=_cfg(tiny_config, loss_type="BPR"), read_cmd_line=False)
    assert bpr_sasrec["train_neg_sample_args"]["distribution"] == "uniform"


def test_every_plugin_model_uses_the_sequential_protocol_of_sasrec(tiny_config):
    cfg = _cfg(tiny_config)
    cfg.pop("MAX_ITEM_LIST_LENGTH")
    reference = Config("SASRec", "tiny", config_dict=cfg, read_cmd_line=False)
    assert reference["eval_args"]["split"] == {"LS": "valid_and_test"} and reference["eval_args"]["order"] == "TO"
    for name in runnable_plugin_models():
        config = Config(name, "tiny", config_dict=cfg, read_cmd_line=False)
        for key in PROTOCOL_KEYS:
            assert config[key] == reference[key], (name, key)


def test_plugin_model_yamls_hold_no_protocol_keys():
    from recbole_compress import properties_path

    folder = properties_path("model")
    if not os.path.isdir(folder):
        pytest.skip("no plugin model YAML on this branch yet")
    for file in os.listdir(folder):
        with open(os.path.join(folder, file)) as f:
            keys = set(yaml.safe_load(f) or {})
        assert not keys & set(PROTOCOL_KEYS + ("train_neg_sample_args",)), file


def test_missing_config_file_and_dataset_are_clear_errors(tiny_config, tmp_path):
    from recbole_compress.run import make_config

    with pytest.raises(ConfigError, match="does not exist"):
        Config("SASRec", "tiny", config_file_list=[str(tmp_path / "nope.yaml")], read_cmd_line=False)
    with pytest.raises(ConfigError, match="nosuchset.inter does not exist"):
        make_config("SASRec", "nosuchset", config_dict={"data_path": str(tmp_path)}, read_cmd_line=False)


def test_registry_lists_plugin_models():
    for name, cls in plugin_models().items():
        assert cls.__name__ == name
        assert cls.__module__.endswith("." + name.lower()), "one model per file, named like its class"
