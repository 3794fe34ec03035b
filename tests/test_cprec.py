"""CpRec on NextItNet: configurations, closed-form sizes, sharing, scoring, causality, validation, a tiny run."""
import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_compress.config import Config
from recbole_compress.model.layers.nextitnet_blocks import SHARING_SCHEMES, conv_set_index, middle_parameters
from recbole_compress.model.sequential_recommender.cprec import CpRec
from recbole_compress.quick_start import load_data_and_model, objective_function
from recbole_compress.preflight import run_keys
from recbole_compress.utils import ConfigError, get_model

UNCOMPRESSED = {"adaptive_input": False, "adaptive_output": False, "sharing_scheme": "none"}


@pytest.fixture(scope="module")
def tiny_data(tiny_data_path, tmp_path_factory):
    """One dataset split reused by the model-level tests (the model is rebuilt per test)."""
    cfg = _cfg({"data_path": tiny_data_path, "checkpoint_dir": str(tmp_path_factory.mktemp("saved"))})
    config = Config(model="CpRec", dataset="tiny", config_dict=cfg, read_cmd_line=False)
    dataset = create_dataset(config)
    return cfg, data_preparation(config, dataset)


def _cfg(extra):
    base = {
        "dataset": "tiny",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "show_progress": False,
        "state": "ERROR",
        "log_wandb": False,
        "MAX_ITEM_LIST_LENGTH": 10,
        "embedding_size": 8,
        "block_num": 2,
        "dilations": [1, 2],
        "reproducibility": True,
    }
    base.update(extra)
    return base


def _model(tiny_data, **extra):
    cfg, (train, _, _) = tiny_data
    config = Config(model="CpRec", dataset="tiny", config_dict=dict(cfg, **extra), read_cmd_line=False)
    torch.manual_seed(0)
    return CpRec(config, train._dataset), train


def _batch(train):
    return next(iter(train))


def test_alias_and_yaml_keys():
    assert get_model("CpRec-NextItNet") is CpRec and get_model("cprec") is CpRec
    keys = run_keys("CpRec")
    for key in ("embedding_size", "sharing_scheme", "cluster_cutoffs", "cluster_dims", "adaptive_input", "loss_position"):
        assert key in keys
    config = Config(model="CpRec", dataset="ml-100k", read_cmd_line=False)
    assert config["embedding_size"] == 64 and config["sharing_scheme"] == "adjacent_block"
    assert config["train_neg_sample_args"]["distribution"] == "none" and config["loss_type"] == "CE"


@pytest.mark.parametrize("scheme", SHARING_SCHEMES)
@pytest.mark.parametrize("adaptive", [(True, True), (True, False), (False, True), (False, False)])
def test_parameter_counts_equal_the_closed_form(tiny_data, scheme, adaptive):
    model, _ = _model(tiny_data, sharing_scheme=scheme, adaptive_input=adaptive[0], adaptive_output=adaptive[1])
    d, n, R = 8, model.n_items, 4
    sizes = model.blocks.sizes if model.blocks is not None else None
    dims = model.cluster_dims
    expected_input = (sizes[0] * d + sum((k + d) * dj for k, dj in zip(sizes[1:], dims[1:]))) if adaptive[0] else n * d
    expected_output = (d * (sizes[0] + 2) + sum((d + k) * dj for k, dj in zip(sizes[1:], dims[1:]))) if adaptive[1] \
        else d * n + n
    conv_sets = {"none": 2 * R, "cross_layer": 1, "cross_block": 2, "adjacent_layer": R, "adjacent_block": R}[scheme]
    expected_middle = conv_sets * (3 * d * d + d) + 2 * R * 2 * d
    breakdown = model.param_breakdown()
    assert breakdown == {"input": expected_input, "middle": expected_middle, "output": expected_output,
                         "total": expected_input + expected_middle + expected_output}
    assert breakdown == model.expected_parameters()
    assert expected_middle == middle_parameters(scheme, R, d, 3)


def test_uncompressed_configuration_is_the_papers_nextitnet(tiny_data):
    model, _ = _model(tiny_data, **UNCOMPRESSED)
    assert isinstance(model.item_embedding, torch.nn.Embedding)
    assert torch.equal(model.item_embedding.weight[0], torch.zeros(8))
    assert isinstance(model.output_layer, torch.nn.Linear) and model.output_layer.bias is not None
    assert model.output_layer.weight is not model.item_embedding.weight  # untied
    assert len(model.residual_blocks.convs) == 2 * model.residual_blocks.n_blocks
    assert model.blocks is None
    assert model.param_breakdown() == model.uncompressed_parameters()


