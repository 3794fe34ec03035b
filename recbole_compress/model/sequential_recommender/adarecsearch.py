r"""
AdaRecSearch
################################################

Reference:
    Lei Chen, Fajie Yuan, Jiaxi Yang, Chengming Li, Min Yang. "Scene-adaptive Knowledge Distillation for Sequential
    Recommendation via Differentiable Architecture Search", WANT@NeurIPS 2023 (§3.2-3.5).

The search supernet of AdaRec (not run on its own: ``AdaRec``'s trainer runs it as its search phase). It has the
student's embedding, cells and output layer, but every edge holds all ten candidate operations
(:mod:`recbole_compress.model.layers.nas_ops`), mixed by one hard straight-through Gumbel-softmax sample per edge and
step, shared by all cells (:mod:`recbole_compress.model.layers.gumbel_mixed_op`). The architecture logits ``alpha``
(one ``[j, 10]`` tensor per node ``j``) and the network weights have their own optimisers
(:class:`recbole_compress.trainer.adarec.AdaRecSearchTrainer`) and are updated jointly on the same batch (no bilevel
step). The loss (Eq. 16) is returned as its parts::

    ((1 - gamma) CE,  gamma L_emb,  gamma L_pred,  gamma L_hidden,  beta L_E)

- ``L_emb``: MSE between the teacher's sequence embedding and the student's, projected by ``W_e`` (Eq. 3);
- ``L_pred``: KL between the teacher's and the student's next-item distributions at the last valid position (Eq. 4;
  ``kd_kl_direction``: ``forward`` = KL(p_T || p_S), the paper's; ``reverse`` = the authors' code);
- ``L_hidden``: EMD between the teacher's ``N`` distillation taps and the student's ``K`` cell outputs projected by
  one shared ``W_h``, ground distance = KL between channel softmaxes averaged over valid positions, masses updated by
  BERT-EMD's rule (:mod:`recbole_compress.model.layers.emd_mapper`, Eqs. 5-12);
- ``L_E``: the cost of the sampled operations (:mod:`recbole_compress.model.layers.op_cost`, Eq. 14) of one cell
  (the cells share ``alpha``). ``efficiency_loss: relative`` (default) makes ``beta`` a relative weight: the last
  part is ``beta * stopgrad(L_task) * c^``, with ``L_task`` the sum of the four other parts and ``c^`` in [0, 1] the
  sampled cell's cost as a fraction of the way from the cheapest cell to the costliest (linear params + MACs at the
  student's size, ``op_cost_mode: fraction``), so ``beta`` means the same on every dataset, width and loss reduction
  (the architecture follows ``log L_task + beta * c^``). ``absolute`` is Eq. 16 as written, ``beta * sum_e
  <y_e, c>`` (with ``op_cost_mode: reference``, the authors' constants and ``beta = 8``, which were made for task
  losses summed over every position).

The teacher is frozen, kept out of the module tree (not saved, counted or optimised) and run under ``no_grad``.
Validation uses the argmax architecture (``eval_arch: argmax``, ``search_eval_arch`` in an AdaRec run) or a fresh
sample (``sample``, the authors'). :meth:`derive_genotype` is the argmax operation per edge (``none`` included, as in
the authors' code).

Departures from the paper, and why: the losses use the last valid position (prediction) and the valid positions
(embedding, hidden states) of RecBole's right-padded prefixes, so the input never contains the target; the authors'
code trains on every position, where non-causal operations see the label.
"""
import torch
import torch.nn.functional as F
from torch import nn

from recbole_compress.model.layers.emd_mapper import EMDLayerMapper
from recbole_compress.model.layers.gumbel_mixed_op import argmax_onehot, gumbel_softmax_sample
from recbole_compress.model.layers.nas_cell import NASCell
from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS
from recbole_compress.model.layers.op_cost import cost_loss, op_cost_fractions, op_cost_table, relative_cost_loss
from recbole_compress.model.sequential_recommender.adarec import AdaRec
from recbole_compress.config_keys import Key
from recbole_compress.errors import ConfigError

OP_COST_MODES = ("reference", "actual", "fraction")
COST_FORMS = ("relative", "absolute")
KL_DIRECTIONS = ("forward", "reverse")
EVAL_ARCHS = ("argmax", "sample")


def _weight(name):
    return Key(name, float, low=0)


