"""CodebookEmbedding: composition, exact fast full-catalogue scoring, code statistics, paper compression ratio."""
import math

import pytest
import torch
import torch.nn.functional as F

from recbole_compress.model.layers.codebook_embedding import (
    SCORE_METHODS,
    CodebookEmbedding,
    code_dtype,
    code_statistics,
    paper_compression_ratio,
)

# Table 4 of the paper: (M, K) -> compression ratio printed for Tmall (|V|=40,728, N=128) and RetailRocket
# (|V|=36,968, N=256).
TABLE4 = {
    (1, 32): (116, 210), (1, 128): (91, 135), (1, 256): (71, 92), (1, 512): (49, 56),
    (2, 32): (58, 105), (2, 128): (46, 68), (2, 256): (35, 46), (2, 512): (24, 28),
    (3, 32): (39, 70), (3, 128): (30, 45), (3, 256): (24, 31), (3, 512): (16, 19),
    (4, 32): (29, 52), (4, 128): (23, 34), (4, 256): (18, 23), (4, 512): (12, 14),
    (5, 32): (23, 42), (5, 128): (18, 27), (5, 256): (14, 18), (5, 512): (10, 11),
}
# the two printed values that are truncated rather than rounded
TRUNCATED = {("tmall", 2, 512), ("rr", 1, 128)}


def test_compression_ratio_tmall_m4_k32_by_hand():
    # 40,728 * 128 / (4*32*128 + 4*40,728) = 5,213,184 / 179,296
    assert paper_compression_ratio(40728, 128, 4, 32) == pytest.approx(5213184 / 179296)
    assert round(paper_compression_ratio(40728, 128, 4, 32), 1) == 29.1


@pytest.mark.parametrize("mk", sorted(TABLE4))
def test_compression_ratio_matches_paper_table4(mk):
    m, k = mk
    for name, (v, n), printed in (("tmall", (40728, 128), TABLE4[mk][0]), ("rr", (36968, 256), TABLE4[mk][1])):
        cr = paper_compression_ratio(v, n, m, k)
        expected = math.floor(cr) if (name, m, k) in TRUNCATED else round(cr)
        assert expected == printed, (name, m, k, cr)


def test_table1_sizes_and_upper_bound():
    # Table 1: |V| = 20,000, N = 100; compressed size = M*K*N + M*|V| (the (8, 8) row is misprinted in the paper)
    for (m, k), size in {(2, 8): 41600, (2, 128): 65600, (2, 512): 142400, (4, 8): 83200, (4, 128): 131200,
                         (4, 512): 284800, (8, 8): 166400, (8, 128): 262400, (8, 512): 569600}.items():
        assert m * k * 100 + m * 20000 == size
        assert paper_compression_ratio(20000, 100, m, k) == pytest.approx(2_000_000 / size)
    assert paper_compression_ratio(10**12, 128, 4, 32) == pytest.approx(128 / 4, rel=1e-6)


