"""Trainers of recbole-compress: RecBole's training loop with checkpoints that load on torch >= 2.6."""
from recbole_compress.trainer.base import CheckpointMixin, Trainer, safe_trainer
from recbole_compress.trainer.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_item_mapping,
    config_from_plain,
    config_to_plain,
    item_fingerprint,
    load_checkpoint,
    save_checkpoint,
    unique_checkpoint_name,
)
from recbole_compress.trainer.teacher import DistillationTrainer, load_teacher, phase_config, train_or_load_teacher
