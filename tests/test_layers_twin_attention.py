"""Twin attention: Eq.(9) convolution heads, receptive fields, attention heads, shapes, parameters, masking."""
import math

import pytest
import torch

from recbole_compress.model.layers.twin_attention import (
    DepthwiseConvHeads,
    SelfAttentionHeads,
    TwinAttention,
    TwinAttentionEncoder,
    TwinAttentionLayer,
    conv_padding_sizes,
)

torch.set_num_threads(1)  # 2 shared cores: intra-op threads only contend (20x slower under load)


def _attention_mask(valid, causal=True):
    mask = valid[:, None, None, :].expand(-1, 1, valid.shape[1], -1)
    if causal:
        mask = torch.tril(mask)
    return torch.where(mask, 0.0, -10000.0)


def _eq9_loop(x, weight, padding):
    """Eq.(9) written out: out[i, d] = sum_j W[d, j] x[i + j - ceil((L+1)/2), d] (1-based j), zero outside."""
    b, t, d = x.shape
    h, _, k = weight.shape
    centre = math.ceil((k + 1) / 2) if padding == "centered" else k
    out = torch.zeros(b, t, h * d)
    for head in range(h):
        for i in range(t):
            for j in range(1, k + 1):
                src = i + j - centre
                if 0 <= src < t:
                    out[:, i, head * d:(head + 1) * d] += weight[head, :, j - 1] * x[:, src, :]
    return out


@pytest.mark.parametrize("kernel,padding", [(5, "centered"), (4, "centered"), (3, "causal"), (5, "causal")])
def test_depthwise_conv_matches_eq9(kernel, padding):
    torch.manual_seed(kernel)
    conv = DepthwiseConvHeads(6, 2, kernel, padding)
    x = torch.randn(2, 9, 6, requires_grad=True)
    out, ref = conv(x), _eq9_loop(x, conv.weight, padding)
    assert torch.allclose(out, ref, atol=1e-5)
    # and the gradients (what training sees) are Eq.(9)'s, for the input and the kernels
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, conv.weight), g)
    ref_grads = torch.autograd.grad(ref, (x, conv.weight), g)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5)
    assert conv.weight.numel() == 2 * 6 * kernel  # L*D weights per head, no bias
    assert [n for n, _ in conv.named_parameters()] == ["weight"]


def test_padding_sizes():
    assert conv_padding_sizes(5, "centered") == (2, 2)
    assert conv_padding_sizes(4, "centered") == (2, 1)
    assert conv_padding_sizes(5, "causal") == (4, 0)
    with pytest.raises(ValueError):
        conv_padding_sizes(5, "same")


@pytest.mark.parametrize("kernel,padding", [(5, "centered"), (4, "centered"), (5, "causal")])
def test_convolution_sees_only_its_window(kernel, padding):
    torch.manual_seed(1)
    conv = DepthwiseConvHeads(4, 2, kernel, padding)
    left, right = conv_padding_sizes(kernel, padding)
    t = 12
    x = torch.randn(1, t, 4)
    base = conv(x)
    for p in range(t):
        x2 = x.clone()
        x2[0, p] += 10.0
        changed = ((conv(x2) - base).abs().amax(-1) > 1e-6)[0].nonzero().flatten().tolist()
        expected = [i for i in range(p - right, p + left + 1) if 0 <= i < t]
        assert changed == expected, (p, changed, expected)
        if padding == "causal":  # the output at t never depends on anything after t
            assert all(i >= p for i in changed)


def test_full_width_attention_parameters_and_padded_keys_get_zero_probability():
    d, h = 8, 2
    sa = SelfAttentionHeads(d, h, head_width="full")
    assert sum(p.numel() for p in sa.parameters()) == 3 * h * (d * d + d)
    assert sa.out_dim == h * d
    valid = torch.tensor([[True, True, True, False, False]])
    sa.keep_attention = True
    out = sa(torch.randn(1, 5, d), _attention_mask(valid))
    assert out.shape == (1, 5, h * d)
    probs = sa.last_attention
    assert torch.all(probs[..., 3:] == 0)
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert torch.all(probs[0, :, 1, 2:] == 0)  # causal: position 1 attends to 0..1 only
    with pytest.raises(ValueError):
        SelfAttentionHeads(10, 3, head_width="split")


def test_twin_shapes_parameters_and_modes():
    d, h, k = 8, 2, 5
    twin = TwinAttention(d, h, k, mode="twin")
    assert twin.concat_dim == 2 * h * d and twin.output.weight.shape == (d, 2 * h * d)  # W_O: 2HD -> D
    assert twin.conv.weight.numel() == h * k * d
    assert sum(p.numel() for p in twin.attention.parameters()) == 3 * h * (d * d + d)
    sa_only = TwinAttention(d, h, k, mode="sa_only")
    assert sa_only.conv is None and sa_only.attention.n_heads == 2 * h
    conv_only = TwinAttention(d, h, k, mode="conv_only")
    assert conv_only.attention is None and conv_only.conv.n_heads == 2 * h
    total = sum(p.numel() for p in twin.parameters())
    assert total == h * (k * d + 3 * (d * d + d)) + (2 * h * d * d + d)  # the paper's O(H(LD + 3D^2)) + W_O
    assert total < sum(p.numel() for p in sa_only.parameters())  # fewer than 2H attention heads
    x = torch.randn(2, 6, d)
    valid = torch.ones(2, 6, dtype=torch.bool)
    for module in (twin, sa_only, conv_only):
        assert module(x, x, _attention_mask(valid), valid).shape == (2, 6, d)
    with pytest.raises(ValueError):
        TwinAttention(d, h, mode="both")