#: The supernet's own keys (its structure is AdaRec's); the optimisers' and the temperature schedule's are
#: :class:`recbole_compress.trainer.adarec.AdaRecSearchTrainer`'s.
SEARCH_KEYS = (
    Key("alpha_init_std", float, low=0),
    Key("kd_gamma", float, low=0, high=1),
    Key("efficiency_loss", str, choices=COST_FORMS),
    _weight("efficiency_beta"),
    _weight("w_ce"),
    _weight("w_kd_emb"),
    _weight("w_kd_pred"),
    _weight("w_kd_hidden"),
    Key("kd_temperature", float, low=0, low_open=True),
    Key("kd_kl_direction", str, choices=KL_DIRECTIONS),
    Key("emd_weight_temperature", float, low=0, low_open=True),
    Key("emd_update_weights", bool),
    Key("op_cost_mode", str, choices=OP_COST_MODES),
    Key("op_cost_ref_channels", int, low=1),
    Key("op_cost_ref_length", int, low=1),
    Key("gumbel_tau_init", float, low=0, low_open=True),
    Key("gumbel_hard", bool),
    Key("eval_arch", str, choices=EVAL_ARCHS),
)


class AdaRecSearch(AdaRec):
    r"""AdaRec's supernet: every candidate operation on every edge, architecture logits, distillation losses."""

    runnable = False
    phases = ()  # an internal phase of AdaRec: its teacher is given by AdaRec's trainer
    config_keys = SEARCH_KEYS

    def _build(self, config, dataset):
        self.gamma = config["kd_gamma"]
        self.beta = config["efficiency_beta"]
        self.kd_temperature = config["kd_temperature"]
        self.kl_direction = config["kd_kl_direction"]
        self.loss_weights = {k: config[k] for k in ("w_ce", "w_kd_emb", "w_kd_pred", "w_kd_hidden")}
        self.eval_arch = config["eval_arch"]
        self.gumbel_hard = config["gumbel_hard"]
        self.emd_weight_temperature = config["emd_weight_temperature"]
        self.emd_update_weights = config["emd_update_weights"]
        self.relative_cost = config["efficiency_loss"] == "relative"

        self.cells = nn.ModuleList(
            NASCell(self.embedding_size, self.num_nodes, None, CANDIDATE_OPS, self.op_dilation, self.pool_kernel,
                    self.layer_norm_eps)
            for _ in range(self.num_cells)
        )
        std = config["alpha_init_std"]
        self.alphas = nn.ParameterList(
            nn.Parameter(std * torch.randn(j, len(CANDIDATE_OPS))) for j in range(1, self.num_nodes + 1)
        )
        if config["op_cost_mode"] == "reference":
            costs = op_cost_table(CANDIDATE_OPS, config["op_cost_ref_channels"], config["op_cost_ref_length"])
        elif config["op_cost_mode"] == "fraction":
            costs = op_cost_fractions(CANDIDATE_OPS, self.embedding_size, self.max_seq_length)
        else:
            costs = op_cost_table(CANDIDATE_OPS, self.embedding_size, self.max_seq_length)
        self.register_buffer("op_costs", costs.float(), persistent=False)
        self.temperature = config["gumbel_tau_init"]
        self.emb_projection = self.hidden_projection = self.emd = None

    # -- teacher -------------------------------------------------------------------------------------------------
    def set_teacher(self, teacher):
        """Freeze ``teacher`` and build the projections ``W_e``, ``W_h`` and the EMD mapper for its sizes."""
        if not hasattr(teacher, "forward_distill"):
            raise ConfigError(f"{type(teacher).__name__} cannot teach AdaRec: it has no forward_distill")
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        width, n_layers = teacher.distill_width, teacher.num_distill_layers
        device = self.item_embedding.weight.device
        if self.emd is None or self.emd.n_teacher != n_layers or self.emb_projection.out_features != width:
            self.emb_projection = nn.Linear(self.embedding_size, width).to(device)
            self.hidden_projection = nn.Linear(self.embedding_size, width).to(device)
            self.emd = EMDLayerMapper(n_layers, self.num_cells, self.emd_weight_temperature,
                                      self.emd_update_weights).to(device)
        object.__setattr__(self, "_teacher", teacher)  # not a submodule: never saved, counted or optimised

    # -- architecture --------------------------------------------------------------------------------------------
    def arch_parameters(self):
        return list(self.alphas.parameters())

    def weight_parameters(self):
        arch = {id(p) for p in self.alphas.parameters()}
        return [p for p in self.parameters() if id(p) not in arch and p.requires_grad]

    def set_temperature(self, tau):
        self.temperature = float(tau)

    def sample_weights(self):
        """One hard (straight-through) Gumbel-softmax sample per edge, ``[j, n_ops]`` per node."""
        return [gumbel_softmax_sample(alpha, self.temperature, self.gumbel_hard) for alpha in self.alphas]

    def argmax_weights(self):
        return [argmax_onehot(alpha) for alpha in self.alphas]

    def _eval_weights(self):
        if self.eval_arch == "sample":
            with torch.no_grad():
                return self.sample_weights()
        return self.argmax_weights()

    def derive_genotype(self):
        """The argmax operation per edge: ``[[op_01], [op_02, op_12], ...]``."""
        return [[CANDIDATE_OPS[int(k)] for k in alpha.detach().argmax(-1)] for alpha in self.alphas]

    def other_parameter(self):
        return {"genotype": self.derive_genotype()}

    def load_other_parameter(self, para):
        """The genotype in a checkpoint is derived from the saved ``alpha``: nothing to restore."""

    # -- losses --------------------------------------------------------------------------------------------------
    def _kl(self, p_log, q_log):
        """``sum p (log p - log q)`` over the last dimension."""
        return (p_log.exp() * (p_log - q_log)).sum(-1)

    def hidden_distances(self, teacher_hiddens, student_hiddens, mask):
        """``D [N, K]``: KL between channel softmaxes of teacher tap ``i`` and projected cell ``j``, mean over
        valid positions (``mask`` ``[B, L]``)."""
        t = torch.log_softmax(torch.stack(teacher_hiddens) / self.kd_temperature, dim=-1)  # [N, B, L, dT]
        s = torch.log_softmax(self.hidden_projection(torch.stack(student_hiddens)) / self.kd_temperature, dim=-1)
        m = mask.to(t.dtype)
        n_valid = m.sum().clamp_min(1.0)
        if self.kl_direction == "forward":  # KL(p_T || p_S)
            own = ((t.exp() * t).sum(-1) * m).sum((1, 2))  # [N]
            cross = torch.einsum("nblc,kblc,bl->nk", t.exp(), s, m)
            return (own[:, None] - cross) / n_valid
        own = ((s.exp() * s).sum(-1) * m).sum((1, 2))  # [K]
        cross = torch.einsum("kblc,nblc,bl->nk", s.exp(), t, m)
        return (own[None, :] - cross) / n_valid

    def calculate_loss(self, interaction):
        if self._teacher is None:
            raise RuntimeError("AdaRecSearch needs its teacher: call set_teacher(teacher) first")
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        mask = item_seq != 0
        self._teacher.eval()
        with torch.no_grad():
            t_emb, t_hiddens, t_logits = self._teacher.forward_distill(item_seq, item_seq_len)

        weights = self.sample_weights()
        s_emb, s_hiddens = self._encode(item_seq, weights)
        s_logits = self.output(self.out_dropout(self.gather_indexes(s_hiddens[-1], item_seq_len - 1)))

        ce = self.loss_fct(s_logits, interaction[self.POS_ITEM_ID])
        m = mask.unsqueeze(-1).to(s_emb.dtype)
        l_emb = (((self.emb_projection(s_emb) - t_emb) ** 2) * m).sum() / (m.sum() * t_emb.size(-1)).clamp_min(1.0)
        t_log = torch.log_softmax(t_logits / self.kd_temperature, dim=-1)
        s_log = torch.log_softmax(s_logits / self.kd_temperature, dim=-1)
        kl = self._kl(t_log, s_log) if self.kl_direction == "forward" else self._kl(s_log, t_log)
        l_pred = kl.mean()
        l_hidden, _ = self.emd(self.hidden_distances(t_hiddens, s_hiddens, mask))

        g, w = self.gamma, self.loss_weights
        task = (
            (1 - g) * w["w_ce"] * ce,
            g * w["w_kd_emb"] * l_emb,
            g * w["w_kd_pred"] * l_pred,
            g * w["w_kd_hidden"] * l_hidden,
        )
        if self.relative_cost:
            return task + (relative_cost_loss(sum(task), weights, self.op_costs, self.beta),)
        return task + (self.beta * cost_loss(weights, self.op_costs),)
