"""Trainers of AdaRec: the teachers' (StepLR), the search phase's (two optimisers) and the all-phases student trainer.

:class:`AdaRecTrainer` runs AdaRec's phases in one run, on the run's split, each logged and each saving its artefact:

1. **teacher** (``teacher_*`` keys; the run layer's phases, :class:`recbole_compress.run.PhaseRunner`): trained,
   or loaded from ``teacher_checkpoint`` (refused if made on another dataset) -> the teacher checkpoint;
2. **search** (``search_*`` keys, :class:`AdaRecSearchTrainer` on the :class:`AdaRecSearch` supernet with the
   student's structure) -> the search checkpoint (best validation epoch: network weights, ``alpha``, EMD layer
   weights);
3. **derive**: the argmax operation per edge of the best epoch's ``alpha`` -> ``<search checkpoint>.genotype.json``,
   and ``adarec_arch`` / ``adarec_arch_file`` / ``search_checkpoint`` in the student's config (so in its checkpoint);
4. **retrain** the student, warm-started from the supernet's weights (``retrain_init: supernet``) or from scratch
   (``random``) -> the student checkpoint.

A genotype (``adarec_arch``, ``adarec_arch_file``) or a ``search_checkpoint`` skips phases 1-3 (a given
``teacher_checkpoint`` is then still loaded and recorded, for comparisons); a ``teacher_checkpoint`` alone skips
phase 1. ``phase_checkpoints`` lists the artefacts (``teacher``, ``search``, ``genotype``).
"""
import os
import time

from recbole.utils import set_color

from recbole_compress.checkpoint import check_item_mapping, load_checkpoint
from recbole_compress.config_keys import DataRule, Key, Relation
from recbole_compress.errors import CheckpointError
from recbole_compress.model.layers.gumbel_mixed_op import TemperatureSchedule
from recbole_compress.model.sequential_recommender.adarec import (
    GENOTYPE_KEYS,
    GENOTYPE_RELATIONS,
    GENOTYPE_WORDS,
    RETRAIN_INITS,
    genotype_file_ok,
    genotype_given,
    genotype_to_json,
    read_genotype_file,
)
from recbole_compress.trainer.base import Trainer
from recbole_compress.trainer.teacher import DistillationTrainer


class StepLRMixin:
    """Step decay of the learning rate per epoch, ``lr_e = lr * lr_decay_gamma ** (e // lr_decay_step)``, set at the
    start of every epoch from the epoch index (so a resumed run continues the schedule). ``lr_decay_step`` 0 or
    empty = constant. RecBole 1.2.1's Trainer has no scheduler."""

    config_keys = (
        Key("lr_decay_step", int, low=0, none_ok=True),
        Key("lr_decay_gamma", float, low=0, low_open=True, none_ok=True),
    )

    def _decayed_optimizers(self):
        """``[(optimizer, base learning rate, gamma)]``."""
        return [(self.optimizer, self.config["learning_rate"], self.config["lr_decay_gamma"])]

    def _set_epoch_learning_rates(self, epoch_idx):
        step = self.config["lr_decay_step"]
        for optimizer, base, gamma in self._decayed_optimizers():
            factor = gamma ** (epoch_idx // step) if step and gamma is not None else 1.0
            for group in optimizer.param_groups:
                group["lr"] = base * factor

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._set_epoch_learning_rates(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)


class StepLRTrainer(StepLRMixin, Trainer):
    """The plugin's Trainer with the per-epoch StepLR schedule (AdaRec's teachers)."""


class JointOptimizer:
    """Two optimisers stepped together (network weights and architecture logits, on the same batch)."""

    def __init__(self, **optimizers):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self):
        for optimizer in self.optimizers.values():
            optimizer.step()

    @property
    def param_groups(self):
        return [g for optimizer in self.optimizers.values() for g in optimizer.param_groups]

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state):
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])

    def __getitem__(self, name):
        return self.optimizers[name]


