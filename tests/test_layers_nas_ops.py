"""The ten candidate operations of AdaRec's search space."""
import pytest
import torch

from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS, ConvOp, build_op, is_causal, parse_op_name

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