def test_padded_rows_never_leak_into_valid_positions():
    torch.manual_seed(2)
    d = 8
    layer = TwinAttentionLayer(d, 2, 5, inner_size=16).eval()
    valid = torch.tensor([[True] * 4 + [False] * 3])
    x = torch.randn(1, 7, d)
    out = layer(x, x, _attention_mask(valid), valid)
    x2 = x.clone()
    x2[0, 4:] = torch.randn(3, d) * 100  # garbage in the padded rows
    out2 = layer(x2, x2, _attention_mask(valid), valid)
    assert torch.allclose(out[0, :4], out2[0, :4], atol=1e-5)
    assert torch.all(out[0, 4:] == 0)


def test_sa_only_split_heads_equal_recbole_multi_head_attention():
    """With split heads and copied weights the attention branch is exactly RecBole's MultiHeadAttention."""
    from recbole.model.layers import MultiHeadAttention

    torch.manual_seed(3)
    d, heads = 8, 4
    ours = TwinAttentionLayer(d, heads // 2, mode="sa_only", head_width="split", inner_size=16).eval()
    ref = MultiHeadAttention(heads, d, 0.0, 0.0, 1e-12).eval()
    sa = ours.twin.attention
    with torch.no_grad():
        for name in ("query", "key", "value"):
            getattr(ref, name).load_state_dict(getattr(sa, name).state_dict())
        ref.dense.load_state_dict(ours.twin.output.state_dict())
        ref.LayerNorm.load_state_dict(ours.norm1.state_dict())
    x = torch.randn(3, 6, d)
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] + [False] * 5])
    mask = _attention_mask(valid)
    twin_out = ours.norm1(x + ours.twin(x, x, mask, valid))
    assert torch.allclose(twin_out, ref(x, mask), atol=1e-5)


def test_encoder_adds_positions_to_the_attention_branch_only():
    torch.manual_seed(4)
    d = 8
    enc = TwinAttentionEncoder(n_layers=1, hidden_size=d, n_heads=1, mode="conv_only", inner_size=8,
                               use_residual_ln=False).eval()
    valid = torch.ones(1, 5, dtype=torch.bool)
    x, positions = torch.randn(1, 5, d), torch.randn(1, 5, d)
    # conv-only, no residual: the positions have nowhere to enter
    assert torch.allclose(enc(x, positions, _attention_mask(valid), valid), enc(x, None, _attention_mask(valid), valid))
    enc_sa = TwinAttentionEncoder(n_layers=2, hidden_size=d, n_heads=1, mode="sa_only", inner_size=8).eval()
    assert not torch.allclose(enc_sa(x, positions, _attention_mask(valid), valid),
                              enc_sa(x, None, _attention_mask(valid), valid))
    with pytest.raises(ValueError):
        TwinAttentionEncoder(n_layers=0, hidden_size=d, n_heads=1)


@pytest.mark.parametrize("mode, head_width, padding, n_layers", [
    ("twin", "full", "centered", 1), ("twin", "split", "causal", 2), ("sa_only", "full", "centered", 2),
    ("conv_only", "full", "centered", 1),
])
def test_the_output_at_given_positions_equals_the_full_output_there(mode, head_width, padding, n_layers):
    """``index``: the last layer computes one row per sequence; values and gradients are those of the full
    computation read at that row (sequences of different lengths, garbage in the padded rows)."""
    torch.manual_seed(5)
    d = 8
    enc = TwinAttentionEncoder(n_layers=n_layers, hidden_size=d, n_heads=2, mode=mode, head_width=head_width,
                               conv_padding=padding, inner_size=16)  # no dropout: train mode is deterministic
    lengths = torch.tensor([7, 3, 1, 5])
    valid = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
    x = torch.randn(4, 7, d) * valid.unsqueeze(-1) + torch.randn(4, 7, d) * (~valid).unsqueeze(-1) * 100
    positions = torch.randn(1, 7, d)
    index = lengths - 1
    full = enc(x, positions, _attention_mask(valid), valid)
    rows = enc(x, positions, _attention_mask(valid), valid, index=index)
    assert rows.shape == (4, d)
    assert torch.allclose(rows, full[torch.arange(4), index], atol=1e-5)
    g = torch.randn(4, d)
    grads_rows = torch.autograd.grad(rows, list(enc.parameters()), g, allow_unused=True)
    grads_full = torch.autograd.grad(full[torch.arange(4), index], list(enc.parameters()), g, allow_unused=True)
    for a, b in zip(grads_rows, grads_full):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)
    # a position other than the last valid one too (the conv window and the mask row follow the index)
    other = torch.tensor([2, 0, 0, 4])
    assert torch.allclose(enc(x, positions, _attention_mask(valid), valid, index=other),
                          full[torch.arange(4), other], atol=1e-5)
    # a bidirectional mask in RecBole's [B, 1, 1, T] form
    both = _attention_mask(valid, causal=False)[:, :, :1]
    assert torch.allclose(enc(x, positions, both, valid, index=index),
                          enc(x, positions, both, valid)[torch.arange(4), index], atol=1e-5)
