"""The plugin's own models draw every dropout mask with FastDropout (docs/benchmarks/fast_dropout.md), including
inside the RecBole layers they build; RecBole's own baselines keep torch's dropout."""
import pytest
from torch import nn

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.run import build, make_config

MODELS = {
    "EODRecTeacher": {},
    "LSAN": {"use_context": False},
    "PKMACT": {"pkm_n_keys": 4, "pkm_topk": 2, "query_stride": 4},
    "CpRec": {},
    "GRU4RecAdaptive": {},
}


def _dropouts(model):
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_dropout_of_a_plugin_model_is_fast(tiny_config, name):
    model = build(make_config(name, "tiny", config_dict={**tiny_config, **MODELS[name]}, read_cmd_line=False)).model
    dropouts = _dropouts(model)
    assert dropouts, f"{name} has no dropout to check"
    assert all(type(m) is FastDropout for m in dropouts), [type(m).__name__ for m in dropouts]


def test_recbole_baselines_keep_torchs_dropout(tiny_config):
    model = build(make_config("SASRec", "tiny", config_dict=tiny_config, read_cmd_line=False)).model
    assert _dropouts(model) and all(type(m) is nn.Dropout for m in _dropouts(model))
