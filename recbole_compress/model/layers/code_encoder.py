"""Code encoder: learns discrete compositional codes from dense embeddings with straight-through Gumbel-softmax.

Xia et al., "Efficient On-Device Session-Based Recommendation", TOIS 2023, §4.2 (Eq. 14, 16, 17), after Shu & Nakayama
(ICLR 2018)::

    h_v     = tanh(W x_v + b)                          W: N -> H   (H = M*K/2 by default)
    alpha_v = softmax_K(softplus(W' h_v + b'))         W': H -> M*K, reshaped to M x K
    y_v^m   = GumbelSoftmax(log alpha_v^m, tau)        hard one-hot forward, soft gradient backward

Together with :meth:`CodebookEmbedding.table_from_onehot` it is a discrete autoencoder of an embedding table
(the MSE reconstruction of Eq. 14): the gradient reaches the encoder through the straight-through codes. Once trained,
:meth:`codes` (deterministic argmax of ``alpha``) gives the code matrix to freeze. :func:`fit_codes` runs that
autoencoder on its own for a number of steps (EODRec's ``code_fit_*`` keys).
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


def fit_codes(encoder, codebook, table, steps, lr, tau, tau_start=None, batch_size=None, generator=None):
    r"""Train ``encoder`` and ``codebook`` as the discrete autoencoder of Eq. 14 on ``table`` alone.

    Every step draws ``batch_size`` rows of ``table`` (all rows when None or larger than the table), encodes them with
    the straight-through Gumbel-softmax and takes an Adam step (learning rate ``lr``, an optimiser of its own) on
    ``(1/n) sum_v || sum_m A_m^T y_v^m - X_v ||^2``. The temperature decays geometrically from ``tau_start`` to ``tau``
    over the steps (constant ``tau`` when ``tau_start`` is None).

    Args:
        encoder (GumbelCodeEncoder): the code encoder.
        codebook (CodebookEmbedding): the codebooks it composes with (its ``table_from_onehot``).
        table (Tensor): ``n x N`` target embeddings (detached here; pass the real items only, not the padding row).
        steps (int): number of updates (0 does nothing).
        lr (float): Adam learning rate.
        tau (float): final Gumbel temperature.
        tau_start (float or None): first temperature.
        batch_size (int or None): rows per step.
        generator (torch.Generator or None): for the row sampling.

    Returns:
        dict: ``steps``, ``first_mse`` and ``last_mse`` (mean over the first / last ``min(50, steps // 2)`` steps).
    """
    table = table.detach()
    n = table.shape[0]
    if steps <= 0 or n == 0:
        return {"steps": 0, "first_mse": None, "last_mse": None}
    params = list(encoder.parameters()) + [codebook.codebooks]
    optimizer = torch.optim.Adam(params, lr=lr)
    window = max(1, min(50, steps // 2))
    losses = []
    was_training = encoder.training
    encoder.train()
    with torch.enable_grad():
        for step in range(steps):
            if tau_start is None or steps == 1:
                t = tau
            else:
                t = tau_start * (tau / tau_start) ** (step / (steps - 1))
            if batch_size is None or batch_size >= n:
                x = table
            else:
                x = table[torch.randint(0, n, (batch_size,), generator=generator, device=table.device)]
            y = encoder(x, tau=t, hard=True)
            loss = ((codebook.table_from_onehot(y) - x) ** 2).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    encoder.train(was_training)
    for p in params:
        p.grad = None
    return {"steps": steps, "first_mse": sum(losses[:window]) / window, "last_mse": sum(losses[-window:]) / window}
