"""Dispatcher attention: Eq. 6-7 by hand, masking, slot permutation, no L x L tensor, affine FLOPs in L."""
import math

import pytest
import torch
import torch.nn.functional as F
from recbole.model.layers import MultiHeadAttention, TransformerLayer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from recbole_compress.model.layers.dispatcher import CrossMultiHeadAttention, DispatcherAttention


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor every aten op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape), t.numel()))
        return out


def by_hand(module, query, context, mask=None):
    """LN(query + dense(softmax(Q K^T / sqrt(d/h) + mask) V)) from the module's own weights, head by head."""
    h, dh = module.n_heads, module.head_size
    q, k, v = (F.linear(t, m.weight, m.bias) for t, m in
               ((query, module.query), (context, module.key), (context, module.value)))
    heads = []
    for i in range(h):
        sl = slice(i * dh, (i + 1) * dh)
        scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(dh)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[..., sl])
    attn = F.linear(torch.cat(heads, -1), module.dense.weight, module.dense.bias)
    ln = module.LayerNorm
    return F.layer_norm(query + attn, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def make(n_heads=1, d=8, aggregate=True):
    torch.manual_seed(0)
    return DispatcherAttention(n_heads, d, 0.0, 0.0, 1e-12, aggregate=aggregate).double().eval()


@pytest.mark.parametrize("n_heads", [1, 2])
def test_aggregate_and_dispatch_follow_eq_6_and_7(n_heads):
    layer = make(n_heads)
    x = torch.randn(3, 11, 8, dtype=torch.float64)
    p = torch.randn(3, 4, 8, dtype=torch.float64)
    mask = torch.arange(11)[None, :] < torch.tensor([11, 5, 1])[:, None]
    x_out, p_out = layer(x, p, mask)
    p_expected = by_hand(layer.aggregation, p, x, mask)  # Eq. 6: slots query the tokens
    torch.testing.assert_close(p_out, p_expected, atol=1e-10, rtol=0)
    x_expected = by_hand(layer.dispatch, x, p_expected)  # Eq. 7: tokens query the aggregated slots
    torch.testing.assert_close(x_out, x_expected, atol=1e-10, rtol=0)


def test_padded_tokens_get_zero_weight_and_never_change_the_slots():
    layer = make(2)
    x = torch.randn(4, 13, 8, dtype=torch.float64)
    p = torch.randn(4, 3, 8, dtype=torch.float64)
    lengths = torch.tensor([13, 1, 6, 12])
    mask = torch.arange(13)[None, :] < lengths[:, None]
    x_out, p_out, probs = layer(x, p, mask, return_probs=True)
    assert probs["aggregate"].shape == (4, 2, 3, 13) and probs["dispatch"].shape == (4, 2, 13, 3)
    padded = ~mask[:, None, None, :].expand_as(probs["aggregate"])
    assert torch.all(probs["aggregate"][padded] == 0)
    junk = torch.where(mask.unsqueeze(-1), x, 1000 * torch.randn_like(x))
    x_junk, p_junk = layer(junk, p, mask)
    torch.testing.assert_close(p_junk, p_out, atol=1e-10, rtol=0)
    torch.testing.assert_close(x_junk[mask], x_out[mask], atol=1e-10, rtol=0)


def test_slot_permutation_permutes_slots_and_leaves_tokens_unchanged():
    layer = make(2)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    p = torch.randn(2, 5, 8, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    x_out, p_out = layer(x, p)
    x_perm, p_perm = layer(x, p[:, perm])
    torch.testing.assert_close(p_perm, p_out[:, perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(x_perm, x_out, atol=1e-10, rtol=0)


def test_dispatch_only_skips_aggregation_and_saves_one_attention():
    full, only = make(2, aggregate=True), make(2, aggregate=False)
    d = 8
    n_full = sum(p.numel() for p in full.parameters())
    n_only = sum(p.numel() for p in only.parameters())
    assert n_full - n_only == 4 * (d * d + d)
    x = torch.randn(2, 7, d, dtype=torch.float64)
    p = torch.randn(2, 3, d, dtype=torch.float64)
    _, p_out = only(x, p)
    torch.testing.assert_close(p_out, F.layer_norm(p, (d,), only.slot_norm.weight, only.slot_norm.bias, 1e-12))


def test_gradients_reach_the_slots_and_every_weight():
    layer = DispatcherAttention(2, 8, 0.0, 0.0)
    x = torch.randn(2, 10, 8)
    p = torch.randn(2, 4, 8, requires_grad=True)
    x_out, p_out = layer(x, p)
    ((x_out * torch.randn_like(x_out)).sum() + (p_out * torch.randn_like(p_out)).sum()).backward()
    assert p.grad.abs().sum() > 0
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("aggregate", [True, False])
def test_the_read_back_at_given_positions_equals_the_full_pass_there(aggregate):
    """``index``: the tokens read the slots back at one position each; the values, the slots and every gradient
    equal those of the full pass read at those positions (padded tokens included in the batch)."""
    layer = make(n_heads=2, aggregate=aggregate)
    x = torch.randn(4, 9, 8, dtype=torch.double, requires_grad=True)
    p = torch.randn(4, 3, 8, dtype=torch.double, requires_grad=True)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 1, 4, 7])[:, None]
    index = torch.tensor([8, 0, 3, 6])
    weight = torch.randn(4, 8, dtype=torch.double)

    def run(**kwargs):
        x_out, p_out = layer(x, p, mask, **kwargs)
        rows = x_out[:, 0] if kwargs else x_out[torch.arange(4), index]
        ((rows * weight).sum() + p_out.pow(2).sum()).backward()
        grads = [t.grad.clone() for t in (x, p)] + [w.grad.clone() for w in layer.parameters()]
        for t in [x, p, *layer.parameters()]:
            t.grad = None
        return rows, p_out, grads

    rows_full, p_full, g_full = run()
    rows_at, p_at, g_at = run(index=index)
    torch.testing.assert_close(rows_at, rows_full)
    torch.testing.assert_close(p_at, p_full)
    for a, b in zip(g_at, g_full):
        torch.testing.assert_close(a, b)


def largest(shapes):
    return max(n for _, _, n in shapes)


def test_no_length_by_length_tensor_anywhere_forward_or_backward():
    B, L, d, m, h = 2, 97, 16, 4, 2  # L prime and larger than every other size
    layer = DispatcherAttention(h, d, 0.1, 0.1)
    x = torch.randn(B, L, d, requires_grad=True)
    p = torch.randn(B, m, d, requires_grad=True)
    mask = torch.arange(L)[None, :] < torch.tensor([L, 40])[:, None]
    with ShapeRecorder() as rec:
        x_out, p_out = layer(x, p, mask)
        (x_out.sum() + p_out.sum()).backward()
    assert len(rec.shapes) > 50 and any("mm" in f for f, _, _ in rec.shapes)
    assert largest(rec.shapes) < L * L, max(rec.shapes, key=lambda s: s[2])
    assert not any(sum(dim == L for dim in shape) >= 2 for _, shape, _ in rec.shapes)
    assert any(shape == (B, h, m, L) for _, shape, _ in rec.shapes)  # the aggregation map is [B, h, m, L]
    # the same recorder sees self-attention's L x L map (the check can fail)
    sa = MultiHeadAttention(h, d, 0.1, 0.1, 1e-12)
    with ShapeRecorder() as rec_sa:
        sa(x, torch.zeros(B, 1, 1, L)).sum().backward()
    assert any(shape == (B, h, L, L) for _, shape, _ in rec_sa.shapes)
    assert largest(rec_sa.shapes) >= B * h * L * L


def flops(module, make_inputs, lengths):
    counts = []
    for length in lengths:
        with FlopCounterMode(display=False) as counter:
            module(*make_inputs(length))
        counts.append(counter.get_total_flops())
    return counts


def test_flops_are_exactly_affine_in_length_unlike_self_attention():
    d, m, h, B = 16, 4, 2, 2
    layer = DispatcherAttention(h, d).eval()
    slots = torch.randn(B, m, d)
    f50, f200, f800 = flops(layer, lambda L: (torch.randn(B, L, d), slots, torch.ones(B, L, dtype=torch.bool)),
                            (50, 200, 800))
    assert (f800 - f200) * 150 == (f200 - f50) * 600
    trm = TransformerLayer(h, d, 4 * d, 0.0, 0.0, "gelu", 1e-12).eval()
    s50, s200, s800 = flops(trm, lambda L: (torch.randn(B, L, d), torch.zeros(B, 1, L, L)), (50, 200, 800))
    assert (s800 - s200) * 150 > (s200 - s50) * 600  # quadratic: positive second difference


def test_bad_head_count_is_refused():
    with pytest.raises(ValueError, match="n_heads"):
        CrossMultiHeadAttention(3, 8)