def _random_layer(n=1000, n_dim=16, m=4, k=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    layer = CodebookEmbedding(n, n_dim, m, k).to(dtype)
    with torch.no_grad():
        layer.codebooks.copy_(torch.randn(m, k, n_dim, generator=g, dtype=dtype))
    layer.set_codes(torch.randint(0, k, (n, m), generator=g))
    return layer


def test_table_is_the_sum_of_one_codeword_per_codebook():
    layer = _random_layer(n=50, n_dim=6, m=3, k=5, dtype=torch.float64)
    codes = layer.codes.long()
    loop = torch.stack([sum(layer.codebooks[m, codes[v, m]] for m in range(3)) for v in range(50)])
    torch.testing.assert_close(layer.table(), loop, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.weight, loop, rtol=0, atol=1e-12)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    torch.testing.assert_close(layer(ids), loop[ids], rtol=0, atol=1e-12)
    onehot = F.one_hot(codes, 5).to(torch.float64)
    torch.testing.assert_close(layer.table_from_onehot(onehot), loop, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.lookup(codes[:4]), loop[:4], rtol=0, atol=1e-12)


@pytest.mark.parametrize("m,k", [(1, 2), (3, 32), (4, 32), (4, 256), (2, 512)])
@pytest.mark.parametrize("method", SCORE_METHODS)
def test_fast_scores_equal_naive_scores(m, k, method):
    layer = _random_layer(n=1000, n_dim=16, m=m, k=k, seed=m * 1000 + k)
    layer.eval()
    query = torch.randn(7, 16, generator=torch.Generator().manual_seed(1))
    naive = query @ layer.table().t()
    with torch.no_grad():
        fast = layer.full_scores(query, method)
    assert fast.shape == (7, 1000)
    assert (fast - naive).abs().max().item() <= 1e-5 * max(1.0, naive.abs().max().item())
    # float64: equal to rounding, and the same top-10
    layer64 = _random_layer(n=1000, n_dim=16, m=m, k=k, seed=m * 1000 + k, dtype=torch.float64)
    q64 = query.double()
    naive64 = q64 @ layer64.table().t()
    with torch.no_grad():
        fast64 = layer64.full_scores(q64, method)
    torch.testing.assert_close(fast64, naive64, rtol=0, atol=1e-10)
    # the same top-10 (items with tied scores, i.e. identical codes, may swap places)
    top = naive64.topk(10)
    torch.testing.assert_close(naive64.gather(1, fast64.topk(10).indices), top.values, rtol=0, atol=1e-10)
    if layer64.statistics()["collisions"] == 0 and layer64.codes[0].tolist() not in layer64.codes[1:].tolist():
        assert torch.equal(fast64.topk(10).indices, top.indices)


def test_fast_scorers_are_differentiable_like_the_dense_product():
    layer = _random_layer(n=200, n_dim=8, m=3, k=16)
    query = torch.randn(5, 8, requires_grad=True)
    weights = torch.randn(5, 200)
    grads = {}
    for method in ("dense", "embedding_bag", "gather", "pair"):
        layer.zero_grad()
        query.grad = None
        (layer.full_scores(query, method) * weights).sum().backward()
        grads[method] = (query.grad.clone(), layer.codebooks.grad.clone())
    for method in ("embedding_bag", "gather", "pair"):
        torch.testing.assert_close(grads[method][0], grads["dense"][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[method][1], grads["dense"][1], rtol=1e-5, atol=1e-5)


def test_cached_table_follows_new_codes_and_codebook_updates():
    layer = _random_layer(n=100, n_dim=8, m=2, k=8)
    layer.eval()
    query = torch.randn(3, 8)
    with torch.no_grad():
        before = layer.full_scores(query, "dense")
        layer.set_codes(torch.zeros(100, 2, dtype=torch.long))
        after_codes = layer.full_scores(query, "dense")
        layer.codebooks.add_(1.0)
        after_books = layer.full_scores(query, "dense")
    assert not torch.allclose(before, after_codes)
    assert not torch.allclose(after_codes, after_books)
    torch.testing.assert_close(after_books, query @ layer.table().t())
    # a state_dict load invalidates the flat index too
    other = _random_layer(n=100, n_dim=8, m=2, k=8, seed=5)
    layer.load_state_dict(other.state_dict())
    torch.testing.assert_close(layer.full_scores(query, "gather"), query @ other.table().t(), rtol=1e-5, atol=1e-5)


def test_code_dtype_storage_bytes_and_validation():
    assert code_dtype(32) == torch.uint8 and code_dtype(256) == torch.uint8 and code_dtype(512) == torch.int16
    layer = CodebookEmbedding(1001, 128, 4, 32)
    assert layer.codes.dtype == torch.uint8
    assert layer.storage_bytes() == {"codebooks": 4 * 32 * 128 * 4, "codes": 1001 * 4}
    assert CodebookEmbedding(11, 8, 3, 512).storage_bytes()["codes"] == 11 * 3 * 2
    assert layer.compression_ratio() == pytest.approx(paper_compression_ratio(1000, 128, 4, 32))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        layer.set_codes(torch.full((1001, 4), 32))
    with pytest.raises(ValueError, match="shape"):
        layer.set_codes(torch.zeros(1000, 4))
    with pytest.raises(ValueError, match="score method"):
        layer.full_scores(torch.randn(2, 128), "fastest")


def test_code_statistics_counts_collisions_by_hand():
    codes = torch.tensor([
        [9, 9],  # padding row, skipped
        [0, 1], [1, 2], [1, 2], [3, 1], [1, 2], [3, 1], [0, 2],
    ])
    stats = code_statistics(codes, codebook_size=4)
    # groups: (0,1) x1, (1,2) x3, (3,1) x2, (0,2) x1 -> 4 distinct codes for 7 items
    assert stats["items"] == 7
    assert stats["distinct_codes"] == 4
    assert stats["collisions"] == 3
    assert stats["items_sharing_a_code"] == 5
    assert stats["largest_group"] == 3
    # codebook 0 uses 0 x2, 1 x3, 2 x0, 3 x2; codebook 1 uses 0 x0, 1 x3, 2 x4, 3 x0
    assert stats["codeword_usage_min"] == 0 and stats["codeword_usage_max"] == 4
    unique = code_statistics(torch.tensor([[0, 0], [0, 1], [1, 0]]), 2)
    assert unique["collisions"] == 0 and unique["items_sharing_a_code"] == 0 and unique["distinct_codes"] == 2


def test_pair_scorer_follows_new_codes_and_handles_odd_m():
    layer = _random_layer(n=300, n_dim=8, m=3, k=8)
    layer.eval()
    query = torch.randn(20, 8)  # more users than one block of the pair scorer
    with torch.no_grad():
        torch.testing.assert_close(layer.full_scores(query, "pair"), query @ layer.table().t(), rtol=1e-5, atol=1e-5)
        layer.set_codes(torch.randint(0, 8, (300, 3), generator=torch.Generator().manual_seed(3)))
        torch.testing.assert_close(layer.full_scores(query, "pair"), query @ layer.table().t(), rtol=1e-5, atol=1e-5)


def test_auto_scorer_uses_pairs_only_on_large_catalogues():
    from recbole_compress.model.layers.codebook_embedding import pair_table_width, use_pair_scorer

    assert pair_table_width(4, 32) == 2048 and pair_table_width(3, 8) == 72
    assert use_pair_scorer(40728, 4, 32) and not use_pair_scorer(1683, 4, 32)
    assert use_pair_scorer(8 * 72, 3, 8) and not use_pair_scorer(8 * 72 - 1, 3, 8)


# -- composition="pair_product" ----------------------------------------------------------------------------------

def _pair_product_layer(n=300, n_dim=8, m=4, k=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    layer = CodebookEmbedding(n, n_dim, m, k, composition="pair_product").to(dtype)
    with torch.no_grad():
        layer.codebooks.copy_(torch.randn(m, k, n_dim, generator=g, dtype=dtype))
        layer.pair_factors.copy_(torch.randn(layer.pair_factors.shape, generator=g, dtype=dtype))
    layer.set_codes(torch.randint(0, k, (n, m), generator=g))
    return layer


def test_pair_product_table_by_hand_and_fresh_layer_composes_like_sum():
    layer = _pair_product_layer(n=40, n_dim=5, m=5, k=4, dtype=torch.float64)  # odd M: codebook 4 has no partner
    a, f, c = layer.codebooks, layer.pair_factors, layer.codes.long()
    loop = torch.stack([sum(a[m, c[v, m]] for m in range(5)) + f[0, 0, c[v, 0]] * f[0, 1, c[v, 1]]
                        + f[1, 0, c[v, 2]] * f[1, 1, c[v, 3]] for v in range(40)])
    torch.testing.assert_close(layer.table(), loop, rtol=0, atol=1e-12)
    ids = torch.tensor([[3, 0], [39, 39]])
    torch.testing.assert_close(layer(ids), loop[ids], rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.lookup(c[:6]), loop[:6], rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.table_from_onehot(F.one_hot(c, 4).double()), loop, rtol=0, atol=1e-12)
    # a fresh layer (R = 0) gives exactly the sum of its codewords
    fresh = CodebookEmbedding(40, 5, 5, 4, composition="pair_product")
    plain = CodebookEmbedding(40, 5, 5, 4)
    plain.codebooks.data.copy_(fresh.codebooks.data)
    for module in (fresh, plain):
        module.set_codes(c)
    assert torch.equal(fresh.table(), plain.table())


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("method", ["auto", "pair", "dense", "rebuild"])
def test_pair_product_fast_scores_equal_naive_scores(m, method):
    layer = _pair_product_layer(n=900, n_dim=8, m=m, k=4, seed=m, dtype=torch.float64)
    layer.eval()
    query = torch.randn(19, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.full_scores(query, method), query @ layer.table().t(), rtol=0, atol=1e-10)


def test_pair_product_refuses_scorers_of_a_plain_sum_and_learns_through_the_pair_scorer():
    layer = _pair_product_layer(n=200, n_dim=8, m=4, k=4)
    for method in ("embedding_bag", "gather", "sparse"):
        with pytest.raises(ValueError, match="pair_product"):
            layer.full_scores(torch.randn(2, 8), method)
    with pytest.raises(ValueError, match="num_codebooks >= 2"):
        CodebookEmbedding(10, 4, 1, 4, composition="pair_product")
    query = torch.randn(5, 8, requires_grad=True)
    weights = torch.randn(5, 200)
    grads = {}
    for method in ("dense", "pair"):
        layer.zero_grad()
        query.grad = None
        (layer.full_scores(query, method) * weights).sum().backward()
        grads[method] = (query.grad.clone(), layer.codebooks.grad.clone(), layer.pair_factors.grad.clone())
    for dense, pair in zip(grads["dense"], grads["pair"]):
        torch.testing.assert_close(pair, dense, rtol=1e-5, atol=1e-5)


def test_pair_product_can_rank_two_items_above_their_recombinations_a_sum_cannot():
    """Items X = (0, 0, 2, 2) and Y = (1, 1, 2, 2) and their within-pair recombinations (0, 1, 2, 2), (1, 0, 2, 2):
    with a sum of codewords s(X) + s(Y) = s(chimera 1) + s(chimera 2) for every query, so some chimera always scores
    at least as high as X or Y. The product term can put both items above both chimeras."""
    codes = torch.tensor([[3, 3, 3, 3], [0, 0, 2, 2], [1, 1, 2, 2], [0, 1, 2, 2], [1, 0, 2, 2]])
    margins = {}
    for composition in ("sum", "pair_product"):
        torch.manual_seed(0)
        layer = CodebookEmbedding(5, 8, 4, 4, composition=composition)
        layer.set_codes(codes)
        query = torch.randn(1, 8)
        optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
        for _ in range(300):
            scores = layer.full_scores(query, "pair")[0]
            margin = scores[1:3].min() - scores[3:5].max()
            optimizer.zero_grad()
            F.softplus(1.0 - margin).backward()
            optimizer.step()
        with torch.no_grad():
            scores = layer.full_scores(query, "pair")[0]
            margins[composition] = float(scores[1:3].min() - scores[3:5].max())
    assert margins["sum"] <= 1e-5
    assert margins["pair_product"] > 0.5


def test_pair_product_sizes_count_the_factors():
    layer = CodebookEmbedding(1001, 128, 4, 32, composition="pair_product")
    assert layer.storage_bytes()["pair_factors"] == 2 * 2 * 32 * 128 * 4
    # 1,000 items: 1000*128 / (4*32*128 + 4*1000 + 2*2*32*128)
    assert layer.compression_ratio() == pytest.approx(128000 / (16384 + 4000 + 16384))
    assert paper_compression_ratio(1000, 128, 4, 32, extra_floats=16384) == pytest.approx(layer.compression_ratio())