@pytest.mark.parametrize("scheme", ["cross_layer", "cross_block", "adjacent_layer", "adjacent_block"])
def test_shared_conv_weights_are_one_tensor_in_the_model(tiny_data, scheme):
    model, _ = _model(tiny_data, sharing_scheme=scheme)
    stack = model.residual_blocks
    for r in range(stack.n_blocks):
        for l in range(2):
            owner = conv_set_index(scheme, r, l)
            assert stack.conv(r, l).weight is stack.convs[owner].weight
    params = dict(model.named_parameters())
    assert len([k for k in params if k.startswith("residual_blocks.convs")]) == 2 * len(stack.convs)


@pytest.mark.parametrize("extra", [{}, UNCOMPRESSED, {"adaptive_input": False}, {"adaptive_output": False},
                                   {"n_clusters": 4, "cluster_dims": [8, 4, 2, 1]}])
def test_full_sort_predict_equals_predict_per_item(tiny_data, extra):
    model, train = _model(tiny_data, **extra)
    model.eval()
    batch = _batch(train)[:5]
    with torch.no_grad():
        full = model.full_sort_predict(batch)
    assert full.shape == (5, model.n_items) and torch.isinf(full[:, 0]).all()
    for item in range(1, model.n_items):
        batch.interaction[model.ITEM_ID] = torch.full((5,), item, dtype=torch.long)
        with torch.no_grad():
            assert torch.allclose(model.predict(batch), full[:, item], atol=1e-5)
    if model.adaptive_output:  # log-probabilities of a normalised distribution over the catalogue
        assert torch.allclose(torch.logsumexp(full[:, 1:], dim=1), torch.zeros(5), atol=1e-5)


def test_full_sort_predict_never_reads_the_target(tiny_data):
    model, train = _model(tiny_data)
    model.eval()
    batch = _batch(train)[:4]
    with torch.no_grad():
        a = model.full_sort_predict(batch)
        batch.interaction[model.ITEM_ID] = torch.ones(4, dtype=torch.long)
        b = model.full_sort_predict(batch)
    assert torch.equal(a, b)


@pytest.mark.parametrize("extra", [{}, UNCOMPRESSED])
def test_causality_and_last_valid_position(tiny_data, extra):
    model, train = _model(tiny_data, **extra)
    model.eval()
    seq = torch.randint(1, model.n_items, (3, 10))
    t = 4
    with torch.no_grad():
        h = model.encode(seq)
        seq2 = seq.clone()
        seq2[:, t + 1:] = torch.randint(1, model.n_items, (3, 10 - t - 1))
        assert torch.allclose(model.encode(seq2)[:, : t + 1], h[:, : t + 1], atol=1e-6)
        assert not torch.allclose(model.encode(seq2)[:, t + 1:], h[:, t + 1:], atol=1e-4)
        # the representation is the state at the last real item; right padding does not change it
        lengths = torch.tensor([t + 1] * 3)
        padded = seq.clone()
        padded[:, t + 1:] = 0
        assert torch.allclose(model.forward(padded, lengths), h[:, t], atol=1e-6)


def test_training_loss_is_the_tree_nll_and_gradients_flow(tiny_data):
    model, train = _model(tiny_data)
    batch = _batch(train)
    loss = model.calculate_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        nll = -full.gather(1, batch[model.POS_ITEM_ID].unsqueeze(1)).mean()
        assert torch.allclose(model.calculate_loss(batch), nll, atol=1e-5)
    model.train()
    model.calculate_loss(batch).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_uncompressed_loss_is_ce_over_real_items(tiny_data):
    model, train = _model(tiny_data, **UNCOMPRESSED)
    batch = _batch(train)
    with torch.no_grad():
        logits = model.full_sort_predict(batch)
        expected = torch.nn.functional.cross_entropy(logits[:, 1:], batch[model.POS_ITEM_ID] - 1)
        assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)


def test_loss_position_all_and_regularisation(tiny_data):
    model, train = _model(tiny_data, loss_position="all", reg_weight=1e-3)
    losses = model.calculate_loss(_batch(train))
    assert isinstance(losses, tuple) and len(losses) == 2 and all(torch.isfinite(x) for x in losses)
    assert losses[1] > 0


