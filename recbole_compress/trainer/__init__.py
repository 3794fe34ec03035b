"""Trainers of recbole-compress: RecBole's training loop with checkpoints that load on torch >= 2.6."""
from recbole_compress.checkpoint import (
    CHECKPOINT_FORMAT,
    check_item_mapping,
    config_to_plain,
    item_fingerprint,
    load_checkpoint,
    save_checkpoint,
    unique_checkpoint_name,
)
from recbole_compress.errors import CheckpointError
from recbole_compress.trainer.base import CheckpointMixin, Trainer, safe_trainer
from recbole_compress.trainer.teacher import DistillationTrainer
