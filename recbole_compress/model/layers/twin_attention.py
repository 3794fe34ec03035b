"""Twin attention: depth-wise convolution heads (local) beside self-attention heads (global) (LSAN, Li et al.,
CIKM 2021, §3.2-§3.3.1, Eq.(9)-(13)).

- :class:`DepthwiseConvHeads`: ``H`` heads, each one length-``L`` kernel per channel shared over positions (``L*D``
  weights, no bias; LightConv's depth-wise convolution without its softmax normalisation or weight sharing, which
  the paper does not use). Eq.(9): ``out[i, d] = sum_{j=1..L} W[d, j] * x[i + j - ceil((L+1)/2), d]``, rows outside
  the sequence count as zero (centred window: offsets -2..+2 for L = 5). ``padding="causal"`` uses offsets
  ``-(L-1)..0`` instead.
- :class:`SelfAttentionHeads`: ``H`` scaled dot-product heads on the position-augmented input, Eq.(10)-(11). Each
  head is ``D`` wide (``head_width="full"``, implied by the paper's cost ``O(H(LD + 3D^2))``) or ``D/H`` wide
  (``"split"``, the usual multi-head layout, as RecBole's ``MultiHeadAttention``).
- :class:`TwinAttention`: the concatenation of the 2H head outputs projected back to ``D``, Eq.(12);
  ``mode="sa_only"`` (2H attention heads, the paper's ablation) and ``"conv_only"`` (2H convolution heads).
- :class:`TwinAttentionLayer` / :class:`TwinAttentionEncoder`: twin attention and the point-wise GeLU FFN,
  Eq.(13), with SASRec-style post-LN residual blocks (the paper never mentions residuals or LayerNorm; switch them
  off with ``use_residual_ln=False``). The position embeddings enter the attention branch only, in the first layer.

Every module takes ``[B, T, D]`` sequences, a ``[B, T]`` boolean mask of valid positions and RecBole's additive
attention mask (``SequentialRecommender.get_attention_mask``: 0 or -10000, ``[B, 1, T, T]``), so it can replace the
Transformer encoder of any RecBole sequential model. Each also takes ``index`` (``[B]`` positions): then it computes
its output at those positions only, ``[B, D]`` (keys, values and windows still read the whole sequence). A model
whose loss and scores read one position per sequence (LSAN: the last valid item) passes it to its last layer, which
then does the attention queries, the projection, the FFN, the LayerNorms and their dropout for one row instead of T.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_compress.model.layers.fast_dropout import FastDropout

_ACT = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def rows_at(x, index):
    """``x[b, index[b]]`` for every b: ``[B, T, ...] -> [B, ...]``."""
    return x[torch.arange(x.size(0), device=x.device), index]


def conv_padding_sizes(kernel_size, padding="centered"):
    """(left, right) zero padding: ``(ceil((L+1)/2) - 1, L - ceil((L+1)/2))`` centred (Eq.(9)), ``(L-1, 0)`` causal."""
    if padding == "centered":
        centre = math.ceil((kernel_size + 1) / 2)
        return centre - 1, kernel_size - centre
    if padding == "causal":
        return kernel_size - 1, 0
    raise ValueError(f"conv_padding must be 'centered' or 'causal', got {padding!r}")


class DepthwiseConvHeads(nn.Module):
    """``H`` depth-wise convolution heads over time: ``[B, T, D] -> [B, T, H*D]`` (head h in slice h*D:(h+1)*D).

    Args:
        hidden_size (int): D.
        n_heads (int): H.
        kernel_size (int): L.
        padding (str): ``centered`` (Eq.(9)) or ``causal``.
    """

    def __init__(self, hidden_size, n_heads, kernel_size=5, padding="centered"):
        super().__init__()
        if int(kernel_size) < 1:
            raise ValueError(f"conv_kernel_size must be >= 1, got {kernel_size}")
        self.hidden_size, self.n_heads, self.kernel_size = int(hidden_size), int(n_heads), int(kernel_size)
        self.padding = conv_padding_sizes(self.kernel_size, padding)
        self.weight = nn.Parameter(torch.empty(self.n_heads, self.hidden_size, self.kernel_size))
        bound = 1.0 / math.sqrt(self.kernel_size)  # torch's Conv1d default for a depth-wise kernel (fan_in = L)
        nn.init.uniform_(self.weight, -bound, bound)

    def extra_repr(self):
        return f"hidden_size={self.hidden_size}, n_heads={self.n_heads}, kernel_size={self.kernel_size}, " \
               f"padding={self.padding}"

    def forward(self, x, index=None):
        """``[B, T, D] -> [B, T, H*D]``, or ``[B, H*D]`` at the positions ``index`` (``[B]``)."""
        b, t, d = x.shape
        left, right = self.padding
        padded = F.pad(x, (0, 0, left, right)).unsqueeze(2)  # [B, T + L - 1, 1, D]
        if index is not None:  # the window of position i is padded rows i .. i + L - 1
            windows = padded[torch.arange(b, device=x.device).unsqueeze(1),
                             index.unsqueeze(1) + torch.arange(self.kernel_size, device=x.device)]  # [B, L, 1, D]
            return torch.einsum("bld,hdl->bhd", windows.squeeze(2), self.weight).reshape(b, self.n_heads * d)
        # Eq.(9) as L shifted multiply-adds, [B, T, H, D]: on a CPU a depth-wise F.conv1d (groups = D) is several
        # times slower for these short sequences and narrow kernels, forward and backward (same values)
        y = padded[:, 0:t] * self.weight[:, :, 0]
        for j in range(1, self.kernel_size):
            y = torch.addcmul(y, padded[:, j:j + t], self.weight[:, :, j])
        return y.reshape(b, t, self.n_heads * d)


class SelfAttentionHeads(nn.Module):
    """``H`` scaled dot-product self-attention heads: ``[B, T, D] -> [B, T, H*head_dim]``.

    Args:
        hidden_size (int): D.
        n_heads (int): H.
        head_width (str): ``full`` (each head D wide, ``3H(D^2 + D)`` parameters) or ``split`` (D/H wide).
        attn_dropout_prob (float): dropout on the attention probabilities.
    """

    def __init__(self, hidden_size, n_heads, head_width="full", attn_dropout_prob=0.0):
        super().__init__()
        self.hidden_size, self.n_heads = int(hidden_size), int(n_heads)
        if head_width == "full":
            self.head_dim = self.hidden_size
        elif head_width == "split":
            if self.hidden_size % self.n_heads:
                raise ValueError(
                    f"head_width 'split' needs hidden_size ({hidden_size}) divisible by the attention heads ({n_heads})"
                )
            self.head_dim = self.hidden_size // self.n_heads
        else:
            raise ValueError(f"head_width must be 'full' or 'split', got {head_width!r}")
        self.out_dim = self.n_heads * self.head_dim
        self.query = nn.Linear(self.hidden_size, self.out_dim)
        self.key = nn.Linear(self.hidden_size, self.out_dim)
        self.value = nn.Linear(self.hidden_size, self.out_dim)
        self.attn_dropout = FastDropout(attn_dropout_prob)
        self.last_attention = None  # probabilities of the last call when keep_attention is set (for inspection)
        self.keep_attention = False

    def _heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]

    def forward(self, x, attention_mask, index=None):
        """``[B, T, D] -> [B, T, H*hd]``, or ``[B, H*hd]`` for the queries at the positions ``index`` (``[B]``)."""
        k, v = self._heads(self.key(x)), self._heads(self.value(x))
        if index is None:
            q = self._heads(self.query(x))
        else:  # one query row per sequence, and its row of the mask
            q = self._heads(self.query(rows_at(x, index)).unsqueeze(1))  # [B, H, 1, hd]
            if attention_mask.size(-2) > 1:  # [B, 1, T, T] (a [B, 1, 1, T] mask is the same for every query)
                attention_mask = rows_at(attention_mask.transpose(1, 2), index).unsqueeze(2)  # [B, 1, 1, T]
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + attention_mask
        probs = torch.softmax(scores, dim=-1)
        if self.keep_attention:
            self.last_attention = probs.detach()
        out = torch.matmul(self.attn_dropout(probs), v)  # [B, H, T or 1, hd]
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.out_dim)
        return out if index is None else out[:, 0]


class TwinAttention(nn.Module):
    """Eq.(12): ``[conv_1 .. conv_H ; sa_1 .. sa_H] W_O + b_O``, ``[B, T, D]``.

    Args:
        hidden_size (int): D.
        n_heads (int): H, heads per branch (2H heads in all).
        kernel_size (int): L of the convolution heads.
        mode (str): ``twin`` (H + H), ``sa_only`` (2H attention heads) or ``conv_only`` (2H convolution heads).
        head_width (str): width of the attention heads, ``full`` or ``split``.
        conv_padding (str): ``centered`` or ``causal``.
        attn_dropout_prob (float): dropout on the attention probabilities.
    """

    MODES = ("twin", "sa_only", "conv_only")

    def __init__(self, hidden_size, n_heads, kernel_size=5, mode="twin", head_width="full", conv_padding="centered",
                 attn_dropout_prob=0.0):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"twin_mode must be one of {self.MODES}, got {mode!r}")
        if int(n_heads) < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        self.mode = mode
        n_conv = {"twin": n_heads, "sa_only": 0, "conv_only": 2 * n_heads}[mode]
        n_sa = {"twin": n_heads, "sa_only": 2 * n_heads, "conv_only": 0}[mode]
        self.conv = DepthwiseConvHeads(hidden_size, n_conv, kernel_size, conv_padding) if n_conv else None
        self.attention = (
            SelfAttentionHeads(hidden_size, n_sa, head_width, attn_dropout_prob) if n_sa else None
        )
        concat = (n_conv * hidden_size) + (self.attention.out_dim if self.attention is not None else 0)
        self.concat_dim = concat
        self.output = nn.Linear(concat, hidden_size)  # W_O, b_O

    def forward(self, x_conv, x_attention, attention_mask, mask, index=None):
        """``x_conv``: input of the convolution heads (without positions); ``x_attention``: input of the attention
        heads (with positions in the first layer); ``mask``: ``[B, T]`` valid positions; ``index``: ``[B]``
        positions to compute the output at (``[B, D]``), or None for every position (``[B, T, D]``)."""
        parts = []
        if self.conv is not None:  # padded rows must not leak in
            parts.append(self.conv(x_conv * mask.unsqueeze(-1).to(x_conv.dtype), index))
        if self.attention is not None:
            parts.append(self.attention(x_attention, attention_mask, index))
        return self.output(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])


class TwinAttentionLayer(nn.Module):
    """Twin attention and the point-wise FFN, Eq.(12)-(13), each in a post-LN residual block (switchable)."""

    def __init__(self, hidden_size, n_heads, kernel_size=5, mode="twin", head_width="full", conv_padding="centered",
                 inner_size=None, hidden_dropout_prob=0.0, attn_dropout_prob=0.0, hidden_act="gelu",
                 layer_norm_eps=1e-12, use_residual_ln=True):
        super().__init__()
        if hidden_act not in _ACT:
            raise ValueError(f"hidden_act must be one of {sorted(_ACT)}, got {hidden_act!r}")
        inner_size = int(inner_size or hidden_size)
        self.twin = TwinAttention(hidden_size, n_heads, kernel_size, mode, head_width, conv_padding, attn_dropout_prob)
        self.dropout1 = FastDropout(hidden_dropout_prob)
        self.ffn_in = nn.Linear(hidden_size, inner_size)
        self.ffn_out = nn.Linear(inner_size, hidden_size)
        self.act = _ACT[hidden_act]
        self.dropout2 = FastDropout(hidden_dropout_prob)
        self.use_residual_ln = bool(use_residual_ln)
        if self.use_residual_ln:
            self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
            self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x_conv, x_attention, attention_mask, mask, residual=None, index=None):
        """``residual``: what the twin output is added to (default ``x_attention``); ``index``: ``[B]`` positions
        to compute the output at (``[B, D]``), or None for every position (``[B, T, D]``)."""
        residual = x_attention if residual is None else residual
        y = self.dropout1(self.twin(x_conv, x_attention, attention_mask, mask, index))
        if index is not None:
            residual, mask = rows_at(residual, index), rows_at(mask, index)
        if self.use_residual_ln:
            y = self.norm1(residual + y)
        z = self.dropout2(self.ffn_out(self.act(self.ffn_in(y))))
        if self.use_residual_ln:
            z = self.norm2(y + z)
        return z * mask.unsqueeze(-1).to(z.dtype)


class TwinAttentionEncoder(nn.Module):
    """``n_layers`` twin-attention layers (the paper's best is one).

    The first layer's convolution heads read the item representations ``x``; its attention heads and its residual
    read ``x + positions``; later layers read the previous layer's output in both branches.
    """

    def __init__(self, n_layers=1, **layer_kwargs):
        super().__init__()
        if int(n_layers) < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.layers = nn.ModuleList(TwinAttentionLayer(**layer_kwargs) for _ in range(int(n_layers)))

    def forward(self, x, positions, attention_mask, mask, index=None):
        """``[B, T, D]``, or ``[B, D]`` at the positions ``index`` (``[B]``: the last layer computes those rows
        only)."""
        x_attention = x + positions if positions is not None else x
        last = len(self.layers) - 1
        out = self.layers[0](x, x_attention, attention_mask, mask, residual=x_attention,
                             index=index if last == 0 else None)
        for n, layer in enumerate(self.layers[1:], start=1):
            out = layer(out, out, attention_mask, mask, index=index if n == last else None)
        return out