class AdaRecSearchTrainer(StepLRMixin, DistillationTrainer):
    """Search phase: network weights (``learner``, ``learning_rate``, ``weight_decay``) and architecture logits
    (``arch_learner``, ``arch_learning_rate``, ``arch_weight_decay``) with their own optimisers, stepped jointly on
    every batch; the Gumbel temperature set per epoch (``gumbel_tau_init * gumbel_tau_decay_rate **
    (epoch // gumbel_tau_decay_epochs)``). After training it reloads the best epoch, derives the genotype and writes
    it to ``<checkpoint>.genotype.json`` (``self.genotype``, ``self.genotype_file``)."""

    config_keys = (
        Key("arch_learner", str),
        Key("arch_learning_rate", float, low=0, low_open=True),
        Key("arch_weight_decay", float, low=0),
        Key("arch_lr_decay_gamma", float, low=0, low_open=True, none_ok=True),
        Key("gumbel_tau_decay_rate", float, low=0, low_open=True),
        Key("gumbel_tau_decay_epochs", int, low=1),
    )

    def __init__(self, config, model):
        super().__init__(config, model)
        self.genotype = None
        self.genotype_file = None

    def resume_checkpoint(self, resume_file, dataset=None):
        """The supernet's projections to the teacher's sizes exist once it has its teacher (its checkpoint holds
        them): the teacher of ``teacher_checkpoint`` is adopted first."""
        if self.teacher is None:
            self.prepare_teacher(None, None, verbose=False)
        super().resume_checkpoint(resume_file, dataset=dataset)

    def _build_optimizer(self, **kwargs):
        weights = super()._build_optimizer(params=self.model.weight_parameters())
        arch = super()._build_optimizer(
            params=self.model.arch_parameters(),
            learner=self.config["arch_learner"],
            learning_rate=self.config["arch_learning_rate"],
            weight_decay=self.config["arch_weight_decay"],
        )
        return JointOptimizer(weights=weights, arch=arch)

    def _decayed_optimizers(self):
        return [
            (self.optimizer["weights"], self.config["learning_rate"], self.config["lr_decay_gamma"]),
            (self.optimizer["arch"], self.config["arch_learning_rate"], self.config["arch_lr_decay_gamma"]),
        ]

    def temperature(self, epoch_idx):
        schedule = TemperatureSchedule(
            self.config["gumbel_tau_init"], self.config["gumbel_tau_decay_rate"], self.config["gumbel_tau_decay_epochs"]
        )
        return schedule(epoch_idx)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.set_temperature(self.temperature(epoch_idx))
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        result = super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                             callback_fn=callback_fn)
        if saved and os.path.isfile(self.saved_model_file):
            self._load_model_state(load_checkpoint(self.saved_model_file, map_location=self.device))
        self.genotype = self.model.derive_genotype()
        if saved:
            self.genotype_file = os.path.splitext(self.saved_model_file)[0] + ".genotype.json"
            alphas = [alpha.detach().cpu().tolist() for alpha in self.model.alphas]
            text = genotype_to_json(
                self.genotype,
                num_nodes=self.model.num_nodes,
                num_cells=self.model.num_cells,
                embedding_size=self.model.embedding_size,
                alpha=alphas,
                source={
                    "dataset": self.config["dataset"],
                    "teacher_checkpoint": self.config["teacher_checkpoint"],
                    "search_checkpoint": self.saved_model_file,
                    "best_valid_score": float(self.best_valid_score),
                },
            )
            tmp = self.genotype_file + f".tmp-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            os.replace(tmp, self.genotype_file)
        return result


def _file_search_checkpoint(path):
    """The search checkpoint a genotype file names as its source (None if none, or if the file cannot be read)."""
    try:
        _, data = read_genotype_file(path)
    except (OSError, ValueError):
        return None
    return (data.get("source") or {}).get("search_checkpoint")


def _genotype_file_in_use(config):
    return not genotype_given(config) and bool(config["adarec_arch_file"])


def _warm_start_source(config):
    """True unless ``retrain_init: supernet`` is asked with a given genotype and no supernet to copy from."""
    if config["retrain_init"] != "supernet" or config["search_checkpoint"]:
        return True
    return _genotype_file_in_use(config) and bool(_file_search_checkpoint(config["adarec_arch_file"]))


def search_checkpoint_problem(config, dataset):
    """A message when ``search_checkpoint`` was made on another item-id mapping than this dataset's, else None."""
    path = config["search_checkpoint"]
    if not path:
        return None
    try:
        check_item_mapping(load_checkpoint(path), dataset, f"search_checkpoint {path!r}")
    except CheckpointError as e:
        return str(e)
    return None


