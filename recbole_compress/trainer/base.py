"""RecBole's trainers with checkpoints that work on torch >= 2.6 (see :mod:`recbole_compress.trainer.checkpoint`),
and distributed (DDP) training that works on CPU too.

:class:`CheckpointMixin` replaces exactly the three places where RecBole's ``Trainer`` touches checkpoint files:
``_save_checkpoint``, ``resume_checkpoint`` and the best-model reload of ``evaluate``. :class:`DistributedMixin`
replaces RecBole's CUDA-only ``DistributedDataParallel`` wrapping. Everything else (training loop, early stopping,
full-ranking evaluation, logging, the ``callback_fn`` of ``fit``) is RecBole's own. A trainer that subclasses
:class:`Trainer` (the distillation and search trainers) inherits both.
"""
import os
import time
from functools import lru_cache

import torch
import torch.distributed as dist
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_compress import __version__
from recbole_compress.checkpoint import (
    capture_rng,
    check_item_mapping,
    check_state_dict,
    config_to_plain,
    item_fingerprint,
    last_checkpoint_name,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    to_plain,
    unique_checkpoint_name,
)
from recbole_compress.errors import CheckpointError


def is_distributed(config):
    """True for a process of a distributed (DDP) run, as RecBole's ``single_spec`` says."""
    return not config["single_spec"]


class DistributedMixin:
    """Distributed data-parallel training on CPU (gloo) as well as on GPU (NCCL).

    RecBole's ``AbstractTrainer`` wraps the model in ``DistributedDataParallel(model, device_ids=[local_rank])``, which
    torch refuses for a CPU model, and converts BatchNorm to SyncBatchNorm, which needs CUDA. Here the model is
    wrapped with device ids on a GPU only, SyncBatchNorm is used on a GPU only (on CPU each process keeps its own batch
    statistics, and DDP broadcasts rank 0's buffers), and two things RecBole leaves to chance are made safe:

    - the gradients of parameters the optimizer updates but the wrapped model does not own (e.g. a trainable teacher
      held outside the student) are averaged across processes before every optimizer step, so processes never drift
      apart;
    - ``fit`` ends with a barrier, so no process reloads the best checkpoint (written by rank 0 only) before rank 0
      has finished writing it.

    The rest is RecBole's own DDP logic (``set_reduce_hook``, ``sync_grad_loss``, distributed samplers, the metric
    all-gather of ``evaluate``). A trainer whose model gains parameters after ``__init__`` calls
    :meth:`setup_distributed` again after rebuilding its optimizer.
    """

    def __init__(self, config, model):
        # RecBole's ensure_dir checks, then creates: DDP processes racing on a fresh checkpoint_dir can both see it
        # missing, and one fails with FileExistsError. Creating it first with exist_ok closes that race.
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        if not is_distributed(config):
            super().__init__(config, model)
            return
        config["single_spec"] = True  # keep RecBole's AbstractTrainer from its CUDA-only DDP wrapping
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = False
        self.setup_distributed()
        if getattr(self, "optimizer", None) is not None:  # built while single_spec was set: hook it now
            self._hook_optimizer(self.optimizer)

    def setup_distributed(self):
        """(Re)wrap ``self.model`` in ``DistributedDataParallel``; a no-op in a single-process run."""
        if not is_distributed(self.config):
            return
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.distributed_model = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.config["local_rank"]] if on_gpu else None
        )
        self._ddp_param_ids = {id(p) for p in self.model.parameters()}

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        if is_distributed(self.config):
            self._hook_optimizer(optimizer)
        return optimizer

    def _hook_optimizer(self, optimizer):
        """Average outside gradients before every step of ``optimizer``: a torch optimizer, or an object holding
        torch optimizers as attributes, in a list or in a dict (e.g. two optimisers stepped jointly)."""
        if isinstance(optimizer, torch.optim.Optimizer):
            optimizer.register_step_pre_hook(self._average_outside_grads)
            return
        for value in getattr(optimizer, "__dict__", {}).values():
            inner = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            for item in inner:
                if isinstance(item, torch.optim.Optimizer):
                    item.register_step_pre_hook(self._average_outside_grads)

    def _average_outside_grads(self, optimizer, args, kwargs):
        owned = getattr(self, "_ddp_param_ids", None)
        if owned is None:
            return
        outside = [
            p for group in optimizer.param_groups for p in group["params"] if p.requires_grad and id(p) not in owned
        ]
        if not outside:
            return
        # one all-reduce: every gradient (zeros where a process has none) and, per parameter, how many had one
        has_grad = torch.tensor([float(p.grad is not None) for p in outside], device=outside[0].device)
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in outside] + [has_grad]
        )
        dist.all_reduce(flat)
        counts = flat[-len(outside):]
        flat = flat[: -len(outside)] / dist.get_world_size()
        offset = 0
        for i, p in enumerate(outside):
            n = p.numel()
            if counts[i] > 0:  # a parameter no process has a gradient for stays without one (not stepped)
                p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        if is_distributed(self.config):
            dist.barrier()
        return result


