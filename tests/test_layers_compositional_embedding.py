"""Quotient-remainder compositional embedding: indices, table sizes, parameter formula, merges, cache, drop-in use."""
import math

import numpy as np
import pytest
import torch

from recbole_compress.model.layers.compositional_embedding import (
    QuotientRemainderEmbedding,
    complementary_index,
    complementary_table_sizes,
    qr_indices,
    qr_table_sizes,
)

torch.set_num_threads(1)  # 2 shared cores: intra-op threads only contend (20x slower under load)


@pytest.mark.parametrize("seed", range(6))
def test_qr_indices_unique_in_range_and_sizes_follow_formula(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        v = int(rng.integers(1, 5001))
        for m in range(1, 8):
            sizes = qr_table_sizes(v, m, 2)
            assert sizes == [m, math.ceil(v / m)]
            q = qr_indices(torch.arange(v), sizes)
            assert q.shape == (v, 2)
            assert (q >= 0).all() and (q[:, 0] < sizes[0]).all() and (q[:, 1] < sizes[1]).all()
            assert len({tuple(row) for row in q.tolist()}) == v  # every item its own pair of base rows
            # N=2: remainder then quotient (Eq.(1) and Eq.(4)-(5))
            k = torch.arange(v)
            assert torch.equal(q[:, 0], k % m) and torch.equal(q[:, 1], k // m)


def test_mixed_radix_three_tables_unique_and_explicit_sizes_checked():
    for v, sizes in [(1000, [10, 10, 10]), (997, [7, 12, 12]), (50, [3, 4, 5])]:
        assert math.prod(sizes) >= v
        q = QuotientRemainderEmbedding(v, 4, table_sizes=sizes).indices(torch.arange(1, v + 1))
        assert len({tuple(row) for row in q.tolist()}) == v
        for n, size in enumerate(sizes):
            assert q[:, n].max() < size
    assert qr_table_sizes(1000, 3, 3) == [3, 3, math.ceil(1000 / 9)]
    with pytest.raises(ValueError, match="at least the number of items"):
        QuotientRemainderEmbedding(1001, 4, table_sizes=[10, 10, 10])
    with pytest.raises(ValueError):
        qr_table_sizes(100, 0)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_parameter_count_equals_formula(m):
    v, d = 1234, 16
    emb = QuotientRemainderEmbedding(v, d, compression_rate=m)
    expected = (m + math.ceil(v / m)) * d
    assert sum(p.numel() for p in emb.parameters()) == expected == emb.num_parameters()
    if m >= 2:  # about m-fold smaller than a (V+1) x D table
        assert expected / ((v + 1) * d) == pytest.approx(1 / m, abs=1.5 / math.sqrt(v) + m / v)


def test_sum_and_mean_merge_match_a_hand_written_gather_and_padding_is_zero():
    v, d, m = 37, 6, 3
    emb_sum = QuotientRemainderEmbedding(v, d, compression_rate=m, combine="sum")
    emb_mean = QuotientRemainderEmbedding(v, d, compression_rate=m, combine="mean")
    emb_mean.load_state_dict(emb_sum.state_dict())
    ids = torch.tensor([[1, 5, 37, 0], [2, 3, 0, 0]])
    e1, e2 = emb_sum.tables[0].weight, emb_sum.tables[1].weight
    expected = e1[(ids - 1).clamp(min=0) % m] + e2[(ids - 1).clamp(min=0) // m]
    expected = expected * (ids > 0).unsqueeze(-1)
    assert torch.allclose(emb_sum(ids), expected)
    assert torch.allclose(emb_mean(ids), expected / 2)
    assert torch.equal(emb_sum(torch.tensor([0])), torch.zeros(1, d))
    base = emb_sum.base_vectors(ids)
    assert base.shape == (2, 4, 2, d)
    assert torch.allclose(base[0, 1, 0], e1[4 % m]) and torch.allclose(base[0, 1, 1], e2[4 // m])
    # .weight: every id's merged vector, row 0 zero, as nn.Embedding.weight
    weight = emb_sum.weight
    assert weight.shape == (v + 1, d)
    assert torch.equal(weight[0], torch.zeros(d))
    assert torch.allclose(weight[ids], emb_sum(ids))


def test_catalogue_cache_in_eval_mode_is_invalidated_by_updates_and_train():
    emb = QuotientRemainderEmbedding(50, 4, compression_rate=2)
    emb.eval()
    with torch.no_grad():
        first = emb.all_vectors()
        assert emb.all_vectors() is first  # cached
        emb.tables[0].weight.add_(1.0)  # an in-place update (optimizer step) invalidates it
        second = emb.all_vectors()
        assert second is not first and not torch.allclose(second, first)
        state = {k: torch.randn_like(w) for k, w in emb.state_dict().items()}
        emb.load_state_dict(state)  # loading a checkpoint in eval mode invalidates it too
        third = emb.all_vectors()
        assert torch.allclose(third, emb._all_vectors())
    emb.train()
    assert emb._weight_cache is None
    with torch.no_grad():
        assert emb.all_vectors() is not emb.all_vectors()  # no cache in training mode
    out = emb.all_vectors()
    out.sum().backward()  # with gradients on, the catalogue is part of the graph
    assert emb.tables[1].weight.grad is not None


def test_drop_in_replacement_of_the_item_table_of_recbole_sasrec(tiny_config):
    """Reusable under any backbone: RecBole's own SASRec trains with the QR embedding as its item table."""
    from recbole.data import create_dataset, data_preparation

    from recbole_compress.config import Config
    from recbole_compress.utils import get_model

    config = Config(model="SASRec", dataset="tiny", config_dict=dict(tiny_config, n_heads=2), read_cmd_line=False)
    dataset = create_dataset(config)
    train_data, _, test_data = data_preparation(config, dataset)
    model = get_model("SASRec")(config, train_data._dataset)
    full = sum(p.numel() for p in model.parameters())
    model.item_embedding = QuotientRemainderEmbedding(model.n_items - 1, config["hidden_size"], compression_rate=4)
    assert sum(p.numel() for p in model.parameters()) < full
    batch = next(iter(train_data))
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.item_embedding.tables[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        interaction = next(iter(test_data))[0]
        scores = model.full_sort_predict(interaction)
    assert scores.shape == (len(interaction), model.n_items)


def test_mult_merge_is_the_elementwise_product_and_padding_is_zero():
    v, d, m = 37, 6, 3
    emb = QuotientRemainderEmbedding(v, d, compression_rate=m, combine="mult")
    ids = torch.tensor([[1, 5, 37, 0], [2, 3, 0, 0]])
    e1, e2 = emb.tables[0].weight, emb.tables[1].weight
    k = (ids - 1).clamp(min=0)
    expected = e1[k % m] * e2[k // m] * (ids > 0).unsqueeze(-1)
    assert torch.allclose(emb(ids), expected)
    assert torch.equal(emb.weight[0], torch.zeros(d)) and torch.allclose(emb.weight[ids], emb(ids))
    three = QuotientRemainderEmbedding(50, d, table_sizes=[2, 5, 5], combine="mult")
    base = three.base_vectors(torch.tensor([7]))
    assert torch.allclose(three(torch.tensor([7])), base[:, 0] * base[:, 1] * base[:, 2])


@pytest.mark.parametrize("sizes", [[3, 400], [4, 4, 80]])
def test_initialisations_give_the_product_a_sensible_scale(sizes):
    torch.manual_seed(0)
    v, d, std = 1000, 64, 0.02
    scaled = QuotientRemainderEmbedding(v, d, table_sizes=sizes, combine="mult", init_std=std)
    assert scaled.init == "scaled"  # auto, for a product
    assert scaled.weight[1:].std().item() == pytest.approx(std, rel=0.15)  # a product of N(0, 0.02) rows: 4e-4
    ones = QuotientRemainderEmbedding(v, d, table_sizes=sizes, combine="mult", init="ones", init_std=std)
    assert all(t.weight.mean().item() == pytest.approx(1.0, abs=0.01) for t in ones.tables[:-1])
    assert ones.weight[1:].std().item() == pytest.approx(std, rel=0.15)
    summed = QuotientRemainderEmbedding(v, d, table_sizes=sizes, combine="sum", init_std=std)
    assert summed.init == "normal" and summed.tables[0].weight.std().item() == pytest.approx(std, rel=0.15)
    for table in scaled.tables:  # a model's own initialisation overwrote the tables: reset_parameters restores
        torch.nn.init.zeros_(table.weight)
    scaled.reset_parameters()
    assert scaled.weight[1:].std().item() == pytest.approx(std, rel=0.15)
    with pytest.raises(ValueError, match="init must be one of"):
        QuotientRemainderEmbedding(v, d, init="xavier")


def _fit_within_pair_orders(combine, users, orders, steps=400):
    """Fit an output table (tables + per-item bias) so that user u prefers member orders[u, j] of quotient row j;
    return the fraction of (user, row) orders it gets right."""
    torch.manual_seed(0)
    n_users, n_rows = orders.shape
    emb = QuotientRemainderEmbedding(2 * n_rows, users.shape[1], compression_rate=2, combine=combine)
    bias = torch.zeros(2 * n_rows + 1, requires_grad=True)
    optimizer = torch.optim.Adam(list(emb.parameters()) + [bias], lr=0.05)
    first, second = torch.arange(n_rows) * 2 + 1, torch.arange(n_rows) * 2 + 2  # the two items of row j
    sign = orders.float() * 2 - 1  # +1: the second item must score higher
    for _ in range(steps):
        optimizer.zero_grad()
        weight = emb.weight
        gap = users @ (weight[second] - weight[first]).T + (bias[second] - bias[first])
        loss = torch.nn.functional.softplus(-sign * gap * 10).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weight = emb.weight
        gap = users @ (weight[second] - weight[first]).T + (bias[second] - bias[first])
    return ((gap > 0) == orders).float().mean().item()


def test_product_keeps_the_items_of_a_quotient_row_apart_and_the_sum_cannot():
    """Capacity: users that order the two items of each quotient row differently (random orders per user and row).
    With an additive merge the within-row gap is ``h_u . g + beta_j`` (one global direction g), which cannot realise
    a random sign pattern; the product gives every row its own direction."""
    g = torch.Generator().manual_seed(1)
    users = torch.randn(8, 16, generator=g)
    orders = torch.randint(0, 2, (8, 8), generator=g).bool()
    assert _fit_within_pair_orders("mult", users, orders) == 1.0
    assert _fit_within_pair_orders("sum", users, orders) < 0.9


def test_elementwise_product_equals_prod_with_its_gradients():
    """The multiplicative merge without ``prod``'s slow backward: the same values and gradients, zeros included."""
    from recbole_compress.model.layers.compositional_embedding import elementwise_product

    for n in (1, 2, 3):
        torch.manual_seed(n)
        v = torch.randn(4, 5, n, 6)
        v[0, 0, 0, :3] = 0.0  # a zero factor: prod's backward treats it specially
        a, b = v.clone().requires_grad_(), v.clone().requires_grad_()
        out, ref = elementwise_product(a), b.prod(dim=-2)
        assert torch.allclose(out, ref)
        g = torch.randn_like(ref)
        out.backward(g)
        ref.backward(g)
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


@pytest.mark.parametrize("sizes", [[2, 10], [3, 7], [2, 2, 5]])
def test_frequency_order_gives_the_most_frequent_items_quotient_rows_of_their_own(sizes):
    """``frequency_spread_order``: every id keeps a distinct tuple of rows, and the m_N most frequent items (ties by
    id) never share a quotient row, even when the popular items are neighbouring ids (which the id order pairs)."""
    from recbole_compress.model.layers.compositional_embedding import frequency_spread_order

    num_items = 19
    gen = torch.Generator().manual_seed(3)
    counts = torch.cat([torch.zeros(1, dtype=torch.long), torch.randint(0, 5, (num_items,), generator=gen)])
    counts[1:7] = torch.tensor([90, 80, 70, 60, 50, 40])  # the popular items are ids 1-6, neighbours
    emb = QuotientRemainderEmbedding(num_items, 4, table_sizes=sizes,
                                     index_of_id=frequency_spread_order(counts, sizes))
    ids = torch.arange(1, num_items + 1)
    rows = emb.indices(ids)
    assert len({tuple(r) for r in rows.tolist()}) == num_items
    top = ids[torch.argsort(-counts[1:], stable=True)][: sizes[-1]]
    assert emb.indices(top)[:, -1].unique().numel() == sizes[-1]
    by_id = QuotientRemainderEmbedding(num_items, 4, table_sizes=sizes).indices(top)[:, -1]
    assert by_id.unique().numel() < sizes[-1]  # the id order makes popular neighbours share rows


def test_a_given_order_is_saved_with_the_table_and_a_wrong_one_is_refused():
    from recbole_compress.model.layers.compositional_embedding import frequency_spread_order

    counts = torch.tensor([0, 1, 9, 3, 7, 5, 2])
    order = frequency_spread_order(counts, [2, 3])
    emb = QuotientRemainderEmbedding(6, 4, table_sizes=[2, 3], combine="mult", index_of_id=order)
    copy = QuotientRemainderEmbedding(6, 4, table_sizes=[2, 3], combine="mult",
                                      index_of_id=torch.tensor([0, 0, 1, 2, 3, 4, 5]))
    copy.load_state_dict(emb.state_dict())
    torch.testing.assert_close(copy.weight, emb.weight)
    with pytest.raises(ValueError, match="distinct indices"):
        QuotientRemainderEmbedding(6, 4, table_sizes=[2, 3], index_of_id=torch.tensor([0, 1, 1, 2, 3, 4, 5]))


@pytest.mark.parametrize("sizes", [[2, 10], [3, 7], [2, 2, 5]])
def test_cooccurrence_order_puts_items_that_follow_one_another_in_one_quotient_row(sizes):
    """``cooccurrence_group_order``: a distinct tuple of rows per id, and items that follow one another often share
    their quotient row (the id order shares none of these here), while items never seen together need not."""
    from recbole_compress.model.layers.compositional_embedding import cooccurrence_group_order

    num_items, size = 19, math.prod(sizes[:-1])
    groups = [[1, 9, 17, 5][:size], [2, 12, 7, 15][:size], [3, 18, 11, 6][:size]]  # far apart in id order
    prev, nxt = [], []
    for g in groups:
        for a, b in zip(g, g[1:]):
            prev += [a] * 5
            nxt += [b] * 5
    prev += [4, 0, 13]  # a rare pair and a padding id
    nxt += [10, 8, 13]
    index = cooccurrence_group_order(torch.tensor(prev), torch.tensor(nxt), num_items, sizes)
    emb = QuotientRemainderEmbedding(num_items, 4, table_sizes=sizes, index_of_id=index)
    rows = emb.indices(torch.arange(1, num_items + 1))
    assert len({tuple(r) for r in rows.tolist()}) == num_items
    by_id = QuotientRemainderEmbedding(num_items, 4, table_sizes=sizes)
    for g in groups:
        assert emb.indices(torch.tensor(g))[:, -1].unique().numel() == 1
        assert by_id.indices(torch.tensor(g))[:, -1].unique().numel() > 1
    assert emb.indices(torch.tensor([4, 10]))[:, -1].unique().numel() == (1 if size > 1 else 2)


@pytest.mark.parametrize("num_items,rate,tables", [(12101, 2, 2), (1682, 2, 2), (1682, 3, 3), (40727, 4, 2), (97, 2, 3)])
def test_complementary_sizes_split_the_same_rows_into_near_equal_coprime_tables(num_items, rate, tables):
    budget = sum(qr_table_sizes(num_items, rate, tables))
    sizes = complementary_table_sizes(num_items, budget, tables)
    assert len(sizes) == tables and sum(sizes) <= budget and math.prod(sizes) >= num_items
    assert all(math.gcd(a, b) == 1 for i, a in enumerate(sizes) for b in sizes[i + 1:])
    assert max(sizes) - min(sizes) <= 12 and sum(sizes) >= budget - 12  # near-equal, the budget nearly spent


def test_complementary_sizes_refuse_a_budget_too_small_for_distinct_tuples():
    with pytest.raises(ValueError, match="pairwise coprime"):
        complementary_table_sizes(10_000, 150, 2)  # 75 * 76 < 10,000


@pytest.mark.parametrize("num_items", [12101, 1682, 500])
def test_complementary_partition_gives_distinct_rows_and_no_row_shared_by_many_items(num_items):
    """Every item its own tuple of rows, every row used, and no row tied to more than a handful of items: at the
    rows of the quotient-remainder tables of m = 2, whose remainder rows each serve half the catalogue."""
    qr_sizes = qr_table_sizes(num_items, 2, 2)
    sizes = complementary_table_sizes(num_items, sum(qr_sizes), 2)
    layer = QuotientRemainderEmbedding(num_items, 4, table_sizes=sizes, combine="mult",
                                       index_of_id=complementary_index(num_items, sizes))
    rows = layer.indices(torch.arange(1, num_items + 1))
    assert len({tuple(r) for r in rows.tolist()}) == num_items
    k = torch.arange(num_items)
    assert torch.equal(rows, torch.stack([k % sizes[0], k % sizes[1]], dim=1))  # row k mod m_n in table n
    for n, size in enumerate(sizes):
        load = torch.bincount(rows[:, n], minlength=size)
        assert (load > 0).all() and load.max() <= math.ceil(num_items / size)
    qr_rows = QuotientRemainderEmbedding(num_items, 4, table_sizes=qr_sizes).indices(torch.arange(1, num_items + 1))
    assert torch.bincount(qr_rows[:, 0]).max() >= num_items // 2  # the remainder rows of QR serve half the items
    assert layer.num_parameters() <= QuotientRemainderEmbedding(num_items, 4, table_sizes=qr_sizes).num_parameters()


def test_complementary_index_refuses_sizes_that_share_a_divisor():
    with pytest.raises(ValueError, match="pairwise coprime"):
        complementary_index(100, [10, 12])
