"""RecBole's trainers with checkpoints that work on torch >= 2.6 (see :mod:`recbole_compress.trainer.checkpoint`).

:class:`CheckpointMixin` replaces exactly the three places where RecBole's ``Trainer`` touches checkpoint files:
``_save_checkpoint``, ``resume_checkpoint`` and the best-model reload of ``evaluate``. Everything else (training loop,
early stopping, full-ranking evaluation, logging) is RecBole's own.
"""
import os
from functools import lru_cache

import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_compress import __version__
from recbole_compress.trainer.checkpoint import (
    CheckpointError,
    check_item_mapping,
    config_to_plain,
    item_fingerprint,
    load_checkpoint,
    save_checkpoint,
    unique_checkpoint_name,
)


class CheckpointMixin:
    """Weights-only checkpoints with the item-mapping fingerprint and a unique file per run."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.saved_model_file = os.path.join(self.checkpoint_dir, unique_checkpoint_name(config["model"]))
        self.item_fingerprint = None
        self._resumed_fingerprint = None

    # -- state -----------------------------------------------------------------------------------------------
    def checkpoint_state(self, epoch):
        """The dict written to the checkpoint file (plain data and tensors only)."""
        state = {
            "recbole_compress_version": __version__,
            "config": config_to_plain(self.config),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "item_fingerprint": self.item_fingerprint,
            "n_items": int(getattr(self.model, "n_items", 0) or 0),
        }
        return state

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        save_checkpoint(self.checkpoint_state(epoch), saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _load_model_state(self, checkpoint):
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))

    # -- RecBole entry points ------------------------------------------------------------------------------------
    def fit(self, train_data, *args, **kwargs):
        self.item_fingerprint = item_fingerprint(train_data._dataset)
        if self._resumed_fingerprint is not None and self._resumed_fingerprint != self.item_fingerprint:
            raise CheckpointError(
                f"the resumed checkpoint {self.saved_model_file!r} was trained on another item-id mapping than "
                f"this run's dataset {self.config['dataset']!r}"
            )
        return super().fit(train_data, *args, **kwargs)

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            raise CheckpointError(
                f"{resume_file!r} holds a {checkpoint['config']['model']} model, not {self.config['model']}"
            )
        self._resumed_fingerprint = checkpoint.get("item_fingerprint")
        self._load_model_state(checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False, **kwargs):
        if not eval_data:
            return
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            check_item_mapping(checkpoint, eval_data._dataset, checkpoint_file)
            self._load_model_state(checkpoint)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(
            eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress, **kwargs
        )


class Trainer(CheckpointMixin, RecBoleTrainer):
    """RecBole's ``Trainer`` with weights-only checkpoints: the default trainer of every plugin model."""


@lru_cache(maxsize=None)
def safe_trainer(trainer_class):
    """``trainer_class`` with :class:`CheckpointMixin` mixed in (unchanged if it already has it)."""
    if issubclass(trainer_class, CheckpointMixin):
        return trainer_class
    if trainer_class is RecBoleTrainer:
        return Trainer
    return type(
        trainer_class.__name__,
        (CheckpointMixin, trainer_class),
        {"__module__": __name__, "__doc__": f"{trainer_class.__doc__ or ''}\n(with weights-only checkpoints)"},
    )
