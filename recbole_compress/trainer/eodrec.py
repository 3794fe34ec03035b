"""EODRec's trainer: the shared teacher phase, then the student's two stages with their own optimisers.

Built on :class:`recbole_compress.trainer.teacher.DistillationTrainer` (which trains or loads the teacher and calls
``model.set_teacher``). Stage one (code learning, teacher frozen) starts with ``code_fit_steps`` updates of the
code encoder on the teacher's table alone (:meth:`EODRecTrainer.fit_codes`) and goes on for the student's epochs
``[0, pretrain_epochs)``;
at the first epoch after them the trainer

- freezes the codes (``model.freeze_codes()``: the encoder's codes, made unique by ``code_collision_handling``, the
  codebooks optionally refitted, ``codebook_refit``) and switches the model to the distillation stage,
- re-initialises the student's backbone and distillation heads if ``reinit_after_pretrain`` (the authors' code
  starts stage two from a fresh backbone and keeps only the codes and codebooks), and copies the teacher's backbone
  into the student's when ``student_backbone_init: teacher``,
- unfreezes the teacher if ``teacher_trainable`` (bidirectional distillation),
- rebuilds the optimiser: codebooks (and, in stage one, the code encoder) at ``codebook_learning_rate``, everything
  else (student backbone and heads, and the trainable teacher) at ``learning_rate``; the encoder leaves it,
- restarts early stopping, so that the best model kept is a stage-two model.

In stage two the trainer tells the model the steps of an epoch (``set_mixup_schedule``), over which the mixup is
annealed (``mixup_anneal_epochs``). During stage one early stopping never ends the run. Checkpoints hold the
student's state_dict (never the teacher) and, for resuming, the bidirectionally updated teacher under
``teacher_state_dict``.
"""
import numpy as np
from recbole.utils import set_color

from recbole_compress.checkpoint import load_checkpoint
from recbole_compress.config_keys import Key
from recbole_compress.trainer.teacher import DistillationTrainer


class _DeferredOptimizerState:
    """Stands in for the optimiser while a checkpoint is resumed: its state is loaded once the teacher exists."""

    def __init__(self):
        self.state = None

    def load_state_dict(self, state):
        self.state = state


