"""FastDropout: the law of torch's dropout (keep probability, scale, independence, gradient), seeded, and the swap
into a module built elsewhere (RecBole's TransformerEncoder) without changing parameters or evaluation outputs."""
import pytest
import torch
from torch import nn

from recbole.model.layers import TransformerEncoder

from recbole_compress.model.layers.fast_dropout import FastDropout, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_it(p):
    torch.manual_seed(0)
    x = torch.rand(200, 500) + 0.5  # no zeros: a zero output means dropped
    y = FastDropout(p)(x)
    kept = y != 0
    n = x.numel()
    share = kept.float().mean().item()
    assert abs(share - (1 - p)) < 4 * ((p * (1 - p) / n) ** 0.5)  # 4 binomial standard errors
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    # torch's own dropout keeps the same share on the same input
    torch_share = (nn.Dropout(p)(x) != 0).float().mean().item()
    assert abs(share - torch_share) < 6 * ((p * (1 - p) / n) ** 0.5)


def test_masks_are_independent_across_elements_and_calls():
    torch.manual_seed(0)
    x = torch.ones(400, 400)
    drop = FastDropout(0.5)
    a, b = drop(x) != 0, drop(x) != 0
    # two calls agree on about half of the elements (independent draws), not on all of them
    agree = (a == b).float().mean().item()
    assert abs(agree - 0.5) < 0.01
    # neighbouring elements are not correlated (no shared or repeated pattern along a row)
    left, right = a[:, :-1].float(), a[:, 1:].float()
    both = (left * right).mean().item()
    assert abs(both - 0.25) < 0.01


def test_gradient_is_the_scaled_mask_and_the_mean_is_kept():
    torch.manual_seed(0)
    x = torch.full((300, 300), 2.0, requires_grad=True)
    y = FastDropout(0.25)(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)
    assert abs(y.mean().item() - 2.0) < 0.02


def test_eval_mode_and_zero_p_are_the_identity_and_p_one_drops_everything():
    x = torch.randn(5, 7)
    drop = FastDropout(0.5).eval()
    assert drop(x) is x
    assert FastDropout(0.0)(x) is x
    assert torch.count_nonzero(FastDropout(1.0)(x)) == 0


def test_seeded_draws_repeat():
    x = torch.randn(50, 60)
    torch.manual_seed(3)
    first = FastDropout(0.3)(x)
    torch.manual_seed(3)
    torch.testing.assert_close(FastDropout(0.3)(x), first)


def test_inplace_changes_the_input():
    torch.manual_seed(0)
    x = torch.ones(100, 100)
    y = FastDropout(0.5, inplace=True)(x)
    assert y.data_ptr() == x.data_ptr() and torch.count_nonzero(x) < x.numel()


def test_use_fast_dropout_swaps_every_dropout_of_recbole_transformer_and_keeps_its_outputs():
    torch.manual_seed(0)
    encoder = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=8, inner_size=16, hidden_dropout_prob=0.3,
                                 attn_dropout_prob=0.2)
    before = [m.p for m in encoder.modules() if isinstance(m, nn.Dropout)]
    keys = set(encoder.state_dict())
    x, mask = torch.randn(3, 5, 8), torch.zeros(3, 1, 5, 5)
    encoder.eval()
    expected = encoder(x, mask)[-1]
    use_fast_dropout(encoder)
    swapped = [m for m in encoder.modules() if isinstance(m, nn.Dropout)]
    assert all(type(m) is FastDropout for m in swapped) and [m.p for m in swapped] == before
    assert set(encoder.state_dict()) == keys
    torch.testing.assert_close(encoder(x, mask)[-1], expected)
    encoder.train()
    assert not torch.allclose(encoder(x, mask)[-1], expected)  # training mode drops
