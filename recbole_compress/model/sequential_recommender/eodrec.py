r"""
EODRec
################################################

Reference:
    Xia Xin, Junliang Yu, Qinyong Wang, Chaoqun Yang, Nguyen Quoc Viet Hung, Hongzhi Yin.
    "Efficient On-Device Session-Based Recommendation." ACM TOIS 41(4), 2023.

The on-device student of EODRec. Its item table is compositional: every item has ``M`` codes, each into its own
codebook of ``K`` vectors, and its embedding is the sum of those ``M`` codewords (Eq. 12), so a device stores
``M*K*N`` floats and a ``|V| x M`` code matrix (uint8 for ``K <= 256``) instead of ``|V| x N`` floats. The backbone
(SASRec with a soft-attention readout, Eq. 2-3) is the teacher's architecture with its own parameters.

Training (two stages, switched by :class:`recbole_compress.trainer.eodrec.EODRecTrainer` after the teacher phase of
:class:`recbole_compress.trainer.teacher.DistillationTrainer`):

1. *pre-training*, teacher frozen. It starts with ``code_fit_steps`` updates of the code encoder and codebooks on
   the MSE reconstruction of the teacher's table alone (:meth:`EODRec.fit_codes`), then ``pretrain_epochs`` epochs
   of ``L_rec + mse_weight * L_mse`` (Eq. 26). The code
   encoder (MLP + straight-through Gumbel-softmax, Eq. 16-17) reads the teacher's item table ``X``; the MSE
   reconstruction (Eq. 14) trains the encoder and the codebooks, the recommendation loss the codebooks (through the
   sampled codes, without a path to the encoder, as in the authors' code) and the backbone.
2. *distillation*: the codes are frozen (argmax of the encoder, then made unique: ``code_collision_handling``), the
   encoder leaves the optimiser and
   ``L_rec + mse_weight*L_mse + contrastive_weight*L_con + soft_weight*L_soft + teacher_rec_weight*L_rec_teacher``
   (Eq. 29 plus the teacher's own loss) trains the student and, when ``teacher_trainable``, the teacher
   (bidirectional distillation, §5.4):

   - *embedding mixup* (Eq. 18), training only: the student's item table is ``eta*X + (1-eta)*E``, with ``eta``
     annealed to 0 over ``mixup_anneal_epochs`` stage-two epochs (default 0: stage two trains on ``E`` itself);
     evaluation and the exported model use the composite table ``E`` alone;
   - *contrastive distillation* (Eq. 20-22): items are hot (top ``hot_ratio`` by training occurrences) or cold;
     the hot and cold sub-session representations of a mixed session are swapped between teacher and student,
     projected, and contrasted with InfoNCE against the other sessions of the batch; single-type sessions contrast
     the two models' session representations directly (as the authors' code does);
   - *soft targets* (Eq. 23-24): ``KL(p_teacher || p_student)`` over the whole catalogue, ``p_student`` from the
     student's own training table.

Every loss is returned separately by :meth:`EODRec.calculate_loss` (RecBole logs each). Full-catalogue scoring
uses the codebook scorer of :class:`~recbole_compress.model.layers.codebook_embedding.CodebookEmbedding`
(``score_method``), never a dense table unless asked. :mod:`recbole_compress.export.eodrec` writes the on-device
artifact (codes, codebooks, backbone) and a TorchScript-able loader.

Departures from the paper, and why (the measurements behind each default are in docs/EODRec.md):
    - Evaluation uses the composite embedding only (the paper's statement); the authors' code evaluates with the
      mixup table, 80% teacher embeddings (spec §8 A1).
    - The mixup is annealed away in stage two (``mixup_anneal_epochs``; default 0, i.e. none in stage two). With
      the paper's constant ``eta = 0.8`` the backbone learns on inputs and candidates that are 80 % teacher
      embeddings and the codebooks get only 0.2 of the recommendation gradient, while evaluation sees the composite
      table alone: a training/evaluation mismatch that the authors' code hides by evaluating on the mixup table.
      The student is trained to be good on the only table it is evaluated and exported with. ``None`` keeps the
      paper's constant ``eta``; stage one (whose backbone is discarded) keeps ``mixup_eta``.
    - Frozen codes are made unique (``code_collision_handling: repair``): nothing in the reconstruction objective
      keeps codes apart, and items sharing a code get the same embedding and tie exactly at scoring (on session
      data many targets repeat an item of the session). In each group of items sharing a code the
      best-reconstructed item keeps it and the others move to the free code nearest their teacher embedding
      (:func:`~recbole_compress.model.layers.code_assignment.resolve_collisions`); the code space (``K^M``) is far
      larger than any catalogue, so this costs little reconstruction. ``codebook_refit`` then optionally sets the
      codebooks to the least-squares fit of the teacher's table for the frozen codes.
    - The soft targets (Eq. 23) use the student's own training table for ``p_student`` (the authors' code does the
      same; the paper writes ``X`` for both): the student is distilled on the distribution it actually predicts.
    - ``soft_kd_reduction: batchmean`` with ``soft_weight`` ``gamma`` (per-session KL averaged over the batch, the
      scale of the batch-averaged cross-entropy, as Eq. 24 is per session). The authors' code sums the KL over a
      batch of 100, which gives KD an effective weight of ``100*gamma`` against the mean cross-entropy, a weight
      that depends on the batch size (``sum`` keeps that behaviour).
    - ``codebook_learning_rate`` (1e-3, the paper's global learning rate; the authors' code uses 1e-4 for encoder
      and codebooks with batch 100, ~3,500 steps per Tmall epoch over 200 epochs). Our stage two is a few epochs at
      batch 256, and the codebooks are the student's whole item representation when trained on ``E`` alone.
    - The teacher is trained in the same run when ``teacher_checkpoint`` is not given; any RecBole sequential model
      with an ``item_embedding`` table of width ``hidden_size`` can be the teacher (``teacher_model``).
    - ``teacher_rec_weight``: with a trainable teacher we keep the teacher's own recommendation loss (as in
      bidirectional distillation, ref. [22] of the paper); 0 gives the literal Eq. 29.
    - The frozen codes are the deterministic argmax of the encoder (the authors' code keeps one noisy Gumbel sample;
      ``code_freeze_mode: sample``), and the stage-two MSE uses the frozen codes.
    - The MSE is Eq. 14's per-item squared error averaged over items (``mse_reduction: item_sum_mean``); the
      authors' code divides a mean over all entries by ``|V|`` again (``mse_reduction: code``).
    - The readout averages valid positions only and keeps the authors' ``tanh`` (see EODRecTeacher).
    - Codebooks are initialised U(-0.1, 0.1) (the authors' code leaves them uninitialised).
    - ``code_composition: pair_product`` (opt-in, not in the paper): the codebooks taken two at a time also add the
      elementwise product of two factor vectors (:class:`CodebookEmbedding`). With a sum of codewords the score is a
      sum of per-codebook terms, and recombinations of a session's codewords score like its items; on session data,
      where many targets repeat a session item, such "chimeras" outrank the repeated item (docs/EODRec.md). The
      collision repair ranks the free codes by the codewords' sum alone (the product term is left out of that search).
    - Stage one starts with ``code_fit_steps`` (2000) autoencoder updates on the teacher's table alone (4,096 rows
      per step), with the Gumbel temperature decaying from ``code_fit_tau_start`` (1.0) to the paper's 0.3: the
      paper's stage one makes ~3,500 encoder updates per Tmall epoch at batch 100, RecBole's batch sizes a few
      hundred, and at a constant 0.3 the encoder collapses onto a few codes. ``code_fit_steps: 0`` restores the
      paper's stage one. Stage two logs the code statistics before and after the repair, and a warning when more
      than ``code_collision_warning`` of the items still share their code with another item.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender

from recbole_compress.model.layers.code_assignment import fit_codebooks, resolve_collisions
from recbole_compress.model.layers.code_encoder import GumbelCodeEncoder, fit_codes
from recbole_compress.model.layers.codebook_embedding import (
    COMPOSITIONS,
    PAIR_PRODUCT_SCORE_METHODS,
    SCORE_METHODS,
    CodebookEmbedding,
    code_dtype,
    code_statistics,
)
from recbole_compress.model.layers.distillation_losses import KL_REDUCTIONS, info_nce, kl_from_log_probs, soft_label_kl
from recbole_compress.model.layers.soft_attention_readout import SoftAttentionReadout
from recbole_compress.model.sequential_recommender.eodrecteacher import (
    BACKBONE_KEYS,
    BACKBONE_RELATIONS,
    SoftAttentionTransformer,
    init_backbone_weights,
)
from recbole_compress.config_keys import DataRule, Key, Phase, Relation
from recbole_compress.errors import ConfigError

STAGES = ("pretrain", "distill")
CODE_FREEZE_MODES = ("argmax", "sample")
MSE_REDUCTIONS = ("item_sum_mean", "code")
COLLISION_HANDLING = ("repair", "none")
BACKBONE_INITS = ("random", "teacher")


def _weight(name):
    return Key(name, float, low=0)


def _share(name):
    return Key(name, float, low=0, high=1)


#: The student's own keys (after the backbone's); the trainer's stage keys are EODRecTrainer's.
EODREC_KEYS = BACKBONE_KEYS + (
    Key("teacher_trainable", bool),
    _weight("teacher_rec_weight"),
    Key("num_codebooks", int, low=1),
    Key("codebook_size", int, low=2),
    Key("code_composition", str, choices=COMPOSITIONS, neutral="sum"),
    Key("code_encoder_hidden", int, low=1, none_ok=True),
    Key("gumbel_tau", float, low=0, low_open=True),
    Key("code_freeze_mode", str, choices=CODE_FREEZE_MODES),
    Key("code_fit_steps", int, low=0),
    Key("code_fit_learning_rate", float, low=0, low_open=True),
    Key("code_fit_batch_size", int, low=1, none_ok=True),
    Key("code_fit_tau_start", float, low=0, low_open=True, none_ok=True),
    Key("code_collision_handling", str, choices=COLLISION_HANDLING),
    Key("codebook_refit", bool),
    _share("code_collision_warning"),
    Key("student_backbone_init", str, choices=BACKBONE_INITS),
    _weight("mse_weight"),
    Key("mse_reduction", str, choices=MSE_REDUCTIONS),
    _share("mixup_eta"),
    Key("mixup_anneal_epochs", float, low=0, none_ok=True),
    _weight("contrastive_weight"),
    _weight("soft_weight"),
    Key("cl_temperature", float, low=0, low_open=True),
    Key("kd_temperature", float, low=0, low_open=True),
    Key("soft_kd_reduction", str, choices=KL_REDUCTIONS[:2]),
    _share("hot_ratio"),
    Key("score_method", str, choices=SCORE_METHODS),
)


EODREC_RELATIONS = BACKBONE_RELATIONS + (
    Relation(("code_composition", "num_codebooks"), lambda c: c["num_codebooks"] >= 2,
             "code_composition 'pair_product' multiplies codewords of codebooks taken two at a time: it needs "
             "num_codebooks >= 2", when=lambda c: c["code_composition"] == "pair_product"),
    Relation(("code_composition", "score_method"), lambda c: c["score_method"] in PAIR_PRODUCT_SCORE_METHODS,
             f"with code_composition 'pair_product' score_method must be one of {PAIR_PRODUCT_SCORE_METHODS} (the "
             f"others decompose a plain sum of codewords)", when=lambda c: c["code_composition"] == "pair_product"),
    Relation(("code_composition", "codebook_refit"), lambda c: not c["codebook_refit"],
             "codebook_refit (a least-squares fit of a sum of codewords) needs code_composition 'sum'",
             when=lambda c: c["code_composition"] == "pair_product"),
)


def codebook_size_problem(config, dataset):
    """Refuse codebooks with at least as many vectors (``M*K``) as the catalogue has items: nothing would be
    compressed, and the training-only code encoder has ``(M*K)^2 / 2`` weights (``codebook_size: 100000`` asked for
    tens of GB). Warn when the stored codebooks and codes would still take more bytes than the dense table."""
    m, k, n = config["num_codebooks"], config["codebook_size"], config["hidden_size"]
    items = dataset.item_num - 1
    if m * k >= items:
        return (f"{m} codebooks (num_codebooks) of {k} vectors ({m * k} in all) are not fewer than the {items} items "
                f"of the table they replace: nothing is compressed, and the code encoder alone would have "
                f"{(m * k) ** 2 // 2:,} weights; choose num_codebooks * codebook_size < {items}")
    stored = m * k * n * 4 + dataset.item_num * m * torch.empty((), dtype=code_dtype(k)).element_size()
    dense = dataset.item_num * n * 4
    if stored >= dense:
        return "warning", (f"the codebooks and codes ({stored:,} bytes) are not smaller than the {dense:,}-byte item "
                           f"table they replace; lower codebook_size or num_codebooks")
    return None


def hot_items(item_seq_matrix, n_items, hot_ratio):
    """Boolean ``n_items`` mask of the hot items: the top ``floor(hot_ratio * #items seen)`` items by occurrences
    in the training input sequences (every position of every augmented prefix counts, as in the authors' code).
    Ties are broken by item id; the padding id 0 is never hot."""
    counts = torch.bincount(item_seq_matrix.reshape(-1).long(), minlength=n_items)[:n_items].clone()
    counts[0] = 0
    n_hot = int(math.floor(hot_ratio * int((counts > 0).sum())))
    order = torch.argsort(-counts, stable=True)
    mask = torch.zeros(n_items, dtype=torch.bool)
    mask[order[:n_hot]] = True
    return mask


class EODRec(SequentialRecommender):
    r"""EODRec's on-device student: compositional item codes + soft-attention SASRec, distilled from a teacher."""

    counterpart = "teacher"
    #: parts that only shape training (the contrastive projection heads, and the code encoder, which reads the
    #: teacher's table and is dropped once the codes are frozen): not counted in the model's size
    training_only_modules = ("kd_heads", "code_encoder")
    # the teacher is trained first (teacher_<key> configures it); its item table must have the student's width
    phases = (Phase("teacher_", "EODRecTeacher", inherit=("hidden_size",), match=("hidden_size",)),)
    config_keys = EODREC_KEYS
    config_relations = EODREC_RELATIONS
    data_rules = (DataRule("codebook_size", codebook_size_problem),)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.backbone_settings = {k: config[k] for k in ("n_layers", "n_heads", "inner_size", "hidden_act",
                                                          "layer_norm_eps")}
        self.num_codebooks = config["num_codebooks"]
        self.codebook_size = config["codebook_size"]
        self.gumbel_tau = config["gumbel_tau"]
        self.mixup_eta = config["mixup_eta"]
        self.mixup_anneal_epochs = config["mixup_anneal_epochs"]
        self.mse_weight = config["mse_weight"]
        self.mse_reduction = config["mse_reduction"]
        self.contrastive_weight = config["contrastive_weight"]
        self.soft_weight = config["soft_weight"]
        self.cl_temperature = config["cl_temperature"]
        self.kd_temperature = config["kd_temperature"]
        self.soft_kd_reduction = config["soft_kd_reduction"]
        self.teacher_trainable = bool(config["teacher_trainable"])
        self.teacher_rec_weight = config["teacher_rec_weight"]
        self.code_freeze_mode = config["code_freeze_mode"]
        self.code_fit = {k: config[f"code_fit_{k}"] for k in ("steps", "learning_rate", "batch_size", "tau_start")}
        self.code_collision_handling = config["code_collision_handling"]
        self.student_backbone_init = config["student_backbone_init"]
        self.codebook_refit = bool(config["codebook_refit"])
        self.code_collision_warning = config["code_collision_warning"]
        self.score_method = config["score_method"]
        self.init_method = config["init_method"]
        self.init_range = config["init_range"]

        # on-device parts: codebooks + codes, backbone
        self.item_codebook = CodebookEmbedding(self.n_items, self.hidden_size, self.num_codebooks, self.codebook_size,
                                               composition=config["code_composition"])
        self.backbone = SoftAttentionTransformer(config, self.max_seq_length)
        # training-only parts: the code encoder (stage one) and the distillation heads (stage two)
        self.code_encoder = GumbelCodeEncoder(
            self.hidden_size, self.num_codebooks, self.codebook_size, config["code_encoder_hidden"]
        )
        n = self.hidden_size
        self.kd_heads = nn.ModuleDict({
            "student_hot": SoftAttentionReadout(n),
            "student_cold": SoftAttentionReadout(n),
            "teacher_hot": SoftAttentionReadout(n),
            "teacher_cold": SoftAttentionReadout(n),
            "student_proj": nn.Linear(2 * n, n, bias=False),
            "teacher_proj": nn.Linear(2 * n, n, bias=False),
        })
        self.register_buffer("stage_flag", torch.zeros((), dtype=torch.long))  # 0 pretrain, 1 distill (saved)
        self.register_buffer("mixup_progress", torch.zeros(()))  # share of the stage-two mixup annealing done (saved)
        self.mixup_steps_per_epoch = None  # set by the trainer (set_mixup_schedule)
        self.code_assignment = None  # what freeze_codes did to the codes (a report)
        self.register_buffer(
            "is_hot", hot_items(dataset.inter_feat[self.ITEM_SEQ], self.n_items, config["hot_ratio"]), persistent=False
        )
        self.__dict__["_teacher"] = None  # never a registered submodule: not in the student's size or state_dict
        self.reset_student_parameters()
        init_backbone_weights(self.code_encoder, self.init_method, self.init_range)

    def reset_student_parameters(self):
        """(Re-)initialise the backbone and the distillation heads (``reinit_after_pretrain``); codebooks, codes and
        the encoder are kept."""
        init_backbone_weights(self.backbone, self.init_method, self.init_range)
        init_backbone_weights(self.kd_heads, self.init_method, self.init_range)

    @torch.no_grad()
    def init_backbone_from_teacher(self):
        """Copy the teacher's backbone into the student's (``student_backbone_init: teacher``). The teacher must have
        the student's backbone (EODRecTeacher at the student's sizes); the item representation stays the codes'."""
        source = getattr(self._require_teacher(), "backbone", None)
        mine = self.backbone.state_dict()
        theirs = source.state_dict() if isinstance(source, nn.Module) else {}
        if set(theirs) != set(mine) or any(theirs[k].shape != v.shape for k, v in mine.items()):
            raise ConfigError(
                f"student_backbone_init: teacher needs a teacher with the student's backbone (EODRecTeacher with the "
                f"same hidden_size, inner_size, n_layers, n_heads, MAX_ITEM_LIST_LENGTH); "
                f"{type(self.teacher).__name__} does not have it"
            )
        self.backbone.load_state_dict(theirs)

    # -- teacher ---------------------------------------------------------------------------------------------------
    @property
    def teacher(self):
        return self.__dict__["_teacher"]

    def set_teacher(self, teacher):
        """Attach the trained teacher (called by the trainer). Its item table must be ``n_items x hidden_size`` and
        its ``forward(item_seq, item_seq_len)`` must give ``B x hidden_size`` session representations."""
        table = getattr(teacher, "item_embedding", None)
        name = type(teacher).__name__
        if not isinstance(table, nn.Embedding):
            raise ConfigError(
                f"teacher_model {name} has no item_embedding table (nn.Embedding): EODRec needs the teacher's item "
                f"table for the mixup and the code learning. Use EODRecTeacher, SASRec, GRU4Rec, ..."
            )
        if tuple(table.weight.shape) != (self.n_items, self.hidden_size):
            raise ConfigError(
                f"the teacher's item table is {tuple(table.weight.shape)}, the student needs "
                f"({self.n_items}, {self.hidden_size}): set teacher_hidden_size (or the teacher model's embedding "
                f"size) equal to hidden_size={self.hidden_size}, or give a teacher_checkpoint trained on this dataset"
            )
        probe = torch.ones(1, self.max_seq_length, dtype=torch.long, device=table.weight.device)
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            out = self._teacher_session(teacher, probe, torch.tensor([self.max_seq_length], device=probe.device))
        teacher.train(was_training)
        if tuple(out.shape) != (1, self.hidden_size):
            raise ConfigError(
                f"teacher_model {name} gives session representations of shape {tuple(out.shape[1:])}, the student "
                f"needs ({self.hidden_size},)"
            )
        teacher.requires_grad_(False)
        teacher.eval()
        self.__dict__["_teacher"] = teacher

    @staticmethod
    def _teacher_session(teacher, item_seq, item_seq_len):
        out = teacher.forward(item_seq, item_seq_len)
        if out.dim() == 3:  # models whose forward returns every position
            out = teacher.gather_indexes(out, item_seq_len - 1)
        return out

    def _require_teacher(self):
        if self.teacher is None:
            raise RuntimeError("EODRec needs its teacher for training: train it with EODRecTrainer (the default "
                               "trainer_class), or call set_teacher(teacher) first")
        return self.teacher

    def teacher_table(self):
        return self._require_teacher().item_embedding.weight

    # -- stages ----------------------------------------------------------------------------------------------------
    @property
    def stage(self):
        return STAGES[int(self.stage_flag)]

    def set_stage(self, stage):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.stage_flag.fill_(STAGES.index(stage))

    @property
    def codes_frozen(self):
        return self.stage == "distill"

    @torch.no_grad()
    def encoder_codes(self, mode="argmax"):
        """Codes of every item from the encoder on the teacher's table: ``argmax`` or one Gumbel ``sample``."""
        x = self.teacher_table().detach()
        if mode == "sample":
            return self.code_encoder.sample_codes(x, self.gumbel_tau)
        return self.code_encoder.codes(x)

    def fit_codes(self):
        """Stage one's code learning on the teacher's table alone (``code_fit_*``): ``code_fit_steps`` updates of
        the encoder and the codebooks on the MSE reconstruction of Eq. 14, the Gumbel temperature decaying from
        ``code_fit_tau_start`` to ``gumbel_tau``. Called by the trainer when the teacher is ready, before the first
        student epoch. Returns the :func:`~recbole_compress.model.layers.code_encoder.fit_codes` summary with the
        statistics of the encoder's argmax codes."""
        x = self.teacher_table().detach()[1:]
        summary = fit_codes(self.code_encoder, self.item_codebook, x, self.code_fit["steps"],
                            self.code_fit["learning_rate"], self.gumbel_tau, tau_start=self.code_fit["tau_start"],
                            batch_size=self.code_fit["batch_size"])
        summary.update(code_statistics(self.encoder_codes("argmax"), self.codebook_size))
        return summary

    def collision_share(self, stats=None):
        """Share of the real items whose frozen code tuple is also another item's (from ``stats``, the
        :meth:`CodebookEmbedding.statistics` of the codes, when already computed)."""
        stats = self.item_codebook.statistics() if stats is None else stats
        return stats["items_sharing_a_code"] / max(1, stats["items"])

    @torch.no_grad()
    def freeze_codes(self):
        """End of stage one: fix the code matrix (``code_freeze_mode``), make the codes unique
        (``code_collision_handling: repair``, :func:`~recbole_compress.model.layers.code_assignment.resolve_collisions`:
        each item sharing a code but the best reconstructed one moves to the free code nearest its teacher embedding),
        optionally refit the codebooks to the teacher's table by least squares (``codebook_refit``), and switch to the
        distillation stage. What happened is kept in ``self.code_assignment``."""
        codes = self.encoder_codes(self.code_freeze_mode)
        x = self.teacher_table().detach()
        books = self.item_codebook.codebooks
        report = {"before": code_statistics(codes, self.codebook_size)}
        if self.code_collision_handling == "repair":
            repaired, info = resolve_collisions(codes[1:], books, x[1:])
            codes = torch.cat([codes[:1], repaired.to(codes.device)])
            report.update(info)
        if self.codebook_refit:
            books.copy_(fit_codebooks(codes[1:], x[1:], self.codebook_size).to(books))
        self.item_codebook.set_codes(codes)
        report["after"] = self.item_codebook.statistics()
        self.code_assignment = report
        self.set_stage("distill")

    def train(self, mode=True):
        super().train(mode)
        if not mode and self.stage == "pretrain" and self.teacher is not None:
            # evaluation during stage one scores with the encoder's current (deterministic) codes
            self.item_codebook.set_codes(self.encoder_codes("argmax"))
        return self

    # -- embedding mixup schedule ----------------------------------------------------------------------------------
    def set_mixup_schedule(self, steps_per_epoch):
        """Training steps per epoch (the trainer's), for annealing the stage-two mixup per step."""
        self.mixup_steps_per_epoch = int(steps_per_epoch)

    def current_mixup_eta(self):
        """``eta`` of the mixup now: ``mixup_eta`` in stage one; in stage two it decays linearly to 0 over
        ``mixup_anneal_epochs`` epochs (0: no mixup in stage two; None: constant, the paper)."""
        if self.stage == "pretrain" or self.mixup_anneal_epochs is None:
            return self.mixup_eta
        if self.mixup_anneal_epochs <= 0:
            return 0.0
        return self.mixup_eta * max(0.0, 1.0 - float(self.mixup_progress))

    def _advance_mixup(self):
        if self.stage == "distill" and self.mixup_anneal_epochs and self.mixup_steps_per_epoch:
            self.mixup_progress.add_(1.0 / (self.mixup_anneal_epochs * self.mixup_steps_per_epoch))

    # -- training tables -------------------------------------------------------------------------------------------
    def _mse(self, approx, target):
        if self.mse_reduction == "code":  # the authors' code: mean over all entries, divided by n_items again
            return F.mse_loss(approx, target) / approx.shape[0]
        return ((approx[1:] - target[1:]) ** 2).sum(-1).mean()  # Eq. 14 over the real items

    def training_tables(self):
        """``(E', L_mse)``: the training table (the mixup ``eta*X + (1-eta)*E`` while ``eta > 0``, else the composite
        table ``E`` itself) and the reconstruction loss."""
        x = self.teacher_table()
        if self.stage == "pretrain":
            x = x.detach()
            y = self.code_encoder(x, tau=self.gumbel_tau, hard=True)  # n x M x K, straight-through
            composite = self.item_codebook.lookup(y.argmax(-1))  # no gradient path to the encoder (authors' code)
            mse = self._mse(self.item_codebook.table_from_onehot(y), x)
        else:
            composite = self.item_codebook.table()
            mse = self._mse(composite, x.detach())
        eta = self.current_mixup_eta()
        mixed = eta * x + (1.0 - eta) * composite if eta > 0 else composite
        return mixed, mse

    # -- model -----------------------------------------------------------------------------------------------------
    def forward(self, item_seq, item_seq_len, item_table=None):
        """Session representations ``B x N``; item vectors from ``item_table`` (training) or the codes."""
        item_emb = self.item_codebook(item_seq) if item_table is None else F.embedding(item_seq, item_table)
        return self.backbone(item_emb, item_seq)

    def contrastive_loss(self, item_seq, mixed, x, theta_student, theta_teacher):
        """InfoNCE on hot/cold sub-session representations swapped between student and teacher (Eq. 20-22)."""
        valid = item_seq != 0
        hot = valid & self.is_hot[item_seq]
        cold = valid & ~hot
        keep = valid.sum(1) > 1  # length-1 sessions are left out, as in the authors' code
        mixed_rows = keep & hot.any(1) & cold.any(1)
        single_rows = keep & ~mixed_rows
        heads = self.kd_heads
        anchors, positives = [], []
        if mixed_rows.any():
            seq = item_seq[mixed_rows]
            emb_s, emb_t = F.embedding(seq, mixed), F.embedding(seq, x)
            h, c = hot[mixed_rows], cold[mixed_rows]
            hot_s, cold_s = heads["student_hot"](emb_s, h), heads["student_cold"](emb_s, c)
            hot_t, cold_t = heads["teacher_hot"](emb_t, h), heads["teacher_cold"](emb_t, c)
            anchors.append(heads["student_proj"](torch.cat([hot_s, cold_t], -1)))
            positives.append(heads["teacher_proj"](torch.cat([hot_t, cold_s], -1)))
        if single_rows.any():
            anchors.append(theta_teacher[single_rows])
            positives.append(theta_student[single_rows])
        if not anchors:
            return theta_student.sum() * 0.0
        return info_nce(torch.cat(anchors), torch.cat(positives), self.cl_temperature)

    def calculate_loss(self, interaction):
        """``(L_rec, mse_weight*L_mse, contrastive_weight*L_con, soft_weight*L_soft, teacher_rec_weight*L_rec_teacher)``;
        the distillation terms are 0 in stage one."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        mixed, mse = self.training_tables()
        if self.training:
            self._advance_mixup()
        theta_s = self.forward(item_seq, item_seq_len, mixed)
        logits_s = theta_s @ mixed.t()
        log_p_s = F.log_softmax(logits_s, dim=-1)  # cross-entropy over the catalogue, shared with L_soft at T = 1
        rec = F.nll_loss(log_p_s, pos_items)
        zero = rec.new_zeros(())
        losses = [rec, self.mse_weight * mse, zero, zero, zero]
        teacher_rec_on = self.teacher_trainable and self.teacher_rec_weight > 0
        if self.stage == "pretrain" or not (self.contrastive_weight > 0 or self.soft_weight > 0 or teacher_rec_on):
            return tuple(losses)

        teacher = self._require_teacher()
        x = teacher.item_embedding.weight
        if self.teacher_trainable:
            teacher.train(self.training)
            theta_t = self._teacher_session(teacher, item_seq, item_seq_len)
        else:
            teacher.eval()
            with torch.no_grad():
                theta_t = self._teacher_session(teacher, item_seq, item_seq_len)
            x = x.detach()
        logits_t = theta_t @ x.t()
        log_p_t = F.log_softmax(logits_t, dim=-1) if self.soft_weight > 0 or teacher_rec_on else None
        if self.contrastive_weight > 0:
            losses[2] = self.contrastive_weight * self.contrastive_loss(item_seq, mixed, x, theta_s, theta_t)
        if self.soft_weight > 0:
            losses[3] = self.soft_weight * self.soft_loss(logits_s, log_p_s, logits_t, log_p_t)
        if teacher_rec_on:
            losses[4] = self.teacher_rec_weight * F.nll_loss(log_p_t, pos_items)
        return tuple(losses)

    def soft_loss(self, logits_s, log_p_s, logits_t, log_p_t):
        """``KL(p_teacher || p_student)`` at ``kd_temperature`` (Eq. 24); at ``T = 1`` from the log-softmaxes the
        cross-entropy losses already computed (the catalogue-wide passes are most of a step's time)."""
        if self.kd_temperature == 1:
            return kl_from_log_probs(log_p_s, log_p_t, self.soft_kd_reduction)
        return soft_label_kl(logits_s, logits_t, self.kd_temperature, reduction=self.soft_kd_reduction)

    def predict(self, interaction):
        theta = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (theta * self.item_codebook(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        theta = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.item_codebook.full_scores(theta, self.score_method)

    # -- reports ---------------------------------------------------------------------------------------------------
    def on_device_parameters(self):
        """Named tensors a device needs: the codebooks (and pair factors) and the backbone (codes are separate,
        integers)."""
        named = {f"item_codebook.{k}": v for k, v in self.item_codebook.named_parameters()}
        named.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        return named

    def param_breakdown(self):
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        breakdown = {
            "codebooks": self.item_codebook.codebooks.numel(),
            "code_entries (integers, not parameters)": self.item_codebook.codes.numel(),
            "backbone": count(self.backbone),
            "code_encoder (training only)": count(self.code_encoder),
            "kd_heads (training only)": count(self.kd_heads),
        }
        if self.item_codebook.pair_factors is not None:
            breakdown["pair_factors"] = self.item_codebook.pair_factors.numel()
        return breakdown

    def benchmark_report(self):
        """The code statistics, the stage and the scorer (the benchmark adds the compression figures of
        :func:`recbole_compress.export.eodrec.size_report`)."""
        report = {}
        report["code_statistics"] = self.item_codebook.statistics()
        report["collision_share"] = self.collision_share(report["code_statistics"])
        if self.code_assignment is not None:
            report["code_assignment"] = self.code_assignment
        report["stage"] = self.stage
        report["score_method"] = self.score_method
        return report
