"""GRU4Rec with CpRec's adaptive input and output layers (the paper's Table 5): the layers under another backbone."""
import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import GRU4Rec

from recbole_compress.config import Config
from recbole_compress.model.layers.adaptive_embedding import AdaptiveEmbedding
from recbole_compress.model.layers.adaptive_softmax import AdaptiveSoftmax
from recbole_compress.model.sequential_recommender.gru4recadaptive import GRU4RecAdaptive
from recbole_compress.quick_start import objective_function
from recbole_compress.utils import ConfigError


@pytest.fixture(scope="module")
def tiny_split(tiny_data_path):
    cfg = {"dataset": "tiny", "data_path": tiny_data_path, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
           "MAX_ITEM_LIST_LENGTH": 10, "embedding_size": 8, "hidden_size": 16, "state": "ERROR",
           "show_progress": False, "train_batch_size": 64}
    config = Config(model="GRU4RecAdaptive", dataset="tiny", config_dict=cfg, read_cmd_line=False)
    return cfg, data_preparation(config, create_dataset(config))


def _model(tiny_split, model="GRU4RecAdaptive", **extra):
    cfg, (train, _, _) = tiny_split
    config = Config(model=model, dataset="tiny", config_dict=dict(cfg, **extra), read_cmd_line=False)
    torch.manual_seed(0)
    cls = GRU4RecAdaptive if model == "GRU4RecAdaptive" else GRU4Rec
    return cls(config, train._dataset), train


def test_both_switches_off_is_recboles_gru4rec(tiny_split):
    ours, train = _model(tiny_split, adaptive_input=False, adaptive_output=False)
    theirs, _ = _model(tiny_split, model="GRU4Rec")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    theirs.load_state_dict({k.replace("output_layer", "item_embedding"): v for k, v in ours.state_dict().items()})
    ours.eval(), theirs.eval()
    batch = next(iter(train))
    with torch.no_grad():
        assert torch.allclose(ours.full_sort_predict(batch), theirs.full_sort_predict(batch), atol=1e-6)
        assert torch.allclose(ours.calculate_loss(batch), theirs.calculate_loss(batch), atol=1e-6)


@pytest.mark.parametrize("adaptive", [(True, True), (True, False), (False, True)])
def test_adaptive_layers_replace_the_item_matrices(tiny_split, adaptive):
    model, train = _model(tiny_split, adaptive_input=adaptive[0], adaptive_output=adaptive[1])
    assert isinstance(model.item_embedding, AdaptiveEmbedding) == adaptive[0]
    assert isinstance(model.output_layer, AdaptiveSoftmax) == adaptive[1]
    parts = model.param_breakdown()
    d, n = 8, model.n_items
    if adaptive[0]:
        assert parts["input"] == model.item_embedding.num_parameters_formula() < n * d
    if adaptive[1]:
        assert parts["output"] == model.output_layer.num_parameters_formula() < n * d
        assert model.output_layer.blocks is model.blocks
    model.eval()
    batch = next(iter(train))[:4]
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        assert full.shape == (4, n)
        for item in (1, n // 2, n - 1):
            batch.interaction[model.ITEM_ID] = torch.full((4,), item, dtype=torch.long)
            assert torch.allclose(model.predict(batch), full[:, item], atol=1e-5)
        if adaptive[1]:
            assert torch.allclose(torch.logsumexp(full[:, 1:], 1), torch.zeros(4), atol=1e-5)
    model.train()
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert torch.isfinite(loss)


def test_bad_configuration_is_refused(tiny_split):
    from recbole_compress.run import load_data, make_config

    cfg, _ = tiny_split
    with pytest.raises(ConfigError, match="cluster_cutoffs"):
        load_data(make_config("GRU4RecAdaptive", "tiny", config_dict=dict(cfg, cluster_cutoffs=[10, 5]),
                              read_cmd_line=False))
    with pytest.raises(ConfigError, match="loss_type"):
        make_config("GRU4RecAdaptive", "tiny", config_dict=dict(cfg, loss_type="BPR"), read_cmd_line=False)


def test_one_epoch_tiny_run(tiny_config):
    result = objective_function(dict(tiny_config, model="GRU4RecAdaptive"), saved=True)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1 and result["checkpoint"]
