"""Collision-aware assignment of compositional codes, and the codebooks that best fit a fixed code matrix.

With additive codes (``e_v = sum_m A_m[C[v, m]]``, see :mod:`.codebook_embedding`) two items with the same code tuple
get the same embedding and tie exactly at scoring. A code encoder trained on reconstruction alone
(:func:`.code_encoder.fit_codes`) has nothing that keeps codes apart: items whose target embeddings are close (e.g.
rarely seen items, whose embeddings stay near their initialisation) get the same code, although the code space
(``K^M`` tuples, a million at ``M=4, K=32``) is far larger than any catalogue.

:func:`resolve_collisions` makes the codes unique with the least damage to the reconstruction: in every group of items
sharing a tuple the item reconstructed best keeps it, and each other item moves to the free tuple whose composite
vector is nearest its target (squared error), searched among the tuples that differ from its own in one position, then
in two, then among all free tuples (in chunks, when ``K^M`` is at most ``exhaustive_limit``) or a random sample of
them. Items are moved one at a time, so two movers never take the same tuple.

:func:`fit_codebooks` gives the codebooks minimising ``sum_v ||x_v - sum_m A_m[C[v, m]]||^2`` for fixed codes
(ridge-regularised least squares on the ``n x MK`` one-hot code matrix: the sum is invariant to moving a constant
between codebooks, so the plain system is singular).
"""
import itertools

import torch


def _keys(codes):
    return [tuple(row) for row in codes.tolist()]


def reconstruction_errors(codes, codebooks, table):
    """Per-row squared error ``||x_v - sum_m A_m[C[v, m]]||^2`` (``codes`` n x M, ``codebooks`` M x K x N)."""
    offsets = torch.arange(codebooks.shape[0], device=codes.device) * codebooks.shape[1]
    approx = codebooks.reshape(-1, codebooks.shape[-1])[codes.long() + offsets].sum(1)
    return ((table - approx) ** 2).sum(-1)


def _single_change_costs(code, residual, codebooks):
    """``M x K`` squared errors of the tuples that differ from ``code`` in one position (entry ``[m, code[m]]`` is the
    current error)."""
    m_idx = torch.arange(codebooks.shape[0])
    u = residual.unsqueeze(0) + codebooks[m_idx, code]  # M x N: the residual without codebook m's word
    return (u ** 2).sum(-1, keepdim=True) - 2 * (codebooks @ u.unsqueeze(-1)).squeeze(-1) + (codebooks ** 2).sum(-1)


def _pair_change_candidates(code, residual, codebooks):
    """Candidate tuples differing from ``code`` in two positions, with their squared errors, ascending."""
    m_total, k = codebooks.shape[0], codebooks.shape[1]
    tuples, costs = [], []
    for a, b in itertools.combinations(range(m_total), 2):
        u = residual + codebooks[a, code[a]] + codebooks[b, code[b]]
        pair = codebooks[a].unsqueeze(1) + codebooks[b].unsqueeze(0)  # K x K x N
        cost = ((u - pair) ** 2).sum(-1).reshape(-1)
        grid = code.repeat(k * k, 1)
        grid[:, a] = torch.arange(k).repeat_interleave(k)
        grid[:, b] = torch.arange(k).repeat(k)
        tuples.append(grid)
        costs.append(cost)
    tuples, costs = torch.cat(tuples), torch.cat(costs)
    order = torch.argsort(costs, stable=True)
    return tuples[order], costs[order]


