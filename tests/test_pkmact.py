"""PKMACT: padding and prefix invariance (causality), no L x L tensor, ablation parameter counts, config errors,
every switch, gradient paths, diagnostics, and a tiny saved run through objective_function."""
import os

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_compress.model.sequential_recommender.pkmact import PKMACT
from recbole_compress.profiling import count_parameters
from recbole_compress.quick_start import load_data_and_model, objective_function
from recbole_compress.scaling import build_model
from recbole_compress.preflight import run_keys
from recbole_compress.utils import ConfigError, get_model
from test_layers_dispatcher import ShapeRecorder

N_ITEMS = 50
TINY = {
    "hidden_size": 16, "inner_size": 32, "n_heads": 2, "n_layers": 2, "pkm_n_keys": 4, "pkm_topk": 3,
    "query_stride": 4,
}


def tiny_model(length=20, double=True, **overrides):
    cfg = dict(TINY)
    cfg.update(overrides)
    model, config = build_model("PKMACT", length, N_ITEMS, cfg)
    model = model.double() if double else model
    return model.eval(), config


def random_batch(batch, length, lengths=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS, (batch, length), generator=gen)
    if lengths is None:
        lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths = torch.as_tensor(lengths)
    padded = seq.masked_fill(torch.arange(length)[None, :] >= lengths[:, None], 0)
    return seq, padded, lengths


def interaction(model, item_seq, lengths, targets=None, negatives=None):
    data = {model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: lengths}
    if targets is not None:
        data[model.POS_ITEM_ID] = targets
    if negatives is not None:
        data[model.NEG_ITEM_ID] = negatives
    return Interaction(data)


VARIANTS = [
    {},
    {"pkm_mode": "learned"},
    {"query_net": "mean"},
    {"act_mode": "dispatch_only"},
    {"act_mode": "self_attention"},
    {"dispatcher_carry": "none"},
    {"pkm_heads": 2},
    {"pkm_weighting": "ste"},
    {"pkm_weighting": "none"},
    {"query_levels": 1},
    {"pkm_query_batchnorm": False},
]


# ----------------------------------------------------------------------------------------------------------------
# padding and causality
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_padded_positions_do_not_change_the_output(overrides):
    model, _ = tiny_model(**overrides)
    full, padded, lengths = random_batch(6, 20, lengths=[20, 1, 4, 5, 13, 19])
    # padded positions filled with random non-zero items instead of 0
    out_pad = model(padded, lengths)
    out_junk = model(full, lengths)
    torch.testing.assert_close(out_junk, out_pad, atol=1e-10, rtol=0)
    scores = model.full_sort_predict(interaction(model, full, lengths))
    assert scores.shape == (6, N_ITEMS)
    torch.testing.assert_close(scores, model.full_sort_predict(interaction(model, padded, lengths)), atol=1e-9,
                               rtol=0)


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_the_scored_output_is_the_full_encoding_at_the_last_position(overrides):
    """``forward`` runs the last block at the last valid position only; its output and the gradient of a loss on
    it equal those of the full encoding read at that position."""
    model, _ = tiny_model(**overrides)
    _, padded, lengths = random_batch(6, 20, lengths=[20, 1, 4, 5, 13, 19])
    weight = torch.randn(6, TINY["hidden_size"], dtype=torch.double)

    def run(fn):
        out = fn()
        (out * weight).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out, grads

    out, grads = run(lambda: model(padded, lengths))
    full, full_grads = run(lambda: model.gather_indexes(model.encode(padded, lengths), lengths - 1))
    torch.testing.assert_close(out, full)
    assert grads.keys() == full_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], msg=name)


