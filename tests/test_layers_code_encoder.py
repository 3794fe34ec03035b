"""GumbelCodeEncoder: hard one-hot codes, straight-through gradients, deterministic argmax codes."""
import torch

from recbole_compress.model.layers.code_encoder import GumbelCodeEncoder, fit_codes
from recbole_compress.model.layers.codebook_embedding import CodebookEmbedding


def test_codes_are_exactly_one_hot_in_the_forward_pass():
    torch.manual_seed(0)
    enc = GumbelCodeEncoder(12, num_codebooks=3, codebook_size=8)
    assert enc.hidden_size == 12  # M*K/2
    y = enc(torch.randn(20, 12), tau=0.3)
    assert y.shape == (20, 3, 8)
    assert torch.equal(y.sum(-1), torch.ones(20, 3))
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}


def test_straight_through_gradient_reaches_the_encoder_through_the_reconstruction():
    torch.manual_seed(0)
    enc = GumbelCodeEncoder(12, 3, 8)
    books = CodebookEmbedding(20, 12, 3, 8)
    x = torch.randn(20, 12)
    mse = ((books.table_from_onehot(enc(x)) - x) ** 2).sum(-1).mean()
    mse.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    assert books.codebooks.grad.abs().sum() > 0
    # looking up the argmax codes (what the recommendation loss sees) has no path to the encoder
    enc.zero_grad()
    books.lookup(enc(x).argmax(-1)).sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in enc.parameters())


def test_argmax_codes_are_deterministic_and_follow_the_probabilities():
    torch.manual_seed(0)
    enc = GumbelCodeEncoder(6, 2, 4, hidden_size=5)
    assert enc.hidden_size == 5
    x = torch.randn(30, 6)
    codes = enc.codes(x)
    assert codes.shape == (30, 2) and codes.dtype == torch.long
    assert torch.equal(codes, enc.codes(x))
    assert torch.equal(codes, enc.log_probs(x).argmax(-1))
    torch.testing.assert_close(enc.log_probs(x).exp().sum(-1), torch.ones(30, 2))
    sampled = enc.sample_codes(x)
    assert sampled.shape == (30, 2) and int(sampled.min()) >= 0 and int(sampled.max()) < 4


def test_low_temperature_relaxed_sample_is_nearly_one_hot():
    torch.manual_seed(0)
    enc = GumbelCodeEncoder(6, 2, 4)
    soft = enc(torch.randn(50, 6), tau=0.01, hard=False)
    assert soft.max(-1).values.mean() > 0.98
    warm = enc(torch.randn(50, 6), tau=10.0, hard=False)
    assert warm.max(-1).values.max() < 0.9


def _distinct(codes):
    return len(set(map(tuple, codes.tolist())))


def _fit(tau_start):
    torch.manual_seed(0)
    x = 0.1 * torch.randn(300, 16)
    enc = GumbelCodeEncoder(16, 4, 16)
    books = CodebookEmbedding(300, 16, 4, 16)
    before = _distinct(enc.codes(x))
    summary = fit_codes(enc, books, x, steps=400, lr=1e-2, tau=0.3, tau_start=tau_start, batch_size=128)
    codes = enc.codes(x)
    error = ((books.lookup(codes) - x) ** 2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
    return enc, books, summary, before, _distinct(codes), float(error)


def test_fit_codes_learns_near_unique_codes_and_lowers_the_reconstruction_error():
    enc, books, summary, before, distinct, error = _fit(tau_start=1.0)
    assert summary["steps"] == 400 and summary["last_mse"] < 0.6 * summary["first_mse"]
    assert distinct >= 0.8 * 300 > before
    assert error < 0.6  # of the table's variance
    assert books.codebooks.grad is None and all(p.grad is None for p in enc.parameters())
    # the decaying temperature is what keeps the codes apart: at a constant 0.3 the encoder collapses
    _, _, _, _, distinct_constant, error_constant = _fit(tau_start=None)
    assert distinct_constant < 0.6 * distinct and error_constant > error + 0.1


def test_fit_codes_with_no_steps_changes_nothing():
    enc = GumbelCodeEncoder(4, 2, 4)
    books = CodebookEmbedding(10, 4, 2, 4)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    assert fit_codes(enc, books, torch.randn(10, 4), steps=0, lr=1e-2, tau=0.3) == {
        "steps": 0, "first_mse": None, "last_mse": None}
    assert all(torch.equal(v, state[k]) for k, v in enc.state_dict().items())
