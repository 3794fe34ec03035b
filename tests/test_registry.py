"""Model and trainer look-up: plugin first, then RecBole, case-insensitive, with aliases and one clear error."""
import pytest
from recbole.model.sequential_recommender import SASRec
from recbole.utils import ModelType

from recbole_compress.utils import (
    UnknownModelError,
    get_model,
    get_trainer,
    plugin_models,
    runnable_plugin_models,
)


def test_recbole_models_resolve_case_insensitively():
    # RecBole's class itself, able to take item_compression (same name, a subclass)
    assert get_model("SASRec").compressed_from is SASRec and get_model("sasrec") is get_model("SASREC")
    assert get_model("SASRec").__name__ == "SASRec" and issubclass(get_model("SASRec"), SASRec)
    assert get_model("nextitnet").__name__ == "NextItNet"


def test_plugin_models_and_aliases_resolve_first():
    for name, cls in plugin_models().items():
        found = get_model(name)
        assert getattr(found, "compressed_from", found) is cls and get_model(name.lower()) is found
        for alias in getattr(cls, "aliases", ()):
            assert get_model(alias) is found and get_model(alias.upper()) is found


def test_unknown_model_is_one_clear_error():
    with pytest.raises(UnknownModelError) as info:
        get_model("NoSuchModel")
    message = str(info.value)
    assert "NoSuchModel" in message and "Plugin models:" in message and "SASRec" in message
    for name in runnable_plugin_models():
        assert name in message


def test_trainers_of_plugin_models_are_checkpoint_safe():
    from recbole_compress.trainer import CheckpointMixin

    for name, cls in plugin_models().items():
        assert issubclass(get_trainer(cls.type, name), CheckpointMixin)
    assert issubclass(get_trainer(ModelType.SEQUENTIAL, "GRU4Rec"), CheckpointMixin)


def test_known_config_keys_cover_model_and_run_keys():
    from recbole_compress.preflight import run_keys

    keys = run_keys("SASRec")
    assert {"hidden_size", "n_layers", "epochs", "learning_rate", "data_path", "eval_args"} <= keys
    assert "hiden_size" not in keys