def test_prediction_after_t_depends_only_on_the_prefix():
    """Spec 9.5.1: forward(seq[:t] zero-padded, t) == forward(seq with the later items in place, t) for every t."""
    model, _ = tiny_model()
    full, _, _ = random_batch(4, 20, lengths=[20, 20, 20, 20], seed=3)
    # one row per (sequence, t): the whole sequence with item_seq_len = t, and its prefix zero-padded
    rows = full.repeat_interleave(20, dim=0)
    lengths = torch.arange(1, 21).repeat(4)
    prefix = rows.masked_fill(torch.arange(20)[None, :] >= lengths[:, None], 0)
    torch.testing.assert_close(model(prefix, lengths), model(rows, lengths), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        model.full_sort_predict(interaction(model, prefix, lengths)),
        model.full_sort_predict(interaction(model, rows, lengths)),
        atol=1e-9, rtol=0,
    )
    # each prefix is encoded alone, so the batching above hides nothing
    torch.testing.assert_close(model(prefix[:1], lengths[:1]), model(prefix, lengths)[:1], atol=1e-10, rtol=0)
    # a change inside the prefix does change the prediction (the check can fail)
    changed = full.clone()
    changed[:, 4] = (changed[:, 4] % (N_ITEMS - 1)) + 1
    lengths = torch.full((4,), 10)
    assert (model(changed, lengths) - model(full, lengths)).abs().amax(-1).min() > 1e-6


def test_model_is_bidirectional_inside_the_prefix_and_trained_on_the_last_position_only(monkeypatch):
    """Spec 9.5.2: earlier hidden states see the last item (so an all-position loss would leak), and
    calculate_loss reads only position item_seq_len - 1."""
    model, _ = tiny_model()
    _, seq, lengths = random_batch(3, 20, lengths=[12, 12, 12], seed=4)
    changed = seq.clone()
    changed[:, 11] = (changed[:, 11] % (N_ITEMS - 1)) + 1
    hidden, hidden_changed = model.encode(seq, lengths), model.encode(changed, lengths)
    assert (hidden[:, :10] - hidden_changed[:, :10]).abs().amax() > 1e-6

    targets = torch.randint(1, N_ITEMS, (3,))
    batch = interaction(model, seq, lengths, targets)
    loss = model.calculate_loss(batch)
    original = model.encode

    def poisoned(item_seq, item_seq_len, return_aux=False, index=None):
        out = original(item_seq, item_seq_len).clone()
        keep = torch.arange(out.size(1))[None, :] == (item_seq_len - 1)[:, None]
        out = torch.where(keep.unsqueeze(-1), out, torch.randn_like(out) * 1e3)
        return out if index is None else out[torch.arange(out.size(0)), index].unsqueeze(1)

    monkeypatch.setattr(model, "encode", poisoned)
    torch.testing.assert_close(model.calculate_loss(batch), loss, atol=1e-10, rtol=0)


def test_output_does_not_depend_on_the_rest_of_the_batch():
    model, _ = tiny_model()
    _, seq, lengths = random_batch(5, 20, seed=5)
    together = model(seq, lengths)
    for i in range(5):
        torch.testing.assert_close(model(seq[i:i + 1], lengths[i:i + 1]), together[i:i + 1], atol=1e-10, rtol=0)


def test_edge_lengths_and_a_length_not_divisible_by_the_stride_are_finite():
    model, _ = tiny_model(length=50, query_stride=8)
    _, seq, lengths = random_batch(3, 50, lengths=[1, 50, 9])
    assert torch.isfinite(model(seq, lengths)).all()


# ----------------------------------------------------------------------------------------------------------------
# linear memory: no L x L tensor
# ----------------------------------------------------------------------------------------------------------------

def test_no_length_by_length_tensor_in_training_forward_and_backward():
    L, B = 97, 2  # larger than every width; the query network's first level has 25 chunks of 4
    model, _ = tiny_model(length=L, double=False)
    model.train()
    _, seq, lengths = random_batch(B, L, lengths=[L, 30], seed=6)
    batch = interaction(model, seq, lengths, torch.tensor([1, 2]))
    with ShapeRecorder() as rec:
        model.calculate_loss(batch).backward()
    assert len(rec.shapes) > 100
    biggest = max(rec.shapes, key=lambda s: s[2])
    assert biggest[2] < L * L, biggest
    assert not any(sum(dim == L for dim in shape) >= 2 for _, shape, _ in rec.shapes)
    assert any(shape == (B, 2, 3, L) for _, shape, _ in rec.shapes)  # aggregation map [B, h, m, L]
    # control: SASRec of the same size does allocate [B, h, L, L]
    cfg = {k: v for k, v in TINY.items() if k in ("hidden_size", "inner_size", "n_heads", "n_layers")}
    sasrec, _ = build_model("SASRec", L, N_ITEMS, cfg)
    with ShapeRecorder() as rec_sasrec:
        sasrec.calculate_loss(batch).backward()
    assert any(shape == (B, 2, L, L) for _, shape, _ in rec_sasrec.shapes)


