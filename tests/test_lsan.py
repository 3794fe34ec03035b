"""LSAN: context on ml-100k, split identical to SASRec's, no target leakage, prediction consistency, cache, parameter
formulae, ablation switches, missing-context error, and an end-to-end run through objective_function."""
import copy
import logging
import math
import os
import re

import pandas as pd
import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_compress.config import Config
from recbole_compress.model.layers.temporal_context import shift_right
from recbole_compress.model.sequential_recommender.lsan import LSAN, LSANDataset
from recbole_compress.utils import ConfigError

torch.set_num_threads(1)  # 2 shared cores: intra-op threads only contend (20x slower under load)

SMALL = {"hidden_size": 16, "n_heads": 2, "state": "ERROR", "show_progress": False, "reproducibility": True}


def _build(model, dataset, config_dict):
    config = Config(model=model, dataset=dataset, config_dict=config_dict, read_cmd_line=False)
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    return config, data, train, valid, test


# ---------------------------------------------------------------------------------------------------------------
# ml-100k (loaded once per module): the headline settings, with no flag but a small width
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ml100k():
    config, data, train, valid, test = _build("LSAN", "ml-100k", dict(SMALL))
    torch.manual_seed(0)
    model = LSAN(config, train._dataset)
    return {"config": config, "dataset": data, "train": train, "valid": valid, "test": test, "model": model}


def _test_batch(ml100k, n=64):
    interaction = next(iter(ml100k["test"]))[0]
    return interaction[:n]


def test_headline_config_loads_ml100k_genres_and_keeps_the_protocol(ml100k):
    config = ml100k["config"]
    assert config["category_field"] == "class"
    assert config["load_col"]["item"] == ["item_id", "class"]
    assert isinstance(ml100k["dataset"], LSANDataset)
    sasrec = Config(model="SASRec", dataset="ml-100k", config_dict=dict(SMALL), read_cmd_line=False)
    assert "item" not in sasrec["load_col"] and sasrec["category_field"] is None  # other models are untouched
    for key in ("eval_args", "MAX_ITEM_LIST_LENGTH", "metrics", "topk", "valid_metric", "normalize_all"):
        assert config[key] == sasrec[key], key


def test_split_is_identical_to_sasrecs(ml100k):
    """Same users, same targets, same histories (by original tokens) in train, valid and test."""
    _, sas_data, *sas_splits = _build("SASRec", "ml-100k", dict(SMALL))

    def rows(data, split):
        u2t, i2t = data.field2id_token["user_id"], data.field2id_token["item_id"]
        inter = split._dataset.inter_feat
        seq, n = inter["item_id_list"].numpy(), inter["item_length"].numpy()
        return sorted(
            (u2t[u], i2t[i], tuple(i2t[x] for x in s[:k]))
            for u, i, s, k in zip(inter["user_id"].numpy(), inter["item_id"].numpy(), seq, n)
        )

    lsan_splits = (ml100k["train"], ml100k["valid"], ml100k["test"])
    for ours, theirs in zip(lsan_splits, sas_splits):
        assert rows(ml100k["dataset"], ours) == rows(sas_data, theirs)


