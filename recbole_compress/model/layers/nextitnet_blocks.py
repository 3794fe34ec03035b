"""NextItNet residual blocks (dilated causal convolutions) with CpRec's layer-wise parameter sharing.

Residual block ``r`` with base dilation ``delta_r`` (NextItNet's block "b", Yuan et al. WSDM 2019; the same block as
RecBole's ``ResidualBlock_b``)::

    A  = ReLU(LN_{r,1}(CConv(X; theta(r, 0), dilation delta_r)))
    Y  = ReLU(LN_{r,2}(CConv(A; theta(r, 1), dilation 2 delta_r)))
    X' = X + Y

``CConv`` is a causal 1-D convolution (left zero padding of ``(k - 1) * dilation``) with a bias. The conv parameters
of (block r, layer l) come from set ``theta(r, l)``, after the sharing schemes of CpRec (Sun et al. SIGIR 2020, §3.2,
Fig. 3):

============== ===================== ================ ==============================================================
scheme         theta(r, l)           conv sets        meaning
============== ===================== ================ ==============================================================
none           2r + l                2R               NextItNet
cross_layer    0                     1                every conv layer shares one set (ALBERT)
cross_block    l                     2                every block reuses the first block's two layers
adjacent_layer r                     R                the two layers inside a block share one set
adjacent_block 2 floor(r/2) + l      2 ceil(R/2)      blocks (0,1), (2,3), ... share, layer position kept
============== ===================== ================ ==============================================================

Weight and bias are shared together; the dilation is not a parameter, so a shared kernel runs at whatever dilation
its layer position uses. LayerNorms are never shared (2R of them). Middle-layer parameters, with
``C = k d^2 + d`` and ``Lambda = 2d``: ``sets(scheme, R) * C + 2R * Lambda``.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from recbole_compress.errors import ConfigError

SHARING_SCHEMES = ("none", "cross_layer", "cross_block", "adjacent_layer", "adjacent_block")


def check_sharing_scheme(scheme, key="sharing_scheme"):
    if scheme not in SHARING_SCHEMES:
        raise ConfigError(f"{key}={scheme!r} is not a sharing scheme; allowed: {', '.join(SHARING_SCHEMES)}")
    return scheme


def conv_set_index(scheme, block, layer):
    """theta(r, l): the conv parameter set used by layer ``layer`` (0 or 1) of residual block ``block``."""
    check_sharing_scheme(scheme)
    if scheme == "none":
        return 2 * block + layer
    if scheme == "cross_layer":
        return 0
    if scheme == "cross_block":
        return layer
    if scheme == "adjacent_layer":
        return block
    return 2 * (block // 2) + layer  # adjacent_block


def n_conv_sets(scheme, n_blocks):
    """Number of distinct conv parameter sets for ``n_blocks`` residual blocks."""
    check_sharing_scheme(scheme)
    return {
        "none": 2 * n_blocks,
        "cross_layer": 1,
        "cross_block": 2,
        "adjacent_layer": n_blocks,
        "adjacent_block": 2 * math.ceil(n_blocks / 2),
    }[scheme]


def middle_parameters(scheme, n_blocks, channels, kernel_size):
    """Closed-form parameter count of :class:`NextItNetResidualStack`."""
    conv = kernel_size * channels * channels + channels
    return n_conv_sets(scheme, n_blocks) * conv + 2 * n_blocks * 2 * channels


class CausalConv1d(nn.Module):
    """Parameters of one causal convolution (weight ``[out, in, k]`` and bias), applied at a dilation given per call,
    so one set can serve layers of different dilations.

    Input and output ``[B, C, L]``; output position t sees inputs ``t - (k-1-i) * dilation`` for i < k (never later
    positions)."""

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self):
        """Truncated normal (std 0.02) weights and zero bias, as the official NextItNet/CpRec code."""
        nn.init.trunc_normal_(self.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(self.bias)

    def forward(self, x, dilation=1):
        # run as a (1 x k) 2-D convolution over [B, C, 1, L]: the same arithmetic as conv1d, and about twice as fast
        # on CPU (oneDNN), as RecBole's NextItNet does
        x = F.pad(x.unsqueeze(2), ((self.kernel_size - 1) * dilation, 0))
        return F.conv2d(x, self.weight.unsqueeze(2), self.bias, dilation=(1, dilation)).squeeze(2)


class NextItNetResidualStack(nn.Module):
    """A stack of NextItNet residual blocks with a sharing scheme: ``[B, L, d]`` to ``[B, L, d]``, causal.

    Args:
        channels (int): d (embedding size = residual channels).
        kernel_size (int): k.
        dilations (list of int): base dilation of every residual block (RecBole: ``dilations * block_num``); the
            block's second conv runs at twice it.
        sharing_scheme (str): one of :data:`SHARING_SCHEMES`.
        layer_norm_eps (float): LayerNorm epsilon (1e-8 in NextItNet).
    """

    def __init__(self, channels, kernel_size, dilations, sharing_scheme="none", layer_norm_eps=1e-8):
        super().__init__()
        check_sharing_scheme(sharing_scheme)
        self.dilations = [int(d) for d in dilations]
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ConfigError(f"dilations must be a non-empty list of positive integers, got {list(dilations)!r}")
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        self.sharing_scheme = sharing_scheme
        R = len(self.dilations)
        self.convs = nn.ModuleList(
            [CausalConv1d(channels, channels, kernel_size) for _ in range(n_conv_sets(sharing_scheme, R))]
        )
        self.layer_norms = nn.ModuleList([nn.LayerNorm(channels, eps=layer_norm_eps) for _ in range(2 * R)])

    @property
    def n_blocks(self):
        return len(self.dilations)

    def conv(self, block, layer):
        """The conv parameter holder used by layer ``layer`` of residual block ``block``."""
        return self.convs[conv_set_index(self.sharing_scheme, block, layer)]

    def layer_norm(self, block, layer):
        return self.layer_norms[2 * block + layer]

    def forward(self, x):
        for r, dilation in enumerate(self.dilations):
            out = self.conv(r, 0)(x.transpose(1, 2), dilation)
            out = F.relu(self.layer_norm(r, 0)(out.transpose(1, 2)))
            out = self.conv(r, 1)(out.transpose(1, 2), 2 * dilation)
            out = F.relu(self.layer_norm(r, 1)(out.transpose(1, 2)))
            x = x + out
        return x

    def receptive_field(self):
        """Number of input positions that can reach one output position: ``1 + (k-1) * sum_r 3 delta_r``."""
        return 1 + (self.kernel_size - 1) * sum(3 * d for d in self.dilations)

    def num_parameters_formula(self):
        return middle_parameters(self.sharing_scheme, self.n_blocks, self.channels, self.kernel_size)

    def extra_repr(self):
        return f"dilations={self.dilations}, sharing_scheme={self.sharing_scheme!r}, conv_sets={len(self.convs)}"