def _minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class CheckpointMixin:
    """Weights-only checkpoints with the item-mapping fingerprint, a unique file per run, and exact resume.

    Two files per run: the best validation epoch (``saved_model_file``, RecBole's) and the last complete epoch
    (``last_model_file``, ``<best file>-last.pth``), written at the start of every epoch and at the end of ``fit``.
    Both hold what continuing needs: model, optimizer, early-stopping state, losses, and every random state
    (python, numpy, torch, the training loader's shuffling), so that :meth:`resume_checkpoint` continues exactly as
    the uninterrupted run would have. Files are written atomically: an interruption never damages the previous one.
    In a distributed run every process uses rank 0's file names (rank 0 alone writes).
    """

    #: keys a trainer writes into the run's config while it trains (a resumed run takes them from its checkpoint)
    config_written = ()

    def __init__(self, config, model):
        super().__init__(config, model)
        name = unique_checkpoint_name(config["model"])
        if is_distributed(config):
            shared = [name]
            dist.broadcast_object_list(shared, src=0)
            name = shared[0]
        self.saved_model_file = os.path.join(self.checkpoint_dir, name)
        self.item_fingerprint = None
        self._resumed_fingerprint = None
        self._pending_rng = None
        self._fit_start_epoch = 0
        self.seconds_before_resume = 0.0  # what ``fit`` took in the process that wrote the resumed checkpoint
        self._fit_clock = None  # perf_counter() when this process's ``fit`` started, while it runs
        self._fit_elapsed = 0.0  # seconds this process's ``fit`` took, once it has returned
        self._train_data = None
        self._saved = False
        self.last_valid_result = None
        self.last_train_loss = None
        self.epoch_seconds = []  # training seconds of every epoch (validation excluded), before a resume included
        self.last_eval_struct = None  # what RecBole's evaluator got last (per-user top-k hits: rec.topk)
        evaluate = self.evaluator.evaluate

        def keep_struct(struct):
            self.last_eval_struct = struct
            return evaluate(struct)

        self.evaluator.evaluate = keep_struct

    @property
    def last_model_file(self):
        return last_checkpoint_name(self.saved_model_file)

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx > self._fit_start_epoch:
            if self._saved:
                self._save_last(epoch_idx - 1)  # the previous epoch is complete (validation, early stopping included)
            if self._fit_clock is not None:  # inside ``fit`` (an epoch run on its own has no budget to report)
                self._log_progress(epoch_idx)
        start = time.perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self.epoch_seconds.append(time.perf_counter() - start)
        self.last_train_loss = loss
        return loss

    def fit_seconds(self):
        """Seconds ``fit`` has taken for this training so far, an earlier process's before a resume included."""
        running = time.perf_counter() - self._fit_clock if self._fit_clock is not None else self._fit_elapsed
        return self.seconds_before_resume + running

    def _log_progress(self, epoch_idx):
        """Overall progress at the start of an epoch: epochs done of the planned budget, elapsed time, and when the
        budget would end at this pace (early stopping may end it sooner)."""
        done = epoch_idx - self._fit_start_epoch
        elapsed = time.perf_counter() - self._fit_clock
        left = (self.epochs - epoch_idx) * elapsed / done
        end = time.strftime("%H:%M", time.localtime(time.time() + left))
        self.logger.info(
            set_color("progress", "blue") + f": epoch {epoch_idx} of {self.epochs} starts; {_minutes(elapsed)} "
            f"elapsed, at most {_minutes(left)} left (ends by {end}; early stopping after {self.stopping_step + 1} "
            f"validations in a row without improvement may end it sooner)"
        )

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.last_valid_result = valid_result
        return valid_score, valid_result

    def epoch_report(self, epoch_idx, valid_score):
        """What one epoch produced: ``epoch``, ``train_loss`` (summed over the epoch's batches, as
        RecBole logs it; ``train_loss_<i>`` for each part of a tuple loss), ``valid_score``, every validation metric
        under RecBole's name (e.g. ``mrr@10``), ``best_valid_score`` so far (numbers), ``last_validation`` (True when
        ``fit`` ends after this validation: epochs spent or RecBole's early stopping) and ``checkpoint_file`` (where
        the best epoch so far is saved, if the run saves). Meant for ``fit``'s ``callback_fn(epoch_idx, valid_score)``, which RecBole calls
        after each validation (see :func:`recbole_compress.quick_start.objective_function`)."""
        report = {"epoch": int(epoch_idx), "valid_score": float(valid_score)}
        loss = self.train_loss_dict.get(epoch_idx)
        if loss is not None:
            report["train_loss"] = float(loss)
        if isinstance(self.last_train_loss, tuple):
            for i, part in enumerate(self.last_train_loss):
                report[f"train_loss_{i}"] = float(part)
        for key, value in (self.last_valid_result or {}).items():
            report[key] = float(value)
        report["best_valid_score"] = float(self.best_valid_score)
        # the trainer's last validation: the epoch budget is spent or RecBole's early stopping ends the run
        report["last_validation"] = bool(
            epoch_idx + 1 + self.eval_step > self.epochs or self.cur_step > self.stopping_step
        )
        report["checkpoint_file"] = self.saved_model_file
        return report

    # -- state -----------------------------------------------------------------------------------------------
    def checkpoint_state(self, epoch, best=False):
        """The dict written to a checkpoint file (plain data and tensors only). ``best``: written by RecBole right
        after a new best validation, before it records that validation's result."""
        generator = getattr(self._train_data, "generator", None)
        phases = getattr(self, "phases", None)
        best_result = self.last_valid_result if best else self.best_valid_result
        return {
            "recbole_compress_version": __version__,
            "config": config_to_plain(self.config),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": to_plain(dict(best_result)) if best_result is not None else None,
            "train_loss_dict": {int(k): to_plain(v) for k, v in self.train_loss_dict.items()},
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng(generator),
            "best_model_file": self.saved_model_file,
            "item_fingerprint": self.item_fingerprint,
            "n_items": int(getattr(self.model, "n_items", 0) or 0),
            "fit_seconds": float(self.fit_seconds()),
            "epoch_seconds": [float(x) for x in self.epoch_seconds],
            "phase_seconds": dict(phases.seconds) if phases is not None else {},
        }

    def _write(self, state, path, verbose, what):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        save_checkpoint(state, path)
        if verbose:
            self.logger.info(set_color(what, "blue") + f": {path}")

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        self._write(self.checkpoint_state(epoch, best=True), path, verbose, "Saving current")

    def _save_last(self, epoch, finished=False):
        state = self.checkpoint_state(epoch)
        state["finished"] = bool(finished)
        self._write(state, self.last_model_file, False, "Saving last epoch")

    def _load_model_state(self, checkpoint):
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))

    # -- RecBole entry points ------------------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.item_fingerprint = item_fingerprint(train_data._dataset)
        if self._resumed_fingerprint is not None and self._resumed_fingerprint != self.item_fingerprint:
            raise CheckpointError(
                f"the resumed checkpoint {self.saved_model_file!r} was trained on another item-id mapping than "
                f"this run's dataset {self.config['dataset']!r}"
            )
        self._train_data, self._saved, self._fit_start_epoch = train_data, saved, self.start_epoch
        if self._pending_rng is not None:
            restore_rng(self._pending_rng, getattr(train_data, "generator", None))
            self._pending_rng = None
        if self.start_epoch >= self.epochs:  # a resumed run that had finished: nothing to train, keep its best file
            return self.best_valid_score, self.best_valid_result
        self._fit_clock = time.perf_counter()
        if verbose:
            self.logger.info(
                set_color("budget", "blue") + f": {type(self.model).__name__}, epochs {self.start_epoch}.."
                f"{self.epochs - 1} (epochs={self.epochs}), early stopping after {self.stopping_step + 1} "
                f"validations in a row without improvement of {self.config['valid_metric']}, batch size {self.config['train_batch_size']}"
            )
        try:
            result = super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                                 callback_fn=callback_fn)
        finally:
            self._fit_elapsed, self._fit_clock = time.perf_counter() - self._fit_clock, None
        if saved:
            self._save_last(self._last_epoch(), finished=True)
        return result

    def _last_epoch(self):
        return max(self.train_loss_dict) if self.train_loss_dict else self.start_epoch - 1

    def _check_resumable(self, checkpoint, path, dataset):
        """Every check of a checkpoint to resume from, before anything changes."""
        held = str(checkpoint["config"].get("model"))
        if held.lower() != self.config["model"].lower():
            raise CheckpointError(f"{path!r} holds a {held} model, not {self.config['model']}")
        allow = bool(self.config["accept_unverified_checkpoints"])
        if dataset is not None:
            check_item_mapping(checkpoint, dataset, repr(path), allow_unverified=allow)
        elif checkpoint.get("item_fingerprint") is None and not allow:
            check_item_mapping(checkpoint, None, repr(path))
        check_state_dict(checkpoint["state_dict"], self.model, repr(path))
        for key in ("epoch", "cur_step", "best_valid_score", "optimizer"):
            if key not in checkpoint:
                raise CheckpointError(f"{path!r} cannot be resumed: it records no {key}")
        groups = getattr(self.optimizer, "param_groups", None)
        saved_groups = checkpoint["optimizer"].get("param_groups") if isinstance(checkpoint["optimizer"], dict) else None
        if isinstance(self.optimizer, torch.optim.Optimizer) and (
            saved_groups is None or [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in groups]
        ):
            raise CheckpointError(f"{path!r}: its optimizer state does not fit this run's parameters")

    def resume_checkpoint(self, resume_file, dataset=None):
        """Continue from a checkpoint of this run (its ``-last.pth`` file, or its best file): everything is checked
        first (model, dataset when given, tensor shapes, optimizer), and nothing changes if anything is refused."""
        path = str(resume_file)
        checkpoint = load_checkpoint(path, map_location=self.device)
        self._check_resumable(checkpoint, path, dataset)
        self._load_model_state(checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.saved_model_file = checkpoint.get("best_model_file") or path
        finished = checkpoint.get("finished", False)
        self.start_epoch = self.epochs if finished else checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result")
        self.train_loss_dict = {int(k): v for k, v in (checkpoint.get("train_loss_dict") or {}).items()}
        self._resumed_fingerprint = checkpoint.get("item_fingerprint")
        self._pending_rng = checkpoint.get("rng")
        self.seconds_before_resume = float(checkpoint.get("fit_seconds") or 0.0)  # absent in files before 2026-12-02
        self.epoch_seconds = [float(x) for x in checkpoint.get("epoch_seconds") or []]  # absent before 2026-12-03
        if getattr(self, "phases", None) is not None:
            self.phases.restore_seconds(checkpoint.get("phase_seconds") or {})
        self.logger.info(f"Checkpoint {path} loaded. Resume training from epoch {self.start_epoch}")

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False, **kwargs):
        if not eval_data:
            return
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            check_item_mapping(checkpoint, eval_data._dataset, checkpoint_file,
                               allow_unverified=bool(self.config["accept_unverified_checkpoints"]))
            self._load_model_state(checkpoint)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(
            eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress, **kwargs
        )


class Trainer(CheckpointMixin, DistributedMixin, RecBoleTrainer):
    """RecBole's ``Trainer`` with weights-only checkpoints and CPU/GPU distributed training: the default trainer of
    every plugin model, and the base class of the plugin's special trainers."""


@lru_cache(maxsize=None)
def safe_trainer(trainer_class):
    """``trainer_class`` with :class:`CheckpointMixin` and :class:`DistributedMixin` mixed in (unchanged if it
    already has them)."""
    if issubclass(trainer_class, CheckpointMixin) and issubclass(trainer_class, DistributedMixin):
        return trainer_class
    if trainer_class is RecBoleTrainer:
        return Trainer
    mixins = tuple(m for m in (CheckpointMixin, DistributedMixin) if not issubclass(trainer_class, m))
    return type(
        trainer_class.__name__,
        mixins + (trainer_class,),
        {"__module__": __name__, "__doc__": f"{trainer_class.__doc__ or ''}\n(with weights-only checkpoints)"},
    )
