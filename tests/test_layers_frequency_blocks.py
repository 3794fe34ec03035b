"""Frequency-ranked item blocks: ranking, cut-off rules and validation, persistence."""
import pytest
import torch

from recbole_compress.model.layers.frequency_blocks import (
    FrequencyBlocks,
    item_frequencies,
    resolve_cluster_dims,
    resolve_cutoffs,
)
from recbole_compress.utils import ConfigError


def test_blocks_follow_descending_count_with_ties_by_id_and_exclude_padding():
    counts = torch.tensor([99, 3, 5, 5, 0, 1, 5])  # id 0 is padding: its count is ignored
    blocks = FrequencyBlocks(counts, [2, 4])
    # frequency order 2, 3, 6 (count 5, ties by id), 1 (3), 5 (1), 4 (0); blocks of 2; ascending ids inside a block
    assert blocks.item_order.tolist() == [2, 3, 1, 6, 4, 5]
    assert blocks.item_position.tolist() == [-1, 2, 0, 1, 4, 5, 3]
    assert blocks.item_position[blocks.item_order.long()].tolist() == list(range(6))
    assert blocks.sizes == [2, 2, 2] and blocks.cutoffs == [2, 4] and blocks.n_clusters == 3
    assert blocks.item_cluster.tolist() == [-1, 1, 0, 0, 2, 2, 1]
    assert blocks.item_local.tolist() == [-1, 0, 0, 1, 0, 1, 1]
    assert blocks.catalogue_index.tolist() == [6, 2, 0, 1, 4, 5, 3]
    assert blocks.n_items == 7 and blocks.n_real_items == 6


def test_every_item_of_a_block_is_at_least_as_frequent_as_any_later_one():
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 30, (501,), generator=g)
    blocks = FrequencyBlocks(counts, resolve_cutoffs(500, 4, 0.2))
    ordered = counts[blocks.item_order.long()]
    b = blocks.bounds.tolist()
    for j in range(3):
        assert ordered[b[j]:b[j + 1]].min() >= ordered[b[j + 1]:b[j + 2]].max()
        assert (blocks.item_order[b[j]:b[j + 1]].diff() > 0).all()
    assert sorted(blocks.item_order.tolist()) == list(range(1, 501))


def test_zero_count_items_go_last():
    counts = torch.tensor([0, 0, 4, 0, 2, 0])
    blocks = FrequencyBlocks(counts, [1])
    assert blocks.item_order.tolist() == [2, 1, 3, 4, 5]


def test_ratio_rule_is_the_papers_recursive_two_to_eight_split():
    assert resolve_cutoffs(1000, 3, 0.2) == [200, 360]
    assert resolve_cutoffs(54000, 3, 0.2) == [10800, 19440]
    assert resolve_cutoffs(1000, 1, 0.2) == []
    assert resolve_cutoffs(3, 3, 0.2) == [1, 2]  # every block keeps at least one item


def test_absolute_and_fraction_cutoffs():
    assert resolve_cutoffs(1000, cutoffs=[100, 400]) == [100, 400]
    assert resolve_cutoffs(1000, cutoffs=[0.13, 0.28]) == [130, 280]
    blocks = FrequencyBlocks(torch.arange(1001), resolve_cutoffs(1000, cutoffs=[0.1, 0.5]))
    assert blocks.sizes == [100, 400, 500]


@pytest.mark.parametrize(
    "cutoffs",
    [[400, 100], [100, 100], [0, 10], [10, 1000], [10, 2000], [0.5, 0.2], [0.2, 1.5], [100, 0.5], ["a", 10], 7],
)
def test_bad_cutoffs_name_the_key(cutoffs):
    with pytest.raises(ConfigError, match="cluster_cutoffs"):
        resolve_cutoffs(1000, cutoffs=cutoffs)


def test_fractions_that_round_to_the_same_rank_are_refused():
    with pytest.raises(ConfigError, match="strictly increasing"):
        resolve_cutoffs(10, cutoffs=[0.11, 0.12])


def test_bad_ratio_and_too_many_blocks():
    with pytest.raises(ConfigError, match="split_ratio"):
        resolve_cutoffs(1000, 3, 1.2, split_ratio_key="split_ratio")
    with pytest.raises(ConfigError, match="n_clusters"):
        resolve_cutoffs(2, 3, 0.2)
    with pytest.raises(ConfigError, match="n_clusters"):
        resolve_cutoffs(100, 0, 0.2)


def test_cluster_dims():
    assert resolve_cluster_dims(64, 3, 4) == [64, 16, 4]
    assert resolve_cluster_dims(512, 5, 4) == [512, 128, 32, 8, 2]
    assert resolve_cluster_dims(8, 4, 4) == [8, 2, 1, 1]  # never 0 (torch's div_value rule would give 0)
    assert resolve_cluster_dims(64, 2, dims=[32, 8]) == [32, 8]
    with pytest.raises(ConfigError, match="cluster_dims"):
        resolve_cluster_dims(64, 3, dims=[64, 16], dims_key="cluster_dims")
    with pytest.raises(ConfigError, match="cluster_dims"):
        resolve_cluster_dims(64, 2, dims=[128, 16], dims_key="cluster_dims")


def test_partition_survives_state_dict_round_trip_onto_other_counts():
    saved = FrequencyBlocks(torch.tensor([0, 1, 9, 3, 7, 5]), [2])
    other = FrequencyBlocks(torch.tensor([0, 5, 4, 3, 2, 1]), [1, 3])
    assert other.item_order.tolist() != saved.item_order.tolist()
    other.load_state_dict(saved.state_dict())
    for name in ("item_order", "bounds", "item_position", "item_cluster", "item_local"):
        assert torch.equal(getattr(other, name), getattr(saved, name))
    assert set(saved.state_dict()) == {"item_order", "bounds"}  # derived tables are rebuilt, not stored


def test_to_catalogue_order_scatters_block_order_scores_to_ids():
    blocks = FrequencyBlocks(torch.tensor([0, 1, 9, 3, 7, 5]), [2])
    scores = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0]])
    out = blocks.to_catalogue_order(scores)
    assert out.shape == (1, 6) and out[0, 0] == float("-inf")
    for position, item in enumerate(blocks.item_order.tolist()):
        assert out[0, item] == scores[0, position]


class _FakeDataset:
    iid_field = "item_id"
    item_num = 6

    def __init__(self, items):
        self.inter_feat = {"item_id": torch.tensor(items)}


def test_item_frequencies_count_interactions_and_zero_the_padding():
    counts = item_frequencies(_FakeDataset([1, 1, 3, 5, 5, 5, 0]))
    assert counts.tolist() == [0, 2, 0, 1, 0, 3]
