"""The ten candidate operations of AdaRec's search space, on sequences ``[batch, length, channels]``.

Chen et al., *Scene-adaptive Knowledge Distillation for Sequential Recommendation via Differentiable Architecture
Search* (WANT@NeurIPS 2023), §3.2: convolutions (standard, dilated and causal dilated, kernel 3 and 5), max and
average pooling (kernel 3), skip connection and zero. Every operation maps ``[B, L, d]`` to ``[B, L, d]``, so any of
them can sit on any edge of a cell (:mod:`recbole_compress.model.layers.nas_cell`) or replace a layer of another
RecBole backbone.

=============== ===================================================================== ========
name            definition (``d`` channels, dilation ``r`` = 2 by default)            causal?
=============== ===================================================================== ========
``std_cnn_3``   Conv1d(d, d, 3, padding 1) + BatchNorm1d(d)                            no
``dil_cnn_3``   Conv1d(d, d, 3, dilation r, padding r) + BatchNorm1d                   no
``cau_cnn_3``   left padding 2r, Conv1d(d, d, 3, dilation r) + BatchNorm1d             yes
``std_cnn_5``   Conv1d(d, d, 5, padding 2) + BatchNorm1d                               no
``dil_cnn_5``   Conv1d(d, d, 5, dilation r, padding 2r) + BatchNorm1d                  no
``cau_cnn_5``   left padding 4r, Conv1d(d, d, 5, dilation r) + BatchNorm1d             yes
``max_pool``    MaxPool1d(3, stride 1, padding 1)                                      no
``avg_pool``    AvgPool1d(3, stride 1, padding 1) (padding counted, torch's default)   no
``skip_connect`` identity                                                              yes
``none``        zeros                                                                  yes
=============== ===================================================================== ========

The non-causal operations see positions after ``t`` at position ``t``. In RecBole's training (the target is the
item after the last valid position, and the sequence is right-padded with id 0) that is never the target, so all ten
are safe; under left-to-right training on every position (the authors' released code) they would see the label.

**Padding.** Every operation takes an optional ``mask`` ``[B, L]`` (true or 1 at valid positions of right-padded
sequences). With it, padded positions read as absent: the input is zero there (``-inf`` for max pooling), the
output is zero there, and the BatchNorm of the convolutions takes its statistics over valid positions only
(:class:`MaskedBatchNorm1d`). The output at a valid position is then exactly what the unpadded sequence gives (the
positions after its last item are the operation's own boundary padding), whatever the amount of padding and whatever
the padded positions hold; without a mask the operations read every position, padding included.
"""
import torch
from torch import nn

CANDIDATE_OPS = (
    "std_cnn_3",
    "dil_cnn_3",
    "cau_cnn_3",
    "std_cnn_5",
    "dil_cnn_5",
    "cau_cnn_5",
    "max_pool",
    "avg_pool",
    "skip_connect",
    "none",
)
"""The search space in the order of the architecture logits (and of the released code's cost vector)."""

CONV_KINDS = {"std": "standard", "dil": "dilated", "cau": "causal"}


