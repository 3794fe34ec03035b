"""Collision-aware code assignment and least-squares codebooks: unique codes with the least reconstruction damage."""
import torch

from recbole_compress.model.layers.code_assignment import (
    fit_codebooks,
    reconstruction_errors,
    resolve_collisions,
)
from recbole_compress.model.layers.codebook_embedding import code_statistics


def _collided(n=60, m=3, k=4, n_dim=6, seed=0):
    """A table whose rows form a few tight clusters, and codes that map each cluster to one tuple."""
    g = torch.Generator().manual_seed(seed)
    books = torch.randn(m, k, n_dim, generator=g)
    centres = torch.randint(0, k, (5, m), generator=g)
    cluster = torch.randint(0, 5, (n,), generator=g)
    codes = centres[cluster]
    offsets = torch.arange(m) * k
    table = books.reshape(-1, n_dim)[codes + offsets].sum(1) + 0.05 * torch.randn(n, n_dim, generator=g)
    return codes, books, table


def test_no_two_items_share_a_code_when_enough_codes_exist():
    codes, books, table = _collided(n=60, m=3, k=4)  # 64 tuples for 60 items: nearly every tuple is needed
    assert code_statistics(codes, 4, skip_padding=False)["items_sharing_a_code"] > 50
    new, info = resolve_collisions(codes, books, table)
    stats = code_statistics(new, 4, skip_padding=False)
    assert stats["distinct_codes"] == 60 and stats["items_sharing_a_code"] == 0
    assert info["unresolved"] == 0 and info["moved"] == 60 - 5
    assert int(new.min()) >= 0 and int(new.max()) < 4


def test_exactly_full_code_space_and_too_small_code_space():
    codes, books, table = _collided(n=16, m=2, k=4, seed=1)
    new, info = resolve_collisions(codes, books, table)
    assert code_statistics(new, 4, skip_padding=False)["distinct_codes"] == 16 and info["unresolved"] == 0
    codes, books, table = _collided(n=20, m=2, k=4, seed=1)  # 20 items, 16 tuples: 4 must stay on shared tuples
    new, info = resolve_collisions(codes, books, table)
    assert code_statistics(new, 4, skip_padding=False)["distinct_codes"] == 16 and info["unresolved"] == 4


def test_movers_go_to_the_nearest_free_tuple_and_the_best_item_keeps_its_code():
    books = torch.zeros(2, 3, 2)
    books[0] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    books[1] = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    codes = torch.tensor([[0, 0], [0, 0]])
    table = torch.tensor([[0.9, 0.1], [0.1, 0.0]])  # item 1 is reconstructed better by (0, 0); item 0 is near (1, 0)
    new, info = resolve_collisions(codes, books, table)
    assert new.tolist() == [[1, 0], [0, 0]] and info["moved"] == 1
    assert info["error_after"] < info["error_before"]


def test_unique_codes_change_nothing():
    g = torch.Generator().manual_seed(3)
    codes = torch.tensor([[0, 1], [1, 0], [2, 2]])
    books, table = torch.randn(2, 3, 4, generator=g), torch.randn(3, 4, generator=g)
    new, info = resolve_collisions(codes, books, table)
    assert torch.equal(new, codes) and info["moved"] == 0


def test_large_code_space_uses_local_moves():
    g = torch.Generator().manual_seed(4)
    codes = torch.zeros(300, 4, dtype=torch.long)  # everyone on one tuple of a 32^4 space
    books, table = torch.randn(4, 32, 8, generator=g), 0.1 * torch.randn(300, 8, generator=g)
    new, info = resolve_collisions(codes, books, table, exhaustive_limit=0, generator=g)
    assert code_statistics(new, 32, skip_padding=False)["distinct_codes"] == 300 and info["unresolved"] == 0


def test_least_squares_codebooks_reconstruct_an_additive_table_and_beat_random_ones():
    g = torch.Generator().manual_seed(5)
    m, k, n_dim, n = 3, 5, 4, 200
    books = torch.randn(m, k, n_dim, generator=g)
    codes = torch.randint(0, k, (n, m), generator=g)
    offsets = torch.arange(m) * k
    table = books.reshape(-1, n_dim)[codes + offsets].sum(1)
    fitted = fit_codebooks(codes, table, k, ridge=1e-6)
    assert float(reconstruction_errors(codes, fitted, table).mean()) < 1e-4
    noisy = table + 0.3 * torch.randn(n, n_dim, generator=g)
    fitted = fit_codebooks(codes, noisy, k)
    assert reconstruction_errors(codes, fitted, noisy).mean() < reconstruction_errors(codes, books, noisy).mean()