class AdaRecTrainer(StepLRMixin, DistillationTrainer):
    """All of AdaRec in one ``fit``: teacher -> search -> derive -> retrain (see the module docstring)."""

    config_written = ("teacher_checkpoint", "search_checkpoint", "adarec_arch", "adarec_arch_file")
    #: 1: the in-run search trains the supernet's projections to the teacher (2026-12-02); trainings made before are
    #: not reused by the benchmark (``recbole_compress.benchmark.defaults_digest``)
    results_revision = 1
    config_keys = GENOTYPE_KEYS + (
        Key("retrain_init", str, choices=RETRAIN_INITS),
        Key("adarec_arch_file", str, none_ok=True, file=True),
        Key("search_checkpoint", str, none_ok=True, checkpoint_of=("AdaRecSearch",)),
    )
    config_relations = GENOTYPE_RELATIONS + (
        Relation(("adarec_arch_file", "num_nodes"), genotype_file_ok,
                 f"adarec_arch_file must be a JSON file with a 'genotype' entry (as the search phase writes): "
                 f"{GENOTYPE_WORDS}", when=_genotype_file_in_use),
        Relation(("retrain_init", "search_checkpoint"), _warm_start_source,
                 "retrain_init: supernet warm-starts the student from the search phase's supernet, but the "
                 "architecture is given (adarec_arch or adarec_arch_file) and no search_checkpoint is set: give "
                 "search_checkpoint, or retrain_init: random",
                 when=lambda c: genotype_given(c) or bool(c["adarec_arch_file"])),
    )
    data_rules = (DataRule("search_checkpoint", search_checkpoint_problem),)

    @classmethod
    def prepare_config(cls, config):
        """Before the student is built (the run layer calls this): the genotype of ``adarec_arch_file`` or of
        ``search_checkpoint`` into ``adarec_arch`` (so the student's checkpoint holds it), and the search checkpoint a
        genotype file names into ``search_checkpoint`` (for the supernet warm start). ``adarec_arch`` wins over the
        file, the file over the checkpoint; nothing to do without any of them (the run searches)."""
        if genotype_given(config):
            return
        path = config["adarec_arch_file"]
        if path:
            genotype, data = read_genotype_file(path)
            if not config["search_checkpoint"] and config["retrain_init"] == "supernet":
                config["search_checkpoint"] = (data.get("source") or {}).get("search_checkpoint")
        elif config["search_checkpoint"]:
            genotype = load_checkpoint(config["search_checkpoint"])["other_parameter"]["genotype"]
        else:
            return
        config["adarec_arch"] = genotype

    def _phase(self, name, message):
        self.logger.info(set_color(f"AdaRec phase {name}", "green") + f": {message}")

    def needs_teacher(self):
        """The teacher is needed to search; with a given genotype, only when ``teacher_checkpoint`` asks for it."""
        return self.model.genotype is None or bool(self.config["teacher_checkpoint"])

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        model = self.model
        if model.genotype is None:
            self.prepare_teacher(train_data, valid_data, verbose=verbose)
            self.run_search(verbose=verbose, show_progress=show_progress)
        else:
            if self.needs_teacher() and self.teacher is None:
                self.prepare_teacher(train_data, valid_data, verbose=verbose)
            self._phase("search", f"skipped, architecture given by the configuration: {model.genotype}")

        init = self.config["retrain_init"]
        if init == "supernet" and self.start_epoch == 0:
            path = self.config["search_checkpoint"]
            state = load_checkpoint(path, map_location=self.device)["state_dict"]
            copied, missing = model.load_supernet_weights(state)
            self._phase("retrain", f"warm start from the supernet {path}: {len(copied)} tensors copied, "
                                   f"{len(missing)} not in the supernet {missing}")
        if self.start_epoch == 0:
            self.optimizer = self._build_optimizer()
        self._phase("retrain", f"training the derived student ({init} init) for up to {self.epochs} epochs")
        result = super().fit(
            train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress, callback_fn=callback_fn
        )
        if saved:
            self._phase("retrain done", f"best valid {result[0]} saved in {self.saved_model_file}")
        return result

    def run_search(self, verbose=True, show_progress=False):
        """Phases search and derive: train the supernet with the teacher, set the student's genotype."""
        teacher_model = self.teacher_info["model"] if self.teacher_info else self.config["teacher_model"]
        search = self.phases.build("search_", extra={"teacher_checkpoint": self.config["teacher_checkpoint"],
                                                     "teacher_model": teacher_model})
        config, trainer = search.config, search.trainer
        trainer.adopt_teacher(self.teacher, self.teacher_info)  # the supernet's projections train with it
        self._phase("search", f"supernet of {config['num_cells']} cells x {config['num_nodes']} nodes, width "
                              f"{config['embedding_size']}, for up to {config['epochs']} epochs")
        start = time.time()
        trainer.fit(search.data.train, search.data.valid, verbose=verbose, saved=True, show_progress=show_progress)
        self.phases.record_seconds("search_", trainer)
        self.search_trainer = trainer
        self._phase("search done", f"{time.time() - start:.0f}s, best valid {trainer.best_valid_score}, saved in "
                                   f"{trainer.saved_model_file}")
        self.phase_checkpoints["search"] = trainer.saved_model_file
        self.phase_checkpoints["genotype"] = trainer.genotype_file
        self.config["search_checkpoint"] = trainer.saved_model_file
        self.config["adarec_arch"] = trainer.genotype
        self.config["adarec_arch_file"] = trainer.genotype_file
        self.model.set_genotype(trainer.genotype)
        self._phase("derive", f"genotype {trainer.genotype} written to {trainer.genotype_file}")
        return trainer.genotype