def _valid(mask, x):
    """``mask`` ``[B, L]`` as ``[B, L, 1]`` in ``x``'s dtype."""
    return mask.unsqueeze(-1).to(x.dtype)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over ``[B, C, L]`` whose batch statistics (and running estimates) use the valid positions only.

    ``forward(x, mask)``: ``mask`` ``[B, L]`` marks the valid positions; in training the mean and the biased variance
    per channel are taken over them (the running variance gets the unbiased one, as torch's), in evaluation the
    running estimates are used. Without a mask it is ``nn.BatchNorm1d`` (same parameters and buffers, so checkpoints
    load either way). Padded positions of the output are not zeroed here.
    """

    def forward(self, x, mask=None):
        if mask is None:
            return super().forward(x)
        if not self.training and self.track_running_stats:
            mean, var = self.running_mean, self.running_var
        else:
            m = mask.unsqueeze(1).to(x.dtype)  # [B, 1, L]
            n = m.sum().clamp_min(1.0)
            mean = (x * m).sum((0, 2)) / n
            var = (((x - mean[None, :, None]) * m) ** 2).sum((0, 2)) / n
            if self.training and self.track_running_stats:
                self._update_running(mean.detach(), var.detach(), n)
        scale = torch.rsqrt(var + self.eps)
        out = (x - mean[None, :, None]) * scale[None, :, None]
        if self.affine:
            out = out * self.weight[None, :, None] + self.bias[None, :, None]
        return out

    @torch.no_grad()
    def _update_running(self, mean, var, n):
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * n / (n - 1).clamp_min(1.0)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)


class ConvOp(nn.Module):
    """1-D convolution over the sequence followed by BatchNorm1d, on ``[B, L, d]`` (``mask``: see the module notes).

    Args:
        channels (int): input and output channels ``d``.
        kernel_size (int): odd kernel width.
        mode (str): ``standard`` (dilation 1, centred), ``dilated`` (centred) or ``causal`` (left padding only:
            output ``t`` depends on inputs ``<= t``).
        dilation (int): dilation of the ``dilated`` and ``causal`` modes.
    """

    def __init__(self, channels, kernel_size, mode="standard", dilation=2):
        super().__init__()
        if mode not in CONV_KINDS.values():
            raise ValueError(f"mode must be one of {sorted(CONV_KINDS.values())}, got {mode!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.mode = mode
        self.kernel_size = kernel_size
        self.dilation = 1 if mode == "standard" else int(dilation)
        span = (kernel_size - 1) * self.dilation
        self.left_pad = span if mode == "causal" else 0
        padding = 0 if mode == "causal" else span // 2
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=self.dilation, padding=padding)
        self.bn = MaskedBatchNorm1d(channels)

    def forward(self, x, mask=None):
        if mask is not None:
            x = x * _valid(mask, x)
        h = x.transpose(1, 2)
        if self.left_pad:
            h = nn.functional.pad(h, (self.left_pad, 0))
        out = self.bn(self.conv(h), mask).transpose(1, 2)
        return out if mask is None else out * _valid(mask, out)

    def extra_repr(self):
        return f"mode={self.mode}, kernel_size={self.kernel_size}, dilation={self.dilation}"


class PoolOp(nn.Module):
    """Max or average pooling over the sequence (stride 1, same length), on ``[B, L, d]``."""

    def __init__(self, kind, kernel_size=3):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
        self.kind = kind
        pad = kernel_size // 2
        if kind == "max":
            self.pool = nn.MaxPool1d(kernel_size, stride=1, padding=pad)
        else:
            self.pool = nn.AvgPool1d(kernel_size, stride=1, padding=pad)

    def forward(self, x, mask=None):
        if mask is None:
            return self.pool(x.transpose(1, 2)).transpose(1, 2)
        valid = mask.unsqueeze(-1).bool()
        # padded positions read as the pooling's own boundary padding: -inf for max, 0 (counted) for average
        x = x.masked_fill(~valid, float("-inf") if self.kind == "max" else 0.0)
        return self.pool(x.transpose(1, 2)).transpose(1, 2).masked_fill(~valid, 0.0)


class SkipOp(nn.Module):
    """Identity (zero at padded positions when a mask is given)."""

    def forward(self, x, mask=None):
        return x if mask is None else x * _valid(mask, x)


class ZeroOp(nn.Module):
    """Zeros (the edge is absent)."""

    def forward(self, x, mask=None):
        return torch.zeros_like(x)


def parse_op_name(name):
    """``(kind, kernel_size)`` of an operation name: ``('std', 3)``, ``('max_pool', None)``, ``('none', None)``."""
    if name not in CANDIDATE_OPS:
        raise ValueError(f"unknown operation {name!r}; allowed: {', '.join(CANDIDATE_OPS)}")
    if "_cnn_" in name:
        kind, _, k = name.split("_")
        return kind, int(k)
    return name, None


def build_op(name, channels, dilation=2, pool_kernel=3):
    """The operation ``name`` (one of :data:`CANDIDATE_OPS`) for ``channels`` channels."""
    kind, kernel = parse_op_name(name)
    if kernel is not None:
        return ConvOp(channels, kernel, mode=CONV_KINDS[kind], dilation=dilation)
    if name == "max_pool":
        return PoolOp("max", pool_kernel)
    if name == "avg_pool":
        return PoolOp("avg", pool_kernel)
    if name == "skip_connect":
        return SkipOp()
    return ZeroOp()


def is_causal(name):
    """Whether output ``t`` of ``name`` depends on inputs at positions ``<= t`` only."""
    kind, _ = parse_op_name(name)
    return kind in ("cau", "skip_connect", "none")