def test_ml100k_context_uses_real_hours_and_class_categories(ml100k):
    model, dataset = ml100k["model"], ml100k["train"]._dataset
    assert model.has_categories and model.has_time_slots
    assert model.num_categories == dataset.num("class") - 1 >= 18
    # categories: the last genre token of each movie's `class`
    cls = dataset.item_feat["class"]
    for item in (1, 2, 50, 500):
        tokens = [t for t in cls[item].tolist() if t > 0]
        assert model.item2cat[item].item() == tokens[-1]
    assert len(set(model.item2cat[1:].tolist())) > 10
    # hour slots of a training batch take many values and equal the UTC hours of the raw timestamps
    batch = next(iter(ml100k["train"]))
    slots = batch["timestamp_slot_list"][batch["item_id_list"] > 0]
    assert len(torch.unique(slots)) > 1
    from recbole import __file__ as recbole_file

    raw = pd.read_csv(os.path.join(os.path.dirname(recbole_file), "dataset_example", "ml-100k", "ml-100k.inter"),
                      sep="\t")
    raw.columns = [c.split(":")[0] for c in raw.columns]
    hour = {(str(u), str(i)): (t // 3600) % 24 for u, i, t in zip(raw.user_id, raw.item_id, raw.timestamp)}
    u2t, i2t = dataset.field2id_token["user_id"], dataset.field2id_token["item_id"]
    for u, i, s in zip(batch["user_id"][:50].tolist(), batch["item_id"][:50].tolist(),
                       batch["timestamp_slot"][:50].tolist()):
        assert hour[(u2t[u], i2t[i])] == s
    assert model.benchmark_report()["time_slots_in_training"] == 24


def test_changing_target_columns_leaves_full_sort_predict_unchanged(ml100k):
    model = ml100k["model"].eval()
    interaction = _test_batch(ml100k)
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        altered = copy.deepcopy(interaction)
        altered.interaction["item_id"] = torch.randint(1, model.n_items, altered["item_id"].shape)
        altered.interaction["timestamp"] = altered["timestamp"] * 0 + 0.123
        altered.interaction["timestamp_slot"] = (altered["timestamp_slot"] + 7) % 24
        altered.interaction["class"] = torch.randint(1, 5, altered["class"].shape)
        assert torch.equal(model.full_sort_predict(altered), scores)
        # the history's own slots do matter (the context is used)
        history = copy.deepcopy(interaction)
        history.interaction["timestamp_slot_list"] = (history["timestamp_slot_list"] + 5) % 24
        assert not torch.allclose(model.full_sort_predict(history), scores)


def test_predict_agrees_with_full_sort_predict_and_catalogue_is_cached(ml100k):
    model = ml100k["model"].eval()
    interaction = _test_batch(ml100k, 16)
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        assert scores.shape == (16, model.n_items)
        cached = model.item_output_weight()
        assert model.item_output_weight() is cached
        for _ in range(3):
            items = torch.randint(1, model.n_items, (16,))
            probe = copy.deepcopy(interaction)
            probe.interaction["item_id"] = items
            assert torch.allclose(model.predict(probe), scores[torch.arange(16), items], atol=1e-5)
        # the default tied output: W_p[id] = E_1[q_1(id - 1)] * E_2[q_2(id - 1)] (element-wise), row 0 zero
        emb = model.item_embedding
        ids = torch.tensor([1, 2, 3, 841, 842, model.n_items - 1])
        q = emb.indices(ids)
        manual = emb.tables[0].weight[q[:, 0]] * emb.tables[1].weight[q[:, 1]]
        assert torch.allclose(cached[ids], manual) and torch.equal(cached[0], torch.zeros_like(cached[0]))
    model.train()
    with torch.no_grad():
        assert model.item_output_weight() is not cached  # train() drops the cache
    model.eval()


def _within_pair_gaps(model, interaction):
    """Score gap (second minus first item, bias left out) of every quotient row at m=2, for every user: [B, V/2]."""
    with torch.no_grad():
        h = model._sequence_output(interaction)
        weight = model.item_output_weight()[1:]
        pairs = weight.shape[0] // 2
        return h @ (weight[1:2 * pairs:2] - weight[0:2 * pairs:2]).T


def test_within_pair_score_gap_varies_across_pairs_and_users(ml100k):
    """The items that share a quotient row must be ranked by the user and the row, not by one global direction."""
    model = ml100k["model"].eval()
    interaction = _test_batch(ml100k, 32)
    gaps = _within_pair_gaps(model, interaction)
    scale = gaps.abs().mean()
    assert gaps.std(1).min() > 0.3 * scale  # per user, across rows
    assert gaps.std(0).median() > 0.3 * scale  # per row, across users
    # the additive merge (the old default): one global difference vector for every row
    config = copy.deepcopy(ml100k["config"])  # a shallow copy would share (and change) the fixture's keys
    config["output_composition"], config["composition"] = "mean", "attention"
    additive = LSAN(config, ml100k["train"]._dataset).eval()
    gaps = _within_pair_gaps(additive, interaction)
    assert gaps.std(1).max() < 1e-4 * gaps.abs().mean()


def test_padded_positions_do_not_change_the_output(ml100k):
    model = ml100k["model"].eval()
    interaction = _test_batch(ml100k, 32)
    seq, length, slots = interaction["item_id_list"], interaction["item_length"], interaction["timestamp_slot_list"]
    assert (length < seq.shape[1]).any()
    with torch.no_grad():
        out = model(seq, length, slots)
        pad = torch.arange(seq.shape[1]).unsqueeze(0) >= length.unsqueeze(1)
        seq2, slots2 = seq.clone(), slots.clone()
        seq2[pad] = torch.randint(1, model.n_items, (int(pad.sum()),))
        slots2[pad] = torch.randint(0, 24, (int(pad.sum()),)).float()
        assert torch.allclose(model(seq2, length, slots2), out, atol=1e-5)


def test_hour_and_category_change_the_context_locally(ml100k):
    model = ml100k["model"].eval()
    interaction = _test_batch(ml100k, 8)
    seq, slots = interaction["item_id_list"], interaction["timestamp_slot_list"]
    with torch.no_grad():
        _, alpha = model.embed_items(seq, slots, return_weights=True)
        assert alpha.shape == (8, seq.shape[1], 3)  # attention_mult: the product and the two base vectors
        assert torch.allclose(alpha.sum(-1), torch.ones_like(alpha.sum(-1)), atol=1e-6)
        slots2 = slots.clone()
        slots2[:, 3] = (slots2[:, 3] + 12) % 24
        _, alpha2 = model.embed_items(seq, slots2, return_weights=True)
        changed = (alpha2 - alpha).abs().amax(-1) > 0
        assert changed[:, 3].any() and not changed[:, :3].any() and not changed[:, 4:].any()
        # the category of item i is the current category at i and the previous one at i + 1
        c = model.item2cat[seq]
        assert torch.equal(shift_right(c)[:, 1:], c[:, :-1]) and (shift_right(c)[:, 0] == 0).all()
        r = model.context_vectors(seq, slots)
        original = model.item2cat.clone()
        try:
            item = seq[0, 2].item()
            model.item2cat[item] = (model.item2cat[item] % model.num_categories) + 1
            r2 = model.context_vectors(seq[:1, :5], slots[:1, :5])
        finally:
            model.item2cat.copy_(original)
        where = [t for t in range(5) if not torch.allclose(r2[0, t], r[0, t])]
        expected = sorted({t for t in range(5) if seq[0, t] == item} | {t + 1 for t in range(4) if seq[0, t] == item})
        assert where == expected


def test_causal_and_bidirectional_masks_agree_at_one_layer(ml100k):
    config = copy.deepcopy(ml100k["config"])  # a shallow copy would share (and change) the fixture's keys
    config["attn_mask"] = "bidirectional"
    bidirectional = LSAN(config, ml100k["train"]._dataset).eval()
    model = ml100k["model"].eval()
    bidirectional.load_state_dict(model.state_dict())
    interaction = _test_batch(ml100k, 32)
    with torch.no_grad():
        assert torch.allclose(bidirectional.full_sort_predict(interaction), model.full_sort_predict(interaction),
                              atol=1e-5)


def test_joint_vocabulary_comes_from_the_training_split_only(ml100k):
    config = copy.deepcopy(ml100k["config"])  # a shallow copy would share (and change) the fixture's keys
    config["context_mode"] = "joint"
    train = ml100k["train"]._dataset
    model = LSAN(config, train)
    inter = train.inter_feat
    seq, n = inter["item_id_list"], inter["item_length"]
    c = model.item2cat[seq]
    keys = []
    valid = torch.arange(seq.shape[1]).unsqueeze(0) < n.unsqueeze(1)
    keys.append(model.context_embedding.keys(shift_right(c), c, inter["timestamp_slot_list"].long(),
                                             model.num_categories, 24)[valid])
    last = c.gather(1, (n - 1).unsqueeze(1)).squeeze(1)
    keys.append(model.context_embedding.keys(last, model.item2cat[inter["item_id"]], inter["timestamp_slot"].long(),
                                             model.num_categories, 24))
    assert torch.equal(model.context_embedding.vocabulary, torch.unique(torch.cat(keys)))
    full = model.context_embedding.table.weight.shape[0]
    assert full == len(model.context_embedding.vocabulary) + 1
    assert model.param_breakdown()["context_embedding"] == full * 16


# ---------------------------------------------------------------------------------------------------------------
# tiny generated dataset: parameter formulae, switches, errors, training
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    from tests.conftest import write_tiny_dataset

    path = write_tiny_dataset(str(tmp_path_factory.mktemp("lsan_data")))
    cache = {}

    def build(**overrides):
        cfg = {"dataset": "tiny", "data_path": path, "epochs": 1, "train_batch_size": 64, "state": "ERROR",
               "show_progress": False, "MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 8, "n_heads": 1,
               "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]}}
        cfg.update(overrides)
        key = repr(sorted(cfg.items()))
        if key not in cache:
            config, _, train, valid, test = _build("LSAN", "tiny", cfg)
            cache[key] = (config, train, valid, test)
        config, train, valid, test = cache[key]
        return config, train, test, LSAN(config, train._dataset)

    return build


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_parameter_breakdown_and_embedding_formula(tiny_build, m):
    config, train, _, model = tiny_build(compression_rate=m)
    v, d, t = model.n_items - 1, 8, 10
    parts = model.param_breakdown()
    assert sum(parts.values()) == sum(p.numel() for p in model.parameters())
    assert parts["item_embedding"] == (m + math.ceil(v / m)) * d
    # closed form of the rest: context attention + MLP, positions, emb LN, one twin layer (H=1, L=5, inner=D), bias
    h, k = 1, 5
    layer = h * k * d + 3 * h * (d * d + d) + (2 * h * d * d + d) + 2 * d + (2 * d * d + d + d) + 2 * d
    assert parts["context_composition"] == (2 * d * d + 2 * d) + (2 * d * d + d)
    assert parts["position_embedding"] == t * d
    assert parts["encoder"] == 2 * d + layer
    assert parts["output"] == v + 1
    report = model.benchmark_report()
    assert report["item_table_ratio"] == pytest.approx(parts["item_embedding"] / ((v + 1) * d))


def test_switches_full_embedding_factorized_context_sum_and_heads(tiny_build):
    _, _, _, full = tiny_build(embedding_type="full", use_context=False)
    assert full.param_breakdown()["item_embedding"] == full.n_items * 8
    assert full.param_breakdown()["context_embedding"] == 0 and full.param_breakdown()["context_composition"] == 0
    _, _, _, fact = tiny_build(context_mode="factorized")
    c = fact.num_categories
    assert c == 5 and fact.param_breakdown()["context_embedding"] == (2 * (c + 1) + 24) * 8
    _, _, _, sa_only = tiny_build(twin_mode="sa_only")
    assert sa_only.encoder.layers[0].twin.conv is None and sa_only.encoder.layers[0].twin.attention.n_heads == 2
    _, _, _, conv_only = tiny_build(twin_mode="conv_only")
    assert conv_only.encoder.layers[0].twin.attention is None
    _, _, _, out_full = tiny_build(output_layer="full")
    assert out_full.param_breakdown()["output"] == out_full.n_items * 8 + out_full.n_items


def test_qr_ablation_equals_the_plain_quotient_remainder_sum(tiny_build):
    _, _, _, model = tiny_build(composition="sum", use_context=False, compression_rate=3)
    seq = torch.tensor([[1, 4, 7, 40, 0]])
    e1, e2 = model.item_embedding.tables[0].weight, model.item_embedding.tables[1].weight
    k = (seq - 1).clamp(min=0)
    expected = (e1[k % 3] + e2[k // 3]) * (seq > 0).unsqueeze(-1)
    assert torch.allclose(model.embed_items(seq), expected)
    _, _, _, mean = tiny_build(composition="mean", use_context=False, compression_rate=3)
    mean.load_state_dict(model.state_dict())
    assert torch.allclose(mean.embed_items(seq), expected / 2)


@pytest.mark.parametrize("overrides", [
    {},
    {"embedding_type": "full", "use_context": False},
    {"use_context": False},
    {"twin_mode": "sa_only"},
    {"twin_mode": "conv_only", "conv_padding": "causal"},
    {"compression_rate": 3, "context_mode": "factorized", "composition_score": "dot"},
    {"output_layer": "full", "head_width": "split", "n_heads": 2, "n_layers": 2, "use_residual_ln": False},
    {"composition": "mult", "base_table_init": "ones"},
    {"composition": "attention", "output_composition": "mean", "context_mode": "joint"},
    {"composition": "attention_mult", "use_context": False},
])
def test_loss_is_finite_and_every_parameter_gets_a_gradient(tiny_build, overrides):
    _, train, test, model = tiny_build(**overrides)
    batch = next(iter(train))
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        assert scores.shape == (len(interaction), model.n_items)
        probe = copy.deepcopy(interaction)
        items = torch.randint(1, model.n_items, (len(interaction),))
        probe.interaction["item_id"] = items
        assert torch.allclose(model.predict(probe), scores[torch.arange(len(interaction)), items], atol=1e-5)


def test_logit_of_padding_is_masked_in_training(tiny_build):
    _, train, _, model = tiny_build()
    batch = next(iter(train))
    with torch.no_grad():
        model.output_bias_vector[0] = 1e4  # would dominate the softmax if the padding logit were not masked
        loss = model.calculate_loss(batch)
    assert loss < 20


def test_learns_a_deterministic_next_item(tiny_build):
    from recbole.data.interaction import Interaction

    _, _, _, model = tiny_build(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, use_context=False, hidden_size=16)
    torch.manual_seed(0)
    v = model.n_items - 1
    starts = torch.randint(1, v + 1, (64,))
    lengths = torch.randint(2, 11, (64,))
    seq = torch.zeros(64, 10, dtype=torch.long)
    for b in range(64):
        for t in range(lengths[b]):
            seq[b, t] = (starts[b] - 1 + t) % v + 1
    target = (seq.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)) % v + 1
    batch = Interaction({"item_id_list": seq, "item_length": lengths, "item_id": target})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(80):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        top = model.full_sort_predict(batch)[:, 1:].argmax(-1) + 1
    assert loss.item() < 0.2 and (top == target).float().mean() == 1.0


def _opposite_orders_task(n_histories=6):
    """Histories 2i and 2i+1 each have two equally likely next items, in quotient rows a_i and b_i (m=2), with
    opposite members: history 2i wants (a_i, first) and (b_i, second), history 2i+1 (a_i, second) and (b_i, first).
    An output whose within-row gap is ``h . g + beta_row`` cannot put both next items of both histories above their
    row mates (2i needs beta_b > beta_a, 2i+1 beta_a > beta_b)."""
    from recbole.data.interaction import Interaction

    def item(row, member):
        return 2 * row + member + 1

    seqs, targets, wanted = [], [], []
    for k in range(n_histories):
        i, flip = k // 2, k % 2
        rows = (10 + 2 * i, 11 + 2 * i)
        pair = {item(rows[0], flip), item(rows[1], 1 - flip)}
        history = [2 * k + 1, 2 * k + 2, 20 - k]
        for target in sorted(pair):
            seqs.append(history + [0] * 7)
            targets.append(target)
        wanted.append(pair)
    seq = torch.tensor(seqs)
    batch = Interaction({"item_id_list": seq, "item_length": torch.full((len(seqs),), 3),
                         "timestamp_slot_list": torch.zeros_like(seq).float(), "item_id": torch.tensor(targets)})
    return batch, wanted


def _learns_both_next_items(model, steps=300):
    batch, wanted = _opposite_orders_task()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        top2 = model.full_sort_predict(batch[::2])[:, 1:].topk(2).indices + 1
    return [set(t.tolist()) == w for t, w in zip(top2, wanted)]


def test_learns_opposite_next_items_within_a_quotient_row(tiny_build):
    """Capacity that the deterministic-next-item task cannot see: the default model learns it, the additive tied
    output (the old default) cannot."""
    overrides = dict(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, hidden_size=16)
    _, _, _, model = tiny_build(**overrides)
    assert model.num_real_items == 40 and model.item_embedding.table_sizes == [2, 20]
    torch.manual_seed(0)
    assert all(_learns_both_next_items(model))
    _, _, _, additive = tiny_build(output_composition="mean", composition="attention", **overrides)
    torch.manual_seed(0)
    assert not all(_learns_both_next_items(additive))


def test_missing_categories_is_a_clear_error_unless_allowed(tiny_build, tiny_data_path, tmp_path, capsys, caplog):
    from recbole_compress.cli import main

    no_items = {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    assert main(["--model=LSAN", "--dataset=tiny", f"--data_path={tiny_data_path}", "--epochs=1",
                 "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", f"--checkpoint_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert re.search("category_field.*use_context: False.*allow_missing_context", err), err
    assert "Traceback" not in err and not os.listdir(tmp_path)  # refused before any training
    with caplog.at_level(logging.WARNING):
        _, train, _, allowed = tiny_build(allow_missing_context=True, **no_items)
    assert "allow_missing_context" in caplog.text
    assert not allowed.has_categories and allowed.has_time_slots and torch.all(allowed.item2cat == 0)
    assert torch.isfinite(allowed.calculate_loss(next(iter(train))))
    with caplog.at_level(logging.INFO):
        _, _, _, no_context = tiny_build(use_context=False, **no_items)
    assert "without temporal context" in caplog.text
    assert not hasattr(no_context, "context_embedding")


def test_timestamps_without_time_of_day_are_logged(tmp_path, caplog):
    folder = tmp_path / "pos"
    folder.mkdir()
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, 30):
        for t in range(1, 9):
            lines.append(f"{u}\t{(u + t) % 20 + 1}\t{t}")
    (folder / "pos.inter").write_text("\n".join(lines) + "\n")
    (folder / "pos.item").write_text("item_id:token\tcategories:token\n" + "".join(
        f"{i}\tc{i % 3}\n" for i in range(1, 21)))
    cfg = {"data_path": str(tmp_path), "state": "ERROR", "hidden_size": 8, "n_heads": 1,
           "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]}}
    config, _, train, _, _ = _build("LSAN", "pos", cfg)
    with caplog.at_level(logging.WARNING):
        model = LSAN(config, train._dataset)
    assert "carry no time of day" in caplog.text and model.slots_in_training == 1


@pytest.mark.parametrize("arg,match", [
    ("--twin_mode=double", "twin_mode='double'.*one of twin, sa_only, conv_only"),
    ("--embedding_type=hashed", "embedding_type='hashed'.*one of compositional, full"),
    ("--compression_rate=0", "compression_rate=0.*an integer >= 1"),
    ("--base_table_sizes=[2,3]", "base_table_sizes=\[2, 3\].*product 6 must be at least the number of items"),
    ("--compression_rate=1000", r"compression_rate=1000.*not smaller than the \d+-item table"),
    ("--context_mode=both", "context_mode='both'.*one of joint, factorized"),
    ("--loss_type=BPR", "loss_type='BPR'.*one of CE"),
    ("--category_select=middle", "category_select='middle'"),
])
def test_bad_values_exit_2_before_training_naming_the_key(tiny_data_path, tmp_path, capsys, arg, match):
    from recbole_compress.cli import main

    assert main(["--model=LSAN", "--dataset=tiny", f"--data_path={tiny_data_path}", "--epochs=1", arg,
                 "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--use_context=False",
                 f"--checkpoint_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err and not os.listdir(tmp_path)


def test_objective_function_one_epoch_with_saved_checkpoint(tiny_data_path, tmp_path):
    from recbole_compress.quick_start import load_data_and_model, objective_function

    cfg = {"model": "LSAN", "dataset": "tiny", "data_path": tiny_data_path, "epochs": 1, "hidden_size": 8,
           "n_heads": 1, "train_batch_size": 64, "state": "ERROR", "show_progress": False,
           "checkpoint_dir": str(tmp_path / "saved"), "MAX_ITEM_LIST_LENGTH": 10,
           "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]}}
    result = objective_function(config_dict=cfg, saved=True)
    assert result["model"] == "LSAN"
    assert {"ndcg@10", "hit@10"} <= set(result["test_result"])
    assert os.path.isfile(result["checkpoint"])
    config, model, _, _, _, test_data = load_data_and_model(result["checkpoint"])
    assert isinstance(model, LSAN) and model.has_time_slots and model.has_categories
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(next(iter(test_data))[0])
    assert torch.isfinite(scores[:, 1:]).all()


def test_frequency_order_gives_the_most_frequent_training_items_rows_of_their_own(tiny_build):
    """``base_table_order: frequency``: counted on the training split, the most frequent items each have a quotient
    row of their own (the id order shares some), the scores stay consistent, and a reloaded state gives the same
    scores."""
    from recbole_compress.model.layers.frequency_blocks import item_frequencies

    config, train, test, model = tiny_build(use_context=False, compression_rate=3, base_table_order="frequency")
    counts = item_frequencies(train._dataset, model.n_items)
    quotient_rows = model.item_embedding.table_sizes[-1]
    top = torch.argsort(-counts[1:], stable=True)[:quotient_rows] + 1
    assert model.item_embedding.indices(top)[:, -1].unique().numel() == quotient_rows
    _, _, _, by_id = tiny_build(use_context=False, compression_rate=3)
    assert by_id.item_embedding.indices(top)[:, -1].unique().numel() < quotient_rows
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        items = torch.randint(1, model.n_items, (len(batch),))
        batch.update(type(batch)({model.ITEM_ID: items}))
        torch.testing.assert_close(model.predict(batch), scores[torch.arange(len(batch)), items])
    _, _, _, fresh = tiny_build(use_context=False, compression_rate=3, base_table_order="frequency")
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.full_sort_predict(batch), scores)


def test_cooccurrence_order_groups_the_most_frequent_training_transition(tiny_build):
    """``base_table_order: cooccurrence``: built from the training split, the two items of the most frequent
    transition (an item and the target after it) share a quotient row, and the model scores consistently."""
    config, train, test, model = tiny_build(use_context=False, base_table_order="cooccurrence")
    feat = train._dataset.inter_feat
    lengths = feat["item_length"].long()
    previous = feat["item_id_list"][torch.arange(len(lengths)), lengths - 1]
    pairs = torch.stack([torch.minimum(previous, feat["item_id"]), torch.maximum(previous, feat["item_id"])], 1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    unique, counts = torch.unique(pairs, dim=0, return_counts=True)
    top = unique[counts.argmax()]
    assert model.item_embedding.indices(top)[:, -1].unique().numel() == 1
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        assert torch.isfinite(model.full_sort_predict(batch)[:, 1:]).all()


def test_complementary_partition_keeps_the_rows_of_qr_and_scores(tiny_build):
    """``base_table_order: complementary``: the rows of the m = 2 quotient-remainder tables split into two
    consecutive (coprime) sizes, item k taking row k mod m_n in each; the model scores every item."""
    _, _, _, qr = tiny_build(use_context=False)
    config, train, test, model = tiny_build(use_context=False, base_table_order="complementary")
    sizes, qr_sizes = model.item_embedding.table_sizes, qr.item_embedding.table_sizes
    assert sizes[1] == sizes[0] + 1 and sum(sizes) <= sum(qr_sizes) and min(sizes) > qr_sizes[0]
    k = torch.arange(model.num_real_items)
    assert torch.equal(model.item_embedding.indices(k + 1), torch.stack([k % sizes[0], k % sizes[1]], 1))
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        assert torch.isfinite(model.full_sort_predict(batch)[:, 1:]).all()


def test_complementary_partition_refuses_base_table_sizes_with_a_common_divisor(tiny_data_path):
    from recbole_compress.run import make_config

    cfg = {"data_path": tiny_data_path, "use_context": False, "base_table_order": "complementary",
           "base_table_sizes": [6, 8], "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "state": "ERROR"}
    with pytest.raises(ConfigError, match=r"base_table_sizes.*pairwise coprime"):
        make_config("LSAN", "tiny", None, cfg, read_cmd_line=False)
