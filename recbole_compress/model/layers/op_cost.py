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
