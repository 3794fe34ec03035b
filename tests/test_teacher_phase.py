"""The shared teacher phase of teacher-student runs (EODRec, AdaRec): prefixed keys, training, reuse, refusal."""
import os

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec

from recbole_compress.config import Config
from recbole_compress.config_keys import Phase
from recbole_compress.phases import phase_config
from recbole_compress.run import Data, PhaseRunner
from recbole_compress.trainer import CheckpointError, load_checkpoint
from recbole_compress.trainer.teacher import DistillationTrainer

from conftest import write_tiny_dataset


class ToyStudent(SASRec):
    """A SASRec that records the teacher it is given (stands in for EODRec / AdaRec here)."""

    phases = (Phase("teacher_", "SASRec"),)

    def set_teacher(self, teacher):
        object.__setattr__(self, "teacher", teacher)


def _setup(tiny_config, **extra):
    cfg = dict(tiny_config, loss_type="CE", hidden_dropout_prob=0.1, attn_dropout_prob=0.1, hidden_act="gelu",
               layer_norm_eps=1e-12, initializer_range=0.02, **extra)
    config = Config(model=ToyStudent, dataset=cfg["dataset"], config_dict=cfg, read_cmd_line=False)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, train, valid, test


def _trainer(config, train, valid, test):
    trainer = DistillationTrainer(config, ToyStudent(config, train._dataset))
    trainer.phases = PhaseRunner(config, Data(train._dataset, train, valid, test))
    return trainer


def test_phase_config_takes_prefixed_keys_and_not_student_hyperparameters(tiny_config):
    config, *_ = _setup(tiny_config, hidden_size=8, teacher_hidden_size=16, teacher_epochs=3, teacher_n_layers=2)
    phase = phase_config(config, "teacher_", "SASRec")
    assert phase["hidden_size"] == 16 and phase["epochs"] == 3 and phase["n_layers"] == 2
    assert phase["model"] == "SASRec"
    # the split and protocol are the run's
    assert phase["eval_args"] == config["eval_args"] and phase["MAX_ITEM_LIST_LENGTH"] == config["MAX_ITEM_LIST_LENGTH"]
    assert phase["data_path"] == config["data_path"]
    # a student-only key with no teacher_ override falls back to the teacher model's own YAML default
    config2, *_ = _setup(tiny_config, inner_size=16)
    assert phase_config(config2, "teacher_", "SASRec")["inner_size"] == 256


def test_distillation_trainer_trains_teacher_then_student(tiny_config):
    config, train, valid, test = _setup(tiny_config, teacher_epochs=1, teacher_hidden_size=16)
    trainer = _trainer(config, train, valid, test)
    student = trainer.model
    trainer.fit(train, valid, saved=True)
    teacher_file = trainer.phase_checkpoints["teacher"]
    assert os.path.isfile(teacher_file) and teacher_file != trainer.saved_model_file
    assert student.teacher.item_embedding.weight.shape[1] == 16
    assert not any(p is q for p in student.parameters() for q in student.teacher.parameters())
    # the student's checkpoint records where its teacher is
    assert load_checkpoint(trainer.saved_model_file)["config"]["teacher_checkpoint"] == teacher_file
    assert trainer.evaluate(test, load_best_model=True)["ndcg@10"] >= 0

    # a given teacher checkpoint is reused, not retrained
    config2, train2, valid2, test2 = _setup(tiny_config, teacher_checkpoint=teacher_file)
    teacher, info = PhaseRunner(config2, Data(train2._dataset, train2, valid2, test2)).teacher("teacher_")
    assert info["trained"] is False and info["stopped_by"] == "loaded"
    torch.testing.assert_close(teacher.item_embedding.weight, student.teacher.item_embedding.weight)


def test_teacher_from_another_dataset_is_refused(tiny_config, tmp_path):
    config, train, valid, test = _setup(tiny_config, teacher_epochs=1)
    _, info = PhaseRunner(config, Data(train._dataset, train, valid, test)).teacher("teacher_")
    other_root = write_tiny_dataset(str(tmp_path / "other"), name="other", n_items=30, seed=3)
    other = dict(tiny_config, dataset="other", data_path=other_root)
    config_o, train_o, valid_o, test_o = _setup(other, teacher_checkpoint=info["checkpoint"])
    with pytest.raises(CheckpointError, match="another item-id mapping"):
        _trainer(config_o, train_o, valid_o, test_o).fit(train_o, valid_o)