def _far_candidates(x, codebooks, taken, exhaustive_limit, generator, chunk=65536, samples=4096):
    """The nearest free tuple to ``x`` among all ``K^M`` tuples (when at most ``exhaustive_limit``) or among a random
    sample of them; None when every tuple is taken."""
    m_total, k = codebooks.shape[0], codebooks.shape[1]
    space = k ** m_total
    best, best_cost = None, float("inf")
    if space <= exhaustive_limit:
        ranges = (torch.arange(start, min(start + chunk, space)) for start in range(0, space, chunk))
    else:
        ranges = iter([torch.randint(0, space, (samples,), generator=generator)])
    powers = k ** torch.arange(m_total - 1, -1, -1)
    for flat in ranges:
        tuples = (flat.unsqueeze(1) // powers) % k
        cost = reconstruction_errors(tuples, codebooks, x.expand(len(tuples), -1))
        for i in torch.argsort(cost).tolist():
            if float(cost[i]) >= best_cost:
                break
            key = tuple(tuples[i].tolist())
            if key not in taken:
                best, best_cost = key, float(cost[i])
                break
    return best


def _nearest_free(code, x, codebooks, taken, exhaustive_limit, generator):
    residual = x - codebooks[torch.arange(codebooks.shape[0]), code].sum(0)
    single = _single_change_costs(code, residual, codebooks).reshape(-1)
    k = codebooks.shape[1]
    for flat in torch.argsort(single, stable=True).tolist():
        key = list(code.tolist())
        key[flat // k] = flat % k
        if tuple(key) not in taken:
            return tuple(key)
    if codebooks.shape[0] >= 2:
        for row in _pair_change_candidates(code, residual, codebooks)[0].tolist():
            if tuple(row) not in taken:
                return tuple(row)
    return _far_candidates(x, codebooks, taken, exhaustive_limit, generator)


@torch.no_grad()
def resolve_collisions(codes, codebooks, table, exhaustive_limit=2 ** 20, generator=None):
    """Unique code tuples for every row of ``table``, moving as few items as possible, each to its nearest free tuple.

    Args:
        codes (Tensor): ``n x M`` integer codes in ``[0, K)``.
        codebooks (Tensor): ``M x K x N``.
        table (Tensor): ``n x N`` target embeddings of the same rows.
        exhaustive_limit (int): search every free tuple when ``K^M`` is at most this (guarantees uniqueness whenever
            ``n <= K^M``); otherwise a random sample of 4,096 tuples is the last resort.
        generator (torch.Generator or None): for that sample.

    Returns:
        (Tensor, dict): the new ``n x M`` codes (long) and ``moved`` (items given a new tuple), ``unresolved``
        (movers left on a shared tuple because no free one was found), ``error_before`` / ``error_after`` (mean
        per-row squared error).
    """
    codes = codes.long().cpu().clone()
    codebooks, table = codebooks.detach().float().cpu(), table.detach().float().cpu()
    errors = reconstruction_errors(codes, codebooks, table)
    keys = _keys(codes)
    owner = {}
    for i in torch.argsort(errors, stable=True).tolist():  # the best-reconstructed item of each group keeps the tuple
        owner.setdefault(keys[i], i)
    taken = set(owner)
    movers = [i for i in range(len(keys)) if owner[keys[i]] != i]
    unresolved = 0
    for i in movers:
        key = _nearest_free(codes[i], table[i], codebooks, taken, exhaustive_limit, generator)
        if key is None:
            unresolved += 1
            continue
        taken.add(key)
        codes[i] = torch.tensor(key)
    after = reconstruction_errors(codes, codebooks, table)
    return codes, {"moved": len(movers) - unresolved, "unresolved": unresolved,
                   "error_before": float(errors.mean()) if len(errors) else 0.0,
                   "error_after": float(after.mean()) if len(after) else 0.0}


@torch.no_grad()
def fit_codebooks(codes, table, codebook_size, ridge=1e-3):
    """Codebooks ``M x K x N`` minimising ``sum_v ||x_v - sum_m A_m[C[v, m]]||^2 + ridge * ||A||^2`` for fixed codes
    (one ``MK x MK`` linear solve; ``ridge`` is relative to the mean diagonal of the Gram matrix)."""
    codes, table = codes.long(), table.detach().float()
    n, m_total = codes.shape
    width = m_total * codebook_size
    offsets = torch.arange(m_total, device=codes.device) * codebook_size
    onehot = torch.zeros(n, width, device=table.device)
    onehot.scatter_(1, (codes + offsets).to(table.device), 1.0)
    gram = onehot.t() @ onehot
    gram += ridge * max(float(gram.diagonal().mean()), 1.0) * torch.eye(width, device=table.device)
    books = torch.linalg.solve(gram, onehot.t() @ table)
    return books.view(m_total, codebook_size, -1)
