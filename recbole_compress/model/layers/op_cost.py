"""Cost table of the search operations (parameters + MACs, normalised) and the cost-sensitive loss.

AdaRec (Chen et al., WANT@NeurIPS 2023, §3.4, Eq. 14): ``L_E = sum over edges of SIZE(o) + FLOPs(o)`` of the chosen
operations, with normalised sizes. The authors' code uses one fixed cost per operation; those constants are exactly
``c_o = n_ops * (softmax_o(MACs_o / 1e6) + softmax_o(Params_o / 1e6)) / 2`` with ptflops-style counts at 128 channels
and length 100 (so the costs sum to ``n_ops``):

- convolution, kernel k: params ``k*C*C + C`` (bias) ``+ 2C`` (affine BatchNorm); MACs ``k*C*C*L + C*L + 2*C*L``;
- pooling: no parameters, ``C*L`` MACs; skip and zero: nothing;
- a zero count is counted as 1.

:func:`op_cost_table` computes that formula at any size (``reference`` = 128 x 100 reproduces the released constants
to 1e-8; at a small student's own size the costs are almost flat and the penalty hardly discriminates).
:func:`cost_loss` is ``sum_e <y_e, c>`` over the edges for sampled (or soft) operation weights ``y``: its value is the
cost of the sampled operations and its gradient reaches the architecture logits through ``y``.

**A cost that weighs against the task loss instead of drowning it.** ``beta * cost_loss`` (Eq. 16 as written) is
in absolute units: the authors' ``beta = 8`` balances their task losses, summed over every position of a sequence,
and means something else for a mean at one position, another catalogue, or another width (with our last-position
means it was ten times the task loss, and every searched operation was parameter-free). Two pieces make the weight
a relative one:

- :func:`op_cost_fractions`: each operation's parameters and MACs at the student's own size, each as a fraction of
  the costliest operation's, averaged (``std_cnn_5``: 1, ``std_cnn_3``: about 0.6, pooling: about ``1 / (10 d)``,
  skip and zero: 0). Linear, so a kernel-3 convolution costs 3/5 of a kernel-5 one as it does on a device; the
  softmax of the released constants makes it 1/19, and at a small width the softmax makes every cost equal.
- :func:`relative_cost` ``c^(y) = mean over edges of <y_e, c~>``, ``c~ = (c - min c) / (max c - min c)``: how far
  the sampled cell is from the cheapest cell (0) towards the costliest one (1, the supernet's dearest choice on every
  edge). It is the same number for a genotype at any width and sequence length.
- :func:`relative_cost_loss` ``beta * stopgrad(L_task) * c^(y)``. Its gradient with respect to the architecture
  logits is ``beta * L_task * grad c^``, so the architecture descends ``grad L_task + beta * L_task * grad c^ =
  L_task * grad(log L_task + beta * c^)``: the step direction of ``log L_task + beta * c^``. ``beta`` is therefore
  the relative increase of the task loss worth the whole cost range: an edge moves from pooling to a kernel-5
  convolution when that lowers the task loss by more than about ``beta / n_edges`` of itself. Multiplying the task
  loss by any constant (a sum over positions instead of a mean, more items, other loss weights) multiplies both
  terms alike, and adaptive optimisers (Adam) then take the same steps. The stop-gradient keeps the network
  weights' gradient that of the task loss alone (the cost depends on ``y`` only).
"""
import torch

from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS, parse_op_name

REFERENCE_CHANNELS = 128
REFERENCE_LENGTH = 100


def op_params_macs(name, channels, length):
    """``(parameters, MACs)`` of one operation on a ``[length, channels]`` sequence (ptflops-style counts)."""
    kind, kernel = parse_op_name(name)
    c, n = int(channels), int(length)
    if kernel is not None:
        params = kernel * c * c + c + 2 * c
        macs = kernel * c * c * n + c * n + 2 * c * n
        return params, macs
    if name in ("max_pool", "avg_pool"):
        return 0, c * n
    return 0, 0


def op_cost_table(op_names=CANDIDATE_OPS, channels=REFERENCE_CHANNELS, length=REFERENCE_LENGTH, scale=1e6):
    """Normalised cost per operation: ``n * (softmax(MACs / scale) + softmax(params / scale)) / 2`` (float64)."""
    counts = [op_params_macs(name, channels, length) for name in op_names]
    params = torch.tensor([max(p, 1) for p, _ in counts], dtype=torch.float64)
    macs = torch.tensor([max(m, 1) for _, m in counts], dtype=torch.float64)
    n = len(op_names)
    return n * 0.5 * (torch.softmax(macs / scale, 0) + torch.softmax(params / scale, 0))


def cost_loss(weights, costs):
    """``sum over edges of <y_e, costs>``; ``weights`` is a tensor ``[..., n_ops]`` or a list of such tensors."""
    if isinstance(weights, (list, tuple)):
        return sum(cost_loss(w, costs) for w in weights)
    return (weights * costs.to(weights.dtype)).sum()


def op_cost_fractions(op_names=CANDIDATE_OPS, channels=REFERENCE_CHANNELS, length=REFERENCE_LENGTH):
    """Linear cost per operation in [0, 1]: ``(params / max params + MACs / max MACs) / 2`` (float64)."""
    counts = [op_params_macs(name, channels, length) for name in op_names]
    params = torch.tensor([p for p, _ in counts], dtype=torch.float64)
    macs = torch.tensor([m for _, m in counts], dtype=torch.float64)
    return 0.5 * (params / params.max().clamp_min(1.0) + macs / macs.max().clamp_min(1.0))


def relative_cost(weights, costs):
    """``mean over edges of <y_e, (c - min c) / (max c - min c)>``: 0 for the cheapest cell, 1 for the costliest;
    ``weights`` is a tensor ``[..., n_ops]`` or a list of such tensors (one per node)."""
    if not isinstance(weights, (list, tuple)):
        weights = [weights]
    costs = costs.to(weights[0].dtype)
    scaled = (costs - costs.min()) / (costs.max() - costs.min()).clamp_min(1e-12)
    n_edges = sum(w[..., 0].numel() for w in weights)
    return sum((w * scaled).sum() for w in weights) / n_edges


def relative_cost_loss(task_loss, weights, costs, beta):
    """``beta * stopgrad(task_loss) * relative_cost(weights, costs)`` (see the module notes)."""
    return beta * task_loss.detach() * relative_cost(weights, costs)
