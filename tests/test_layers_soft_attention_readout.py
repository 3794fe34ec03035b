"""SoftAttentionReadout: Eq. 3 by hand, masked mean (padding content never matters), empty sessions."""
import torch

from recbole_compress.model.layers.soft_attention_readout import SoftAttentionReadout


def test_matches_the_formula_by_hand():
    torch.manual_seed(0)
    readout = SoftAttentionReadout(4)
    h = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    out = readout(h, mask)
    for b in range(2):
        valid = h[b][mask[b]]
        mean = valid.mean(0)
        alpha = [readout.f(torch.sigmoid(readout.w_item(torch.tanh(x)) + readout.w_mean(mean))) for x in valid]
        expected = sum(a * x for a, x in zip(alpha, valid))
        torch.testing.assert_close(out[b], expected)


def test_padding_content_and_order_do_not_matter():
    torch.manual_seed(0)
    readout = SoftAttentionReadout(4)
    h = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    other = h.clone()
    other[0, 3:] = 100.0 * torch.randn(2, 4)
    torch.testing.assert_close(readout(h, mask), readout(other, mask))
    permuted = h[:, [2, 0, 1, 3, 4]]
    torch.testing.assert_close(readout(h, mask), readout(permuted, mask))


def test_empty_session_gives_zero():
    readout = SoftAttentionReadout(4)
    out = readout(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 4))
