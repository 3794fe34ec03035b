"""Compress any sequential model's item table: item_compression qr | adaptive | codebook under SASRec, GRU4Rec and
NextItNet; training, scoring, checkpoints, sizes; models that cannot take it are refused with the reason."""
import pytest
import torch
from recbole.model.sequential_recommender import SASRec

from recbole_compress.errors import ConfigError
from recbole_compress.model.item_compression import compress_item_table
from recbole_compress.model.layers.adaptive_embedding import adaptive_embedding_parameters
from recbole_compress.model.layers.adaptive_softmax import adaptive_softmax_parameters
from recbole_compress.model.layers.compositional_embedding import qr_table_sizes
from recbole_compress.run import build, make_config, restore
from recbole_compress.utils import get_model

BACKBONES = ("SASRec", "GRU4Rec", "NextItNet")
BLOCKS = {
    "qr": {"compression_rate": 4},
    "adaptive": {"n_clusters": 2, "cluster_cutoffs": [10]},
    "codebook": {"num_codebooks": 2, "codebook_size": 4},
}


def _config(tiny_config, model, block, **extra):
    cfg = dict(tiny_config, item_compression=block, **BLOCKS[block], **extra)
    cfg.update(hidden_size=8, embedding_size=8, strict_config_keys=False, epochs=1)
    return make_config(model, config_dict=cfg, read_cmd_line=False)


def _table_params(run, block):
    n_items, d = run.model.n_items, 8
    if block == "qr":
        return sum(qr_table_sizes(n_items - 1, 4, 2)) * d
    if block == "codebook":
        return 2 * 4 * d
    sizes = run.model.item_embedding.blocks.sizes
    dims = run.model.item_embedding.cluster_dims
    return adaptive_embedding_parameters(sizes, d, dims) + adaptive_softmax_parameters(sizes, d, dims)


def _plain_table(run):
    return run.model.n_items * 8


@pytest.mark.parametrize("block", list(BLOCKS))
@pytest.mark.parametrize("model", BACKBONES)
def test_every_block_under_every_backbone(tiny_config, model, block):
    run = build(_config(tiny_config, model, block))
    assert type(run.model).__name__ == model  # it keeps its own class name
    plain = build(make_config(model, config_dict=dict(tiny_config, hidden_size=8, embedding_size=8, epochs=1,
                                                      strict_config_keys=False), read_cmd_line=False))
    saved = sum(p.numel() for p in plain.model.parameters()) - sum(p.numel() for p in run.model.parameters())
    assert saved == _plain_table(plain) - _table_params(run, block)  # the parameter count's closed form

    batch = next(iter(run.data.train))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.trainer._train_epoch(run.data.train, 0)  # trains: the item block's weights move, the loss is finite
    assert torch.isfinite(torch.tensor(run.trainer.train_loss_dict.get(0, 0.0)))
    moved = [k for k, v in run.model.state_dict().items() if k.startswith(("item_embedding", "item_softmax"))
             and v.is_floating_point() and not torch.equal(v, before[k])]
    assert moved

    run.model.eval()
    test = next(iter(run.data.test))[0]
    with torch.no_grad():
        full = run.model.full_sort_predict(test)
        test.interaction["item_id"] = (torch.arange(len(test)) % (run.model.n_items - 1)) + 1
        single = run.model.predict(test)
    assert full.shape == (len(test), run.model.n_items)
    torch.testing.assert_close(single, full[torch.arange(len(test)), test["item_id"]], rtol=1e-4, atol=1e-4)

    run.trainer.item_fingerprint = None
    run.trainer.fit(run.data.train, run.data.valid, saved=True)  # a checkpoint that restores to the same scores
    restored = restore(run.trainer.saved_model_file, run.data)
    run.trainer._load_model_state(torch.load(run.trainer.saved_model_file, weights_only=True))
    run.model.eval(), restored.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored.model.full_sort_predict(test), run.model.full_sort_predict(test))
    assert restored.config["item_compression"] == block


