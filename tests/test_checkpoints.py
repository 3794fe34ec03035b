"""Checkpoints on torch >= 2.6: weights-only files, exact reload, resume, refusal of unsafe or foreign files."""
import os
import pickle

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import ModelType

from recbole_compress.config import Config
from recbole_compress.quick_start import load_data_and_model, objective_function
from recbole_compress.trainer import CheckpointError, CheckpointMixin, Trainer, load_checkpoint
from recbole_compress.utils import get_model, get_trainer

from conftest import write_tiny_dataset

BASELINES = ["SASRec", "NextItNet", "GRU4Rec", "BERT4Rec", "FPMC"]


@pytest.mark.parametrize("model", BASELINES)
def test_baseline_trains_saves_and_reloads_exactly(model, tiny_config):
    result = objective_function(dict(tiny_config, model=model), saved=True)
    path = result["checkpoint"]
    assert os.path.isfile(path)
    raw = torch.load(path, weights_only=True)  # what torch >= 2.6 does by default
    assert raw["config"]["model"] == model and len(raw["item_fingerprint"]) == 64
    config, reloaded, dataset, train, valid, test = load_data_and_model(path)
    again = Trainer(config, reloaded).evaluate(test, load_best_model=False)
    assert dict(again) == dict(result["test_result"])


def test_resume_checkpoint_continues_training(tiny_config):
    result = objective_function(dict(tiny_config, model="SASRec"), saved=True)
    config = Config("SASRec", "tiny", config_dict=dict(tiny_config, epochs=2), read_cmd_line=False)
    train, valid, test = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    trainer.resume_checkpoint(result["checkpoint"])
    assert trainer.start_epoch == 1
    trainer.fit(train, valid, saved=True)
    assert load_checkpoint(result["checkpoint"])["epoch"] in (0, 1)
    assert trainer.evaluate(test)["ndcg@10"] >= 0


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"format": "recbole_compress.checkpoint/1", "config": _Exploit(str(marker))}, str(path))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_data_and_model(str(path))
    assert not marker.exists()
    torch.load(str(path), weights_only=False)  # the payload is real: unpickling it creates the file
    assert marker.exists()


def test_recbole_checkpoint_and_non_checkpoint_are_refused(tmp_path, tiny_config):
    config = Config("SASRec", "tiny", config_dict=tiny_config, read_cmd_line=False)
    path = tmp_path / "recbole.pth"
    torch.save({"config": config, "state_dict": {}}, str(path))  # what RecBole writes
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(str(path))
    torch.save({"state_dict": {}}, str(tmp_path / "plain.pth"))
    with pytest.raises(CheckpointError, match="not a recbole-compress checkpoint"):
        load_checkpoint(str(tmp_path / "plain.pth"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pth"))


def test_checkpoint_of_another_dataset_is_refused(tiny_config, tmp_path):
    result = objective_function(dict(tiny_config, model="SASRec"), saved=True)
    root = write_tiny_dataset(str(tmp_path / "other"), name="tiny", n_items=N_OTHER, seed=7)
    config = Config("SASRec", "tiny", config_dict=dict(tiny_config, data_path=root), read_cmd_line=False)
    train, valid, test = data_preparation(config, create_dataset(config))
    trainer = Trainer(config, get_model("SASRec")(config, train._dataset))
    with pytest.raises(CheckpointError, match="another item-id mapping"):
        trainer.evaluate(test, model_file=result["checkpoint"])


N_OTHER = 35


def test_parallel_runs_never_share_a_checkpoint_file(tiny_config):
    config = Config("SASRec", "tiny", config_dict=tiny_config, read_cmd_line=False)
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train._dataset)
    names = {Trainer(config, model).saved_model_file for _ in range(20)}
    assert len(names) == 20


def test_recbole_special_trainers_get_safe_checkpoints():
    s3rec = get_trainer(ModelType.SEQUENTIAL, "S3Rec")
    from recbole.trainer import S3RecTrainer

    assert issubclass(s3rec, CheckpointMixin) and issubclass(s3rec, S3RecTrainer)
    assert get_trainer(ModelType.SEQUENTIAL, "sasrec") is Trainer