# ----------------------------------------------------------------------------------------------------------------
# ablation switches and parameter accounting
# ----------------------------------------------------------------------------------------------------------------

def expected_parameters(L=20, n_layers=2, d=16, inner=32, n_keys=4, k=3, heads=1, stride=4, pkm_mode="pkm",
                        query_net="hierarchical", act_mode="dispatcher", carry="add", query_levels=0):
    """Closed-form parameter count of PKMACT (the doc's formula)."""
    mha = 4 * (d * d + d) + 2 * d  # Q, K, V, dense, LayerNorm
    ffn = d * inner + inner + inner * d + d + 2 * d
    total = N_ITEMS * d + L * d + 2 * d  # item and position embeddings, input LayerNorm
    levels, t = 0, L
    while t > 1:
        t, levels = -(-t // stride), levels + 1
    levels = query_levels or levels
    for block in range(n_layers):
        total += ffn
        if act_mode == "self_attention":
            total += mha
            continue
        if pkm_mode == "pkm":
            dk = d
            total += d * heads * dk + heads * dk + 2 * heads * dk  # query projection and BatchNorm
            total += heads * 2 * n_keys * (dk // 2) + n_keys * n_keys * d  # sub-keys and values
            if query_net == "hierarchical":
                total += levels * (stride * d * d + d + mha)
        else:
            total += heads * k * d
        total += 2 * mha if act_mode == "dispatcher" else mha + 2 * d
        if carry == "add" and block < n_layers - 1:
            total += ffn
    return total


@pytest.mark.parametrize("overrides,formula", [
    ({}, {}),
    ({"pkm_mode": "learned"}, {"pkm_mode": "learned"}),
    ({"query_net": "mean"}, {"query_net": "mean"}),
    ({"act_mode": "dispatch_only"}, {"act_mode": "dispatch_only"}),
    ({"act_mode": "self_attention"}, {"act_mode": "self_attention"}),
    ({"dispatcher_carry": "none"}, {"carry": "none"}),
    ({"pkm_heads": 2}, {"heads": 2}),
    ({"query_levels": 1}, {"query_levels": 1}),
    ({"n_layers": 3, "pkm_n_keys": 8}, {"n_layers": 3, "n_keys": 8}),
])
def test_parameter_count_matches_the_formula(overrides, formula):
    model, _ = tiny_model(double=False, **overrides)
    assert count_parameters(model) == expected_parameters(**formula)
    assert sum(model.param_breakdown().values()) == count_parameters(model)


def test_ablations_change_the_parameter_count_by_the_expected_amounts():
    d, inner, n_keys, k, layers = 16, 32, 4, 3, 2
    mha = 4 * (d * d + d) + 2 * d
    ffn = 2 * d * inner + inner + 3 * d
    levels = 3  # 20 -> 5 -> 2 -> 1 with stride 4
    full = count_parameters(tiny_model(double=False)[0])
    memory = d * d + d + 2 * d + n_keys * d + n_keys * n_keys * d  # query projection, BN, sub-keys, values
    query_network = levels * (4 * d * d + d + mha)
    assert full - count_parameters(tiny_model(double=False, pkm_mode="learned")[0]) == layers * (
        memory + query_network - k * d)
    assert full - count_parameters(tiny_model(double=False, query_net="mean")[0]) == layers * query_network
    assert full - count_parameters(tiny_model(double=False, act_mode="dispatch_only")[0]) == layers * 4 * (d * d + d)
    assert full - count_parameters(tiny_model(double=False, dispatcher_carry="none")[0]) == (layers - 1) * ffn


def test_self_attention_reference_has_exactly_sasrecs_parameters():
    model, _ = tiny_model(double=False, act_mode="self_attention")
    cfg = {k: v for k, v in TINY.items() if k in ("hidden_size", "inner_size", "n_heads", "n_layers")}
    sasrec, _ = build_model("SASRec", 20, N_ITEMS, cfg)
    assert count_parameters(model) == count_parameters(sasrec)


@pytest.mark.parametrize("overrides", VARIANTS + [{"loss_type": "BPR"}],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_every_switch_trains_one_step(overrides):
    model, _ = tiny_model(double=False, **overrides)
    model.train()
    _, seq, lengths = random_batch(8, 20, seed=7)
    batch = interaction(model, seq, lengths, torch.randint(1, N_ITEMS, (8,)), torch.randint(1, N_ITEMS, (8,)))
    loss = model.calculate_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    model.eval()
    assert model.predict(Interaction({**batch.interaction, model.ITEM_ID: batch[model.POS_ITEM_ID]})).shape == (8,)


def test_gradients_reach_keys_and_query_network_from_the_loss():
    model, _ = tiny_model(double=False, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    model.train()
    _, seq, lengths = random_batch(8, 20, seed=8)
    model.calculate_loss(interaction(model, seq, lengths, torch.randint(1, N_ITEMS, (8,)))).backward()
    for block in model.blocks:
        assert block.pkm.sub_keys.grad.abs().sum() > 0
        assert block.pkm.query_proj.weight.grad.abs().sum() > 0
        assert block.pkm.query_network.projections[0].weight.grad.abs().sum() > 0


def test_loss_decreases_on_a_fixed_batch():
    model, _ = tiny_model(double=False, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    model.train()
    _, seq, lengths = random_batch(16, 20, seed=9)
    batch = interaction(model, seq, lengths, torch.randint(1, N_ITEMS, (16,)))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_expert_statistics_count_every_selection_of_an_evaluation_pass():
    model, _ = tiny_model(double=False, pkm_heads=2)
    _, seq, lengths = random_batch(10, 20, seed=10)
    model.train()
    model(seq, lengths)
    model.eval()  # a new evaluation pass starts from zero
    model(seq, lengths)
    model(seq[:4], lengths[:4])
    for stats in model.expert_stats():
        assert int(stats["counts"].sum()) == 14 * 2 * 3
        assert 0 < stats["key_usage"] <= 1
    report = model.benchmark_report()
    assert report["memory_size"] == 16 and report["slots"] == 6 and "key_usage_block0" in report


# ----------------------------------------------------------------------------------------------------------------
# configuration errors (refused by the run layer's checks, before any data loads)
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,key", [
    ({"pkm_topk": 5, "pkm_n_keys": 4}, "pkm_topk"),
    ({"hidden_size": 18, "n_heads": 4}, "n_heads"),
    ({"pkm_key_dim": 7}, "pkm_key_dim"),
    ({"query_stride": 1}, "query_stride"),
    ({"act_mode": "linear"}, "act_mode"),
    ({"pkm_mode": "shared"}, "pkm_mode"),
    ({"query_net": "max"}, "query_net"),
    ({"dispatcher_carry": "concat"}, "dispatcher_carry"),
    ({"pkm_weighting": "sum"}, "pkm_weighting"),
    ({"pkm_heads": 0}, "pkm_heads"),
    ({"pkm_value_dropout": 1.5}, "pkm_value_dropout"),
])
def test_bad_settings_are_config_errors_naming_the_key(overrides, key):
    from recbole_compress.run import make_config

    with pytest.raises(ConfigError, match=key):
        make_config("PKMACT", "ml-100k", config_dict=dict(TINY, **overrides), read_cmd_line=False)


def test_config_error_stops_a_run_before_training(tiny_config):
    cfg = dict(tiny_config, model="PKM-ACT", pkm_n_keys=4, pkm_topk=6, query_stride=4)
    with pytest.raises(ConfigError, match="pkm_topk.*pkm_n_keys"):
        objective_function(config_dict=cfg, saved=False)
    assert not os.path.exists(cfg["checkpoint_dir"]) or not os.listdir(cfg["checkpoint_dir"])


def test_every_yaml_key_is_a_known_command_line_key():
    import yaml

    from recbole_compress import properties_path

    with open(properties_path("model", "PKMACT.yaml")) as f:
        keys = set(yaml.safe_load(f))
    assert {"pkm_topk", "pkm_n_keys", "act_mode", "dispatcher_carry", "query_stride"} <= keys
    assert keys <= run_keys("PKM-ACT")
    assert get_model("pkm-act").compressed_from is PKMACT and PKMACT.counterpart == "SASRec"


# ----------------------------------------------------------------------------------------------------------------
# RecBole integration: a tiny saved run, reloaded
# ----------------------------------------------------------------------------------------------------------------

def test_tiny_saved_run_through_objective_function_reloads(tiny_config):
    from recbole_compress.trainer import Trainer

    cfg = dict(tiny_config, model="PKM-ACT", epochs=2, n_layers=2, n_heads=2, pkm_n_keys=4, pkm_topk=2,
               query_stride=4)
    result = objective_function(config_dict=cfg, saved=True)
    assert result["model"] == "PKMACT"
    assert {"ndcg@10", "hit@10", "mrr@10"} <= set(result["test_result"])
    assert os.path.isfile(result["checkpoint"])
    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(result["checkpoint"])
    assert isinstance(model, PKMACT) and len(model.blocks) == 2
    reloaded = Trainer(config, model).evaluate(test_data, load_best_model=False, show_progress=False)
    for key, value in result["test_result"].items():
        assert reloaded[key] == pytest.approx(value, abs=1e-6), key
    batch = next(iter(test_data))[0]
    scores = model.full_sort_predict(batch)  # the batch's target column is never read
    assert scores.shape == (len(batch), dataset.item_num)
    assert 0 < model.benchmark_report()["key_usage_block0"] <= 1


def test_whole_model_flops_grow_linearly_unlike_sasrec():
    """Spec 9.3: default widths (d=64, 2 blocks, k=8, stride 8), one sequence; analytic growth 3.63 and 3.97."""
    from torch.utils.flop_counter import FlopCounterMode

    def forward_flops(name, length):
        model, _ = build_model(name, length, N_ITEMS)
        model.eval()
        seq = torch.randint(1, N_ITEMS, (1, length))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(seq, torch.tensor([length]))
        return counter.get_total_flops()

    pkm = [forward_flops("PKMACT", L) for L in (50, 200, 800)]
    sas = [forward_flops("SASRec", L) for L in (50, 200, 800)]
    assert pkm[1] / pkm[0] <= 4.2 and pkm[2] / pkm[1] <= 4.4
    assert sas[2] / sas[1] >= 6.0
    assert pkm[2] < 0.5 * sas[2]


def test_scaling_module_writes_table_json_and_plot(tmp_path):
    from recbole_compress import scaling

    out = tmp_path / "scaling"
    summary = scaling.main(["--models", "PKM-ACT,SASRec", "--lengths", "8,16", "--batch_size", "2", "--repeats", "1",
                            "--n_items", "30", "--output_dir", str(out), "--hidden_size=8", "--inner_size=16",
                            "--n_heads=1", "--n_layers=1", "--pkm_n_keys=4", "--pkm_topk=2", "--query_stride=4"])
    records = summary["records"]
    assert {(r["model"], r["length"]) for r in records} == {(m, L) for m in ("PKM-ACT", "SASRec") for L in (8, 16)}
    assert all(r["forward_ms"] > 0 and r["forward_peak_bytes"] > 0 for r in records)
    sasrec16 = next(r for r in records if r["model"] == "SASRec" and r["length"] == 16)
    assert sasrec16["forward_ms_ratio"] == 1.0 and "forward_ms_growth" in sasrec16
    for name in ("scaling.json", "scaling.md", "scaling.png"):
        assert (out / name).stat().st_size > 0
    with pytest.raises(ConfigError):
        scaling.main(["--models", "NoSuchModel", "--output_dir", str(out)])
