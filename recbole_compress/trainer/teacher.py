"""The trainer of a student that needs a trained teacher (EODRec, AdaRec): the teacher phase, then the student.

The student model declares its teacher phase (``phases = (Phase("teacher_", "EODRecTeacher"),)``, see
:mod:`recbole_compress.config_keys`); the run layer (:mod:`recbole_compress.run`) gives the trainer
``trainer.phases``, which trains the teacher on the run's split with the ``teacher_*`` keys, or loads and checks a
``teacher_checkpoint``.
"""
from recbole_compress.trainer.base import Trainer


class DistillationTrainer(Trainer):
    """Trainer of a student that needs a trained teacher: phase 1 trains (or loads) the teacher, phase 2 the student.

    The student implements ``set_teacher(teacher)``, called once with the trained teacher in eval mode before the
    student's first epoch (the teacher must not become a registered submodule of the student, or its weights would
    count in the student's size and checkpoint). The teacher's checkpoint path is written into the run's config as
    ``teacher_checkpoint``, so the student's checkpoint records where its teacher is, and listed in
    ``self.phase_checkpoints`` (the benchmark evaluates the in-run teacher as the student's counterpart).
    """

    config_written = ("teacher_checkpoint",)

    teacher_prefix = "teacher_"

    def __init__(self, config, model):
        super().__init__(config, model)
        self.phases = None  # set by the run layer: recbole_compress.run.PhaseRunner
        self.teacher = None
        self.teacher_info = None
        self.phase_checkpoints = {}

    def prepare_teacher(self, train_data, valid_data, verbose=True):
        if self.phases is None:
            raise RuntimeError(
                f"{type(self).__name__} trains its teacher through the run layer: build the run with "
                f"recbole_compress.run.build(config) (as quick_start and the command line do), or, by hand, set "
                f"trainer.phases = recbole_compress.run.PhaseRunner(config, Data(dataset, train, valid, test))"
            )
        teacher, info = self.phases.teacher(self.teacher_prefix, verbose=verbose,
                                            show_progress=self.config["show_progress"])
        self.config[f"{self.teacher_prefix}checkpoint"] = info["checkpoint"]
        self.phase_checkpoints["teacher"] = info["checkpoint"]
        self.adopt_teacher(teacher, info)
        return teacher

    def adopt_teacher(self, teacher, info=None):
        """Give the student its trained ``teacher``: ``set_teacher``, and where that adds parameters (projections
        to the teacher's sizes), the optimizer is built again so that they train too (before a resume loads its
        state into it)."""
        self.teacher, self.teacher_info = teacher, info
        before = {id(p) for p in self.model.parameters()}
        self.model.set_teacher(teacher)
        if {id(p) for p in self.model.parameters()} != before:
            self.setup_distributed()  # DDP must see the student's new parameters (no-op in one process)
            if self.start_epoch == 0:
                self.optimizer = self._build_optimizer()

    def needs_teacher(self):
        """True when the student's training needs the teacher (default: always)."""
        return True

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.teacher is None and self.needs_teacher():
            self.prepare_teacher(train_data, valid_data, verbose=verbose)
        return super().fit(
            train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress, callback_fn=callback_fn
        )