def test_ranking_comes_from_training_targets_only(tiny_data, tiny_data_path):
    import os

    import pandas as pd

    model, train = _model(tiny_data)
    dataset = train._dataset
    inter = pd.read_csv(os.path.join(tiny_data_path, "tiny", "tiny.inter"), sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    expected = np.zeros(model.n_items, dtype=np.int64)
    for _, rows in inter.sort_values(["user_id", "timestamp"]).groupby("user_id"):
        for token in rows["item_id"].tolist()[1:-2]:  # first item: no target; last two: valid and test targets
            expected[dataset.token2id(dataset.iid_field, str(token))] += 1
    counts = np.bincount(dataset.inter_feat[dataset.iid_field].numpy(), minlength=model.n_items)
    assert (counts == expected).all()
    assert expected.sum() == len(inter) - 3 * inter["user_id"].nunique()
    # blocks are frequency ranges of the training counts
    ordered = expected[model.blocks.item_order.long().numpy()]
    b = model.blocks.bounds.tolist()
    for j in range(len(b) - 2):
        assert ordered[b[j]:b[j + 1]].min() >= ordered[b[j + 1]:b[j + 2]].max()


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"cluster_cutoffs": [20, 10]}, "cluster_cutoffs"),
        ({"cluster_cutoffs": [5, 5]}, "cluster_cutoffs"),
        ({"cluster_cutoffs": [0.5, 0.2]}, "cluster_cutoffs"),
        ({"cluster_cutoffs": [10, 0.5]}, "cluster_cutoffs"),
        ({"cluster_cutoffs": [10, 10_000]}, "cluster_cutoffs"),
        ({"cluster_split_ratio": 0.0}, "cluster_split_ratio"),
        ({"n_clusters": 0}, "n_clusters"),
        ({"cluster_dims": [8, 2]}, "cluster_dims"),
        ({"sharing_scheme": "cross"}, "sharing_scheme"),
        ({"loss_type": "BPR"}, "loss_type"),
        ({"loss_position": "first"}, "loss_position"),
        ({"adaptive_input": "yes"}, "adaptive_input"),
    ],
)
def test_bad_configuration_is_refused_before_training(tiny_data, extra, key):
    """Refused by the run layer's checks: values before any data loads, cut-offs against the catalogue right after
    the dataset loads; never by building the model."""
    from recbole_compress.run import load_data, make_config

    cfg, _ = tiny_data
    with pytest.raises(ConfigError, match=key):
        load_data(make_config("CpRec", "tiny", config_dict=dict(cfg, **extra), read_cmd_line=False))


def test_explicit_cutoffs_as_ranks_and_fractions(tiny_data):
    model, _ = _model(tiny_data, cluster_cutoffs=[5, 15, 25])
    assert model.blocks.sizes == [5, 10, 10, 15] and model.cluster_dims == [8, 2, 1, 1]
    model, _ = _model(tiny_data, cluster_cutoffs=[0.25, 0.5])
    assert model.blocks.cutoffs == [10, 20]


def test_one_epoch_tiny_run_saves_and_reloads(tiny_data_path, tmp_path):
    cfg = _cfg({"model": "CpRec-NextItNet", "data_path": tiny_data_path, "checkpoint_dir": str(tmp_path)})
    result = objective_function(cfg, saved=True)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1 and result["checkpoint"]
    config, model, dataset, train, valid, test = load_data_and_model(result["checkpoint"])
    assert isinstance(model, CpRec)
    state = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    assert torch.equal(model.blocks.item_order, state["blocks.item_order"])
    assert torch.equal(model.item_embedding.tables[0], state["item_embedding.tables.0"])


def test_trailing_padding_is_trimmed_without_changing_any_output(tiny_data):
    model, train = _model(tiny_data, **UNCOMPRESSED)
    model.eval()
    batch = _batch(train)
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    short = seq.clone()
    short[:, 3:] = 0
    short_len = lengths.clamp(max=3)
    with torch.no_grad():
        full_width = model.gather_indexes(model.encode(short), short_len - 1)
        assert model._trim(short, short_len).shape[1] == 3
        assert torch.allclose(model.forward(short, short_len), full_width, atol=1e-6)
