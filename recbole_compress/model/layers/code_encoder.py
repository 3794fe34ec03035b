"""Code encoder: learns discrete compositional codes from dense embeddings with straight-through Gumbel-softmax.

Xia et al., "Efficient On-Device Session-Based Recommendation", TOIS 2023, §4.2 (Eq. 14, 16, 17), after Shu & Nakayama
(ICLR 2018)::

    h_v     = tanh(W x_v + b)                          W: N -> H   (H = M*K/2 by default)
    alpha_v = softmax_K(softplus(W' h_v + b'))         W': H -> M*K, reshaped to M x K
    y_v^m   = GumbelSoftmax(log alpha_v^m, tau)        hard one-hot forward, soft gradient backward

Together with :meth:`CodebookEmbedding.table_from_onehot` it is a discrete autoencoder of an embedding table
(the MSE reconstruction of Eq. 14): the gradient reaches the encoder through the straight-through codes. Once trained,
:meth:`codes` (deterministic argmax of ``alpha``) gives the code matrix to freeze.
"""
import torch
import torch.nn.functional as F
from torch import nn


class GumbelCodeEncoder(nn.Module):
    """MLP + straight-through Gumbel-softmax from ``input_dim`` vectors to ``num_codebooks`` codes in ``[0, K)``.

    Args:
        input_dim (int): width of the embeddings to encode (``N``).
        num_codebooks (int): ``M``.
        codebook_size (int): ``K``.
        hidden_size (int or None): ``H``; None = ``max(1, M*K // 2)`` as in the paper.
    """

    def __init__(self, input_dim, num_codebooks, codebook_size, hidden_size=None):
        super().__init__()
        self.num_codebooks = int(num_codebooks)
        self.codebook_size = int(codebook_size)
        hidden = int(hidden_size) if hidden_size else max(1, num_codebooks * codebook_size // 2)
        self.hidden_size = hidden
        self.hidden = nn.Linear(input_dim, hidden)
        self.logits = nn.Linear(hidden, num_codebooks * codebook_size)

    def log_probs(self, x):
        """``log alpha``: ``n x M x K`` log-probabilities of each codeword (Eq. 17)."""
        h = torch.tanh(self.hidden(x))
        a = F.softplus(self.logits(h)).view(x.shape[0], self.num_codebooks, self.codebook_size)
        return F.log_softmax(a, dim=-1)

    def forward(self, x, tau=0.3, hard=True):
        """Gumbel-softmax codes ``n x M x K`` (Eq. 16): one-hot in the forward pass when ``hard`` (straight-through),
        differentiable with respect to the encoder."""
        return F.gumbel_softmax(self.log_probs(x), tau=tau, hard=hard, dim=-1)

    @torch.no_grad()
    def codes(self, x):
        """Deterministic codes ``n x M`` (long): ``argmax_k alpha`` (no noise)."""
        return self.log_probs(x).argmax(-1)

    @torch.no_grad()
    def sample_codes(self, x, tau=0.3):
        """Codes ``n x M`` of one noisy Gumbel sample (what the authors' code freezes)."""
        return self.forward(x, tau=tau, hard=True).argmax(-1)