class EODRecTrainer(DistillationTrainer):
    """Teacher phase, then EODRec's code-learning stage and distillation stage (see the module docstring)."""

    config_keys = (
        Key("pretrain_epochs", int, low=0),
        Key("reinit_after_pretrain", bool),
        Key("codebook_learning_rate", float, low=0, low_open=True),
    )

    def __init__(self, config, model):
        super().__init__(config, model)
        self.pretrain_epochs = config["pretrain_epochs"]
        self.reinit_after_pretrain = config["reinit_after_pretrain"]
        self._stopping_step = self.stopping_step
        self._resume_teacher_state = None
        self._resume_optimizer_state = None

    # -- optimiser -------------------------------------------------------------------------------------------------
    def param_groups(self):
        """Parameter groups of the model's current stage (and of the teacher, when it is trained)."""
        model = self.model
        codebook_lr = self.config["codebook_learning_rate"]
        slow = list(model.item_codebook.parameters())  # the codebooks (and pair factors): the item representation
        if model.stage == "pretrain":
            slow += list(model.code_encoder.parameters())
        excluded = {id(p) for p in model.code_encoder.parameters()} | {id(p) for p in model.item_codebook.parameters()}
        fast = [p for p in model.parameters() if id(p) not in excluded]
        groups = [{"params": fast}, {"params": slow, "lr": codebook_lr, "name": "codebooks"}]
        teacher = model.teacher
        if model.stage == "distill" and model.teacher_trainable and teacher is not None:
            groups.append({"params": list(teacher.parameters()), "name": "teacher"})
        return groups

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", self.param_groups())
        return super()._build_optimizer(**kwargs)

    # -- teacher ---------------------------------------------------------------------------------------------------
    def prepare_teacher(self, train_data, valid_data, verbose=True):
        teacher = super().prepare_teacher(train_data, valid_data, verbose=verbose)
        if self.model.stage == "distill":
            self._enter_distillation_teacher_mode()
        elif self.start_epoch == 0:
            self.fit_codes()
        if self._resume_teacher_state is not None:
            teacher.load_state_dict(self._resume_teacher_state)
        if self._resume_optimizer_state is not None:
            self.optimizer = self._build_optimizer()
            self.optimizer.load_state_dict(self._resume_optimizer_state)
        self._resume_teacher_state = self._resume_optimizer_state = None
        return teacher

    def _enter_distillation_teacher_mode(self):
        teacher = self.model.teacher
        if teacher is not None and self.model.teacher_trainable:
            teacher.requires_grad_(True)

    # -- stages ----------------------------------------------------------------------------------------------------
    def fit_codes(self):
        """The start of stage one: the code encoder and codebooks fitted to the teacher's table (``code_fit_*``)."""
        if self.config["code_fit_steps"] <= 0:
            return None
        summary = self.model.fit_codes()
        self.logger.info(
            set_color("EODRec code fitting", "green")
            + f": {summary['steps']} steps, reconstruction error {summary['first_mse']:.4f} -> "
            f"{summary['last_mse']:.4f}; {summary['distinct_codes']} distinct codes for {summary['items']} items"
        )
        return summary

    def start_distillation(self, epoch_idx):
        """The switch from code learning to distillation (see the module docstring)."""
        model = self.model
        model.freeze_codes()
        if self.reinit_after_pretrain and self.pretrain_epochs > 0:
            model.reset_student_parameters()
        if model.student_backbone_init == "teacher":
            model.init_backbone_from_teacher()
        self._enter_distillation_teacher_mode()
        self.optimizer = self._build_optimizer()
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result = None
        self.cur_step = 0
        stats = model.item_codebook.statistics()
        assignment = model.code_assignment or {}
        before = assignment.get("before", stats)
        self.logger.info(
            set_color("EODRec stage two", "green")
            + f" from epoch {epoch_idx}: codes frozen; encoder codes: {before['items_sharing_a_code']} of "
            f"{before['items']} items share their code (largest group {before['largest_group']}); "
            f"{model.code_collision_handling}: {assignment.get('moved', 0)} items moved, now "
            f"{stats['distinct_codes']} distinct codes, {stats['items_sharing_a_code']} items sharing a code; teacher "
            f"{'trainable' if model.teacher_trainable else 'frozen'}"
        )
        share = model.collision_share(stats)
        if share > model.code_collision_warning:
            self.logger.warning(
                f"EODRec: {stats['items_sharing_a_code']} of {stats['items']} items ({share:.1%}) share their code "
                f"with another item (more than code_collision_warning={model.code_collision_warning}); such items "
                f"get the same embedding and the same score. Use code_collision_handling: repair (or raise "
                f"codebook_size)"
            )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self.model.stage == "pretrain" and epoch_idx >= self.pretrain_epochs:
            self.start_distillation(epoch_idx)
        if self.model.stage == "distill":
            self.model.set_mixup_schedule(len(train_data))
        # early stopping cannot end the run during code learning
        self.stopping_step = self._stopping_step if self.model.stage == "distill" else 10**9
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def checkpoint_state(self, epoch, best=False):
        state = super().checkpoint_state(epoch, best=best)
        teacher = self.model.teacher
        if teacher is not None and self.model.stage == "distill" and self.model.teacher_trainable:
            state["teacher_state_dict"] = teacher.state_dict()
        return state

    def resume_checkpoint(self, resume_file, dataset=None):
        # the optimiser's groups depend on the stage and on the teacher, which only exists once fit() starts
        optimizer, deferred = self.optimizer, _DeferredOptimizerState()
        self.optimizer = deferred
        try:
            super().resume_checkpoint(resume_file, dataset=dataset)
        finally:
            self.optimizer = optimizer
        self._resume_optimizer_state = deferred.state
        self._resume_teacher_state = load_checkpoint(str(resume_file), map_location=self.device).get(
            "teacher_state_dict"
        )

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        result = super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                             callback_fn=callback_fn)
        if self.model.stage == "pretrain":
            self.logger.warning(
                f"EODRec ended in stage one (epochs={self.epochs} <= pretrain_epochs={self.pretrain_epochs}): "
                f"no distillation happened"
            )
        return result

