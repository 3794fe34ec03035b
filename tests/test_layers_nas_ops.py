"""The ten candidate operations of AdaRec's search space."""
import pytest
import torch

from recbole_compress.model.layers.nas_ops import (
    CANDIDATE_OPS,
    ConvOp,
    MaskedBatchNorm1d,
    build_op,
    is_causal,
    parse_op_name,
)

D, L, B = 6, 12, 3


def _op(name):
    torch.manual_seed(0)
    op = build_op(name, D, dilation=2, pool_kernel=3)
    op.eval()  # BatchNorm with its running statistics: output t is a function of the inputs its receptive field covers
    return op


@pytest.mark.parametrize("name", CANDIDATE_OPS)
def test_every_op_keeps_the_shape(name):
    x = torch.randn(B, L, D)
    assert _op(name)(x).shape == (B, L, D)


@pytest.mark.parametrize("name", ["cau_cnn_3", "cau_cnn_5", "skip_connect", "none"])
def test_causal_ops_ignore_the_future(name):
    op = _op(name)
    x = torch.randn(B, L, D)
    for t in range(L - 1):
        y = x.clone()
        y[:, t + 1:] = torch.randn(B, L - t - 1, D) * 5
        torch.testing.assert_close(op(x)[:, : t + 1], op(y)[:, : t + 1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["std_cnn_3", "dil_cnn_3", "std_cnn_5", "dil_cnn_5", "max_pool", "avg_pool"])
def test_non_causal_ops_see_the_future(name):
    """Documented, not an error: at the last valid position they see padding only (see nas_ops' docstring)."""
    op = _op(name)
    x = torch.randn(B, L, D)
    y = x.clone()
    y[:, L // 2 + 1:] += 3.0
    assert not torch.allclose(op(x)[:, L // 2], op(y)[:, L // 2])
    assert not is_causal(name)


def test_causal_conv_receptive_field_is_dilated():
    """cau_cnn_5 with dilation 2 reaches back 8 positions, and not 9."""
    op = _op("cau_cnn_5")
    x = torch.randn(1, L, D)
    t = L - 1
    for back, changes in ((8, True), (9, False)):
        y = x.clone()
        y[:, t - back] += 5.0
        assert changes == (not torch.allclose(op(x)[:, t], op(y)[:, t]))


@pytest.mark.parametrize("kernel", [3, 5])
def test_conv_parameter_count(kernel):
    for mode in ("standard", "dilated", "causal"):
        op = ConvOp(D, kernel, mode=mode)
        assert sum(p.numel() for p in op.parameters()) == kernel * D * D + D + 2 * D


def test_parameter_free_ops():
    for name in ("max_pool", "avg_pool", "skip_connect", "none"):
        assert sum(p.numel() for p in build_op(name, D).parameters()) == 0
    x = torch.randn(B, L, D)
    assert torch.equal(build_op("skip_connect", D)(x), x)
    assert torch.equal(build_op("none", D)(x), torch.zeros_like(x))


def test_unknown_op_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: std_cnn_3"):
        parse_op_name("sep_conv_3")


# ---------------------------------------------------------------------------------------------------------------
# padding: with a mask, padded positions read as absent
# ---------------------------------------------------------------------------------------------------------------

def _padded(x, lengths, total, fill):
    """``x`` ``[B, L, D]`` cut to ``lengths`` and right-padded to ``total`` with ``fill`` values; and its mask."""
    out = fill(x.size(0), total, x.size(2)).clone()
    mask = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, :n]
    return out, mask


@pytest.mark.parametrize("name", CANDIDATE_OPS)
@pytest.mark.parametrize("training", [True, False])
def test_valid_outputs_do_not_depend_on_the_padding(name, training):
    """Two paddings of the same sequences (different lengths, different garbage): the same output at valid positions,
    zeros at padded ones; in training the BatchNorm's batch statistics and running estimates are the same too."""
    lengths = [3, 7, 5]
    x = torch.randn(3, 7, D)
    short, m1 = _padded(x, lengths, 7, lambda *s: 50 * torch.randn(*s))
    long, m2 = _padded(x, lengths, 12, lambda *s: 5 + torch.rand(*s))
    outs, stats = [], []
    for inp, mask in ((short, m1), (long, m2)):
        op = _op(name)
        op.train(training)
        outs.append(op(inp, mask))
        stats.append([b.clone() for b in op.buffers()])
    for b, n in enumerate(lengths):
        torch.testing.assert_close(outs[0][b, :n], outs[1][b, :n])
    assert not outs[0][~m1].any() and not outs[1][~m2].any()
    for s1, s2 in zip(*stats):
        torch.testing.assert_close(s1, s2)


@pytest.mark.parametrize("name", CANDIDATE_OPS)
@pytest.mark.parametrize("training", [True, False])
def test_masked_op_reads_a_padded_sequence_as_the_unpadded_one(name, training):
    """One sequence of 5 items padded to 12: the op with the mask gives what it gives on the 5 items alone (the
    positions after the last item are the op's own boundary padding: zeros, -inf for max pooling)."""
    x = torch.randn(1, 5, D)
    padded, mask = _padded(x, [5], 12, lambda *s: 3 * torch.randn(*s))
    op = _op(name)
    op.train(training)
    expected = op(x)
    op = _op(name)
    op.train(training)
    torch.testing.assert_close(op(padded, mask)[:, :5], expected)


def test_masked_batch_norm_is_batch_norm_of_the_valid_positions():
    """Against torch's BatchNorm1d on the valid positions gathered as [N, C]: outputs and running estimates."""
    torch.manual_seed(0)
    x = torch.randn(4, D, 9)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 2, 6, 4])[:, None]
    x = x.masked_fill(~mask[:, None, :], 100.0)
    masked, plain = MaskedBatchNorm1d(D), torch.nn.BatchNorm1d(D)
    with torch.no_grad():
        masked.weight.uniform_(0.5, 2), masked.bias.normal_()
    plain.load_state_dict(masked.state_dict())
    valid = x.transpose(1, 2)[mask]  # [N, C]
    for _ in range(3):
        torch.testing.assert_close(masked(x, mask).transpose(1, 2)[mask], plain(valid))
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    masked.eval(), plain.eval()
    torch.testing.assert_close(masked(x, mask).transpose(1, 2)[mask], plain(valid))
    # without a mask it is torch's BatchNorm1d over every position
    masked.train(), plain.train()
    torch.testing.assert_close(masked(x), plain(x))