def test_a_model_built_elsewhere_gets_its_table_replaced(tiny_config):
    config = make_config("SASRec", config_dict=dict(tiny_config, hidden_size=8, strict_config_keys=False),
                         read_cmd_line=False)
    run = build(config)
    model = SASRec(config, run.data.train._dataset)  # RecBole's own class, built by hand
    compress_item_table(model, {"item_compression": "adaptive", "n_clusters": 2}, run.data.train._dataset)
    batch = next(iter(run.data.train))
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.item_softmax.head.weight.grad is not None
    compress_item_table(SASRec(config, run.data.train._dataset), {"item_compression": "qr"})


@pytest.mark.parametrize("model, reason", [
    ("LSAN", "composes its item table from quotient-remainder base tables itself"),
    ("BERT4Rec", "extra row, its mask token"),
    ("CpRec", "already adaptive"),
    ("EODRec", "already a codebook"),
])
def test_models_that_cannot_take_it_are_refused_with_the_reason(tiny_config, model, reason):
    with pytest.raises(ConfigError, match=f"item_compression='qr' cannot apply to {model}: .*{reason}"):
        make_config(model, config_dict=dict(tiny_config, item_compression="qr"), read_cmd_line=False)


def test_a_block_that_would_not_shrink_the_table_is_refused_after_the_data_loads(tiny_config):
    from recbole_compress.run import load_data

    config = make_config("SASRec", config_dict=dict(tiny_config, item_compression="qr", compression_rate=1000),
                         read_cmd_line=False)
    with pytest.raises(ConfigError, match="not smaller than the 40-item table"):
        load_data(config)
    with pytest.raises(ConfigError, match="compression_rate=4.* configure item_compression: qr only"):
        make_config("SASRec", config_dict=dict(tiny_config, compression_rate=4), read_cmd_line=False)


def test_explicit_block_widths_are_checked_against_the_model_s_own_width(tiny_config):
    """The catalogue check after the data loads does not know the model's width: widths that fit the model pass it,
    a head wider than the model's table is refused when the model is built, before any training."""
    from recbole_compress.run import load_data

    adaptive = dict(tiny_config, item_compression="adaptive", n_clusters=2, cluster_cutoffs=[10], cluster_dims=[16, 4],
                    strict_config_keys=False, embedding_size=None)
    run = build(make_config("SASRec", config_dict=dict(adaptive, hidden_size=16), read_cmd_line=False))
    assert run.model.item_embedding.cluster_dims == [16, 4]
    config = make_config("SASRec", config_dict=dict(adaptive, hidden_size=8), read_cmd_line=False)
    load_data(config)
    with pytest.raises(ConfigError, match=r"cluster_dims=\[16, 4\]: the head width cannot exceed the embedding size 8"):
        build(config)


def test_get_model_returns_the_compressed_model_as_recbole_builds_it(tiny_config):
    from recbole.data import create_dataset, data_preparation

    from recbole_compress.config import Config
    from recbole_compress.model.layers.compositional_embedding import QuotientRemainderEmbedding

    config = Config("SASRec", "tiny", config_dict=dict(tiny_config, item_compression="qr", hidden_size=8),
                    read_cmd_line=False)
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model(config["model"])(config, train.dataset)
    assert isinstance(model, SASRec) and isinstance(model.item_embedding, QuotientRemainderEmbedding)
    assert model.item_embedding.combine == "mult"


def test_codes_fitted_to_a_teacher_give_every_item_its_own_embedding():
    """Items with the same teacher embedding get the same code from the encoder and would tie exactly at scoring;
    ``fit_item_codes`` moves all but one of each group to a free code, so every item's composite vector differs."""
    import types

    from recbole_compress.model.item_compression import fit_item_codes
    from recbole_compress.model.layers.codebook_embedding import CodebookEmbedding

    n, d = 41, 8
    rows = torch.randn(10, d, generator=torch.Generator().manual_seed(0))
    table = rows[torch.arange(n) % 10]  # four items per distinct teacher row
    model = types.SimpleNamespace(item_embedding=CodebookEmbedding(n, d, 2, 8))  # 64 code tuples for 40 items
    summary = fit_item_codes(model, table, seed=0)
    assert summary["encoder_codes"]["items_sharing_a_code"] >= 30  # the encoder alone: duplicates share codes
    assert summary["distinct_codes"] == n - 1 and summary["items_sharing_a_code"] == 0
    with torch.no_grad():
        composite = model.item_embedding.table()[1:]
    assert len(torch.unique(composite, dim=0)) == n - 1
