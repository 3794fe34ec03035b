"""AdaRec: teachers, search supernet, derived student, their trainers, and all phases in one run."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction

from recbole_compress.config import Config
from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS
from recbole_compress.model.layers.op_cost import op_cost_table
from recbole_compress.quick_start import load_data_and_model, run_recbole_compress
from recbole_compress.trainer import CheckpointError, load_checkpoint
from recbole_compress.trainer.adarec import AdaRecSearchTrainer, AdaRecTrainer
from recbole_compress.phases import phase_config
from recbole_compress.preflight import run_keys
from recbole_compress.run import Data, PhaseRunner, make_config, phase_train_data, prepare_config
from recbole_compress.utils import ConfigError, get_model

from conftest import write_tiny_dataset

GENOTYPE = [["cau_cnn_3"], ["skip_connect", "max_pool"], ["none", "std_cnn_5", "avg_pool"]]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops on a shared 2-core machine: one thread avoids the threads' contention (tens of times faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adarec_config(tiny_config, **extra):
    """A tiny all-phases AdaRec run: teacher 2 blocks x 16 (2 taps), supernet/student 2 cells x 8."""
    cfg = dict(tiny_config)
    for key in ("hidden_size", "inner_size", "n_layers", "n_heads"):
        cfg.pop(key)
    cfg.update(
        embedding_size=8, num_cells=2, epochs=1, teacher_embedding_size=16, teacher_block_num=1,
        teacher_distill_tap_every=1, teacher_epochs=1, search_epochs=2, search_train_batch_size=64,
    )
    cfg.update(extra)
    return cfg


def setup(model, cfg):
    config = Config(model=model, dataset=cfg["dataset"], config_dict=cfg, read_cmd_line=False)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, train, valid, test


def tiny_teacher(config, train):
    teacher_cfg = phase_config(config, "teacher_", "AdaRecNextItNetTeacher")
    torch.manual_seed(0)
    return get_model("AdaRecNextItNetTeacher")(teacher_cfg, train._dataset).eval()


def supernet_with_teacher(tiny_config, **extra):
    config, train, valid, test = setup("AdaRecSearch", adarec_config(tiny_config, **extra))
    teacher = tiny_teacher(config, train)
    torch.manual_seed(0)
    supernet = get_model("AdaRecSearch")(config, train._dataset)
    supernet.set_teacher(teacher)
    return supernet, teacher, config, train, valid, test


def fixed_weights(supernet, genotype=GENOTYPE):
    weights = []
    for node in genotype:
        w = torch.zeros(len(node), len(CANDIDATE_OPS))
        for i, name in enumerate(node):
            w[i, CANDIDATE_OPS.index(name)] = 1.0
        weights.append(w.requires_grad_())
    return weights


class StubDataset:
    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


# ---------------------------------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------------------------------

def test_parameter_counts_reproduce_the_papers_table_2():
    """ML-2K (7,871 items + padding, L = 50): NextItNet teacher 9.87M, SASRec teacher 2.57M, and the AdaRec-NextItNet
    student with three k=3 convolutions per cell 1.11M (Params in units of 2^20)."""
    counts = {}
    for model, extra in (
        ("AdaRecNextItNetTeacher", {}),
        ("AdaRecSASRecTeacher", {}),
        ("AdaRec", {"retrain_init": "random",
                    "adarec_arch": [["std_cnn_3"], ["cau_cnn_3", "skip_connect"], ["none", "dil_cnn_3", "max_pool"]]}),
    ):
        config = Config(model=model, dataset="ml-100k", config_dict=dict(extra, MAX_ITEM_LIST_LENGTH=50),
                        read_cmd_line=False)
        counts[model] = sum(p.numel() for p in get_model(model)(config, StubDataset(7872)).parameters())
    assert counts == {"AdaRecNextItNetTeacher": 10_354_384, "AdaRecSASRecTeacher": 2_694_344, "AdaRec": 1_168_972}


@pytest.mark.parametrize("teacher", ["AdaRecNextItNetTeacher", "AdaRecSASRecTeacher"])
def test_teachers_expose_embedding_taps_and_logits_and_are_causal(teacher):
    config = Config(model=teacher, dataset="ml-100k", read_cmd_line=False, config_dict={
        "MAX_ITEM_LIST_LENGTH": 8, "embedding_size": 16, "hidden_size": 16, "n_layers": 3, "block_num": 2,
        "use_rezero": False})
    torch.manual_seed(0)
    model = get_model(teacher)(config, StubDataset(30)).eval()
    seq = torch.randint(1, 30, (4, 8))
    lengths = torch.tensor([8, 8, 8, 8])
    emb, taps, logits = model.forward_distill(seq, lengths)
    assert emb.shape == (4, 8, 16) and logits.shape == (4, 30)
    assert len(taps) == model.num_distill_layers == (2 if teacher == "AdaRecNextItNetTeacher" else 3)
    for t in range(7):
        other = seq.clone()
        other[:, t + 1:] = torch.randint(1, 30, (4, 7 - t))
        _, taps2, _ = model.forward_distill(other, lengths)
        for a, b in zip(taps, taps2):
            torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])


def test_genotype_is_the_argmax_per_edge(tiny_config):
    supernet, *_ = supernet_with_teacher(tiny_config)
    expected = [["none"], ["skip_connect", "cau_cnn_5"], ["max_pool", "std_cnn_3", "none"]]
    with torch.no_grad():
        for alpha, node in zip(supernet.alphas, expected):
            alpha.copy_(torch.randn_like(alpha) * 0.1)
            for i, name in enumerate(node):
                alpha[i, CANDIDATE_OPS.index(name)] = 1.0 + i
    assert supernet.derive_genotype() == expected
    assert supernet.other_parameter() == {"genotype": expected}
    for w, node in zip(supernet.argmax_weights(), expected):
        assert [CANDIDATE_OPS[int(k)] for k in w.argmax(-1)] == node and torch.equal(w.sum(-1), torch.ones(len(node)))


# ---------------------------------------------------------------------------------------------------------------
# the search loss
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction, cost", [("forward", "absolute"), ("reverse", "absolute"), ("forward", "relative")])
def test_loss_parts_by_hand(tiny_config, direction, cost):
    cost_keys = (dict(efficiency_loss="absolute", efficiency_beta=8.0, op_cost_mode="reference") if cost == "absolute"
                 else dict(efficiency_loss="relative", efficiency_beta=0.3, op_cost_mode="fraction"))
    supernet, teacher, config, train, *_ = supernet_with_teacher(tiny_config, kd_kl_direction=direction, **cost_keys)
    supernet.eval()  # no dropout, BatchNorm running statistics, EMD weights kept
    batch = next(iter(train))
    weights = fixed_weights(supernet)
    supernet.sample_weights = lambda: weights
    parts = supernet.calculate_loss(batch)
    assert len(parts) == 5 and all(torch.isfinite(p) for p in parts)

    seq, lengths = batch["item_id_list"], batch["item_length"]
    _, outs = supernet._encode(seq, weights)
    s_logits = supernet.output(supernet.gather_indexes(outs[-1], lengths - 1))
    _, _, t_logits = teacher.forward_distill(seq, lengths)
    ce = F.cross_entropy(s_logits, batch["item_id"])
    if direction == "forward":  # KL(p_T || p_S)
        kl = F.kl_div(F.log_softmax(s_logits, -1), F.softmax(t_logits, -1), reduction="batchmean")
    else:
        kl = F.kl_div(F.log_softmax(t_logits, -1), F.softmax(s_logits, -1), reduction="batchmean")
    torch.testing.assert_close(parts[0], 0.5 * ce)
    torch.testing.assert_close(parts[2], 0.5 * kl)
    if cost == "absolute":
        costs = op_cost_table()
        chosen = sum(float(costs[CANDIDATE_OPS.index(n)]) for node in GENOTYPE for n in node)
        assert float(parts[4].detach()) == pytest.approx(8.0 * chosen, rel=1e-6)
    else:  # beta x task loss x the cell's cost fraction: cau_cnn_3, std_cnn_5, two pools, skip and none (width 8)
        k3 = (3 * 64 + 24) / (5 * 64 + 24)  # params and MACs of a kernel-3 conv over a kernel-5 one
        pool = 0.5 * 8 * 10 / ((5 * 64 + 24) * 10)  # no params; MACs d x L over the kernel-5 conv's
        fraction = (k3 + 1 + 2 * pool) / 6
        task = float(sum(parts[:4]))
        assert float(parts[4].detach()) == pytest.approx(0.3 * task * fraction, rel=1e-6)


def test_ablation_switches_zero_only_their_term(tiny_config):
    def parts(**extra):
        supernet, _, _, train, *_ = supernet_with_teacher(tiny_config, **extra)
        supernet.eval()
        supernet.sample_weights = lambda: fixed_weights(supernet)
        return torch.stack([p.detach() for p in supernet.calculate_loss(next(iter(train)))])

    base = parts()
    assert torch.all(base > 0)
    for index, key in enumerate(("w_ce", "w_kd_emb", "w_kd_pred", "w_kd_hidden")):
        switched = parts(**{key: 0.0})
        assert switched[index] == 0
        keep = [k for k in range(4) if k != index]
        torch.testing.assert_close(switched[keep], base[keep])
        # the relative cost term follows the task loss: the same fraction of it
        torch.testing.assert_close(switched[4] / switched[:4].sum(), base[4] / base[:4].sum())
    assert parts(efficiency_beta=0.0)[4] == 0
    no_kd = parts(kd_gamma=0.0)
    assert torch.all(no_kd[1:4] == 0) and no_kd[0] == pytest.approx(2 * float(base[0]))


@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_relative_cost_steps_do_not_depend_on_the_task_losss_scale(tiny_config, form):
    """Task loss x 10 (every task weight x 10, as a sum over positions instead of a mean would do): with the relative
    cost the architecture gradient is exactly 10x, so Adam takes the same step; the absolute cost's weight would mean
    something else (the balance shifts)."""
    steps, grads = [], []
    for scale in (1.0, 10.0):
        weights = {k: scale for k in ("w_ce", "w_kd_emb", "w_kd_pred", "w_kd_hidden")}
        supernet, *_, train, _, _ = supernet_with_teacher(tiny_config, efficiency_loss=form, efficiency_beta=0.5,
                                                          **weights)
        supernet.eval()  # no dropout, no EMD re-weighting: the two runs differ only by the scale
        optimizer = torch.optim.AdamW(supernet.arch_parameters(), lr=0.01)
        torch.manual_seed(1)
        sum(supernet.calculate_loss(next(iter(train)))).backward()
        grads.append(torch.cat([a.grad.flatten() for a in supernet.alphas]))
        optimizer.step()
        steps.append(torch.cat([a.detach().flatten() for a in supernet.alphas]))
    if form == "relative":
        torch.testing.assert_close(grads[1], 10 * grads[0])
        torch.testing.assert_close(steps[1], steps[0])
    else:
        assert not torch.allclose(grads[1], 10 * grads[0], rtol=1e-3)


def test_cost_term_moves_the_architecture_only(tiny_config):
    """The relative cost term stops the task loss's gradient: the network weights get the task's gradient whatever
    beta is; the architecture logits' gradient changes with it."""
    grads = {}
    for beta in (0.0, 2.0):
        supernet, *_, train, _, _ = supernet_with_teacher(tiny_config, efficiency_loss="relative", efficiency_beta=beta)
        supernet.eval()
        torch.manual_seed(1)
        sum(supernet.calculate_loss(next(iter(train)))).backward()
        grads[beta] = ([p.grad.clone() for p in supernet.weight_parameters() if p.grad is not None],
                       torch.cat([a.grad.flatten() for a in supernet.alphas]))
    for a, b in zip(grads[0.0][0], grads[2.0][0]):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(grads[0.0][1], grads[2.0][1])


def test_hidden_distances_read_valid_positions_only(tiny_config):
    supernet, teacher, _, train, *_ = supernet_with_teacher(tiny_config)
    batch = next(iter(train))
    seq, lengths = batch["item_id_list"], batch["item_length"]
    mask = seq != 0
    assert not mask.all()  # some padding to ignore
    _, t_h, _ = teacher.forward_distill(seq, lengths)
    s_h = [torch.randn(*seq.shape, 8) for _ in range(2)]
    d = supernet.hidden_distances(t_h, s_h, mask)
    assert d.shape == (len(t_h), 2)
    # one entry by hand: KL(softmax(teacher tap 1) || softmax(W_h cell 0)) averaged over valid positions
    p = F.softmax(t_h[1], -1)
    log_q = F.log_softmax(supernet.hidden_projection(s_h[0]), -1)
    by_hand = ((p * (p.log() - log_q)).sum(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(d[1, 0], by_hand)
    pad = (~mask).unsqueeze(-1)
    noisy_t = [h + 3.0 * torch.randn_like(h) * pad for h in t_h]
    noisy_s = [h + 3.0 * torch.randn_like(h) * pad for h in s_h]
    torch.testing.assert_close(supernet.hidden_distances(noisy_t, noisy_s, mask), d)


def test_training_input_never_contains_the_target(tiny_config):
    """Every training row is a prefix followed only by padding, and the supernet, its teacher and the student read the
    prefix alone: the target (POS_ITEM_ID) never enters a forward pass, so a non-causal op cannot see it."""
    supernet, teacher, config, train, *_ = supernet_with_teacher(tiny_config)
    for batch in train:
        seq, lengths = batch["item_id_list"], batch["item_length"]
        positions = torch.arange(seq.size(1))
        assert torch.all(seq[positions >= lengths.unsqueeze(1)] == 0)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
             for m in (supernet.item_embedding, teacher.item_embedding)]
    supernet.eval()
    batch = next(iter(train))
    weights = fixed_weights(supernet)
    supernet.sample_weights = lambda: weights
    first = supernet.calculate_loss(batch)
    inputs = list(seen)
    assert len(inputs) == 2 and all(torch.equal(x, batch["item_id_list"]) for x in inputs)
    # the targets changed -> the inputs and everything computed from them are unchanged; only the CE term moves (and
    # the relative cost term, a fraction of the task loss)
    seen.clear()
    other = Interaction({k: v.clone() for k, v in batch.interaction.items()})
    other.interaction["item_id"] = (batch["item_id"] % (supernet.n_items - 1)) + 1
    second = supernet.calculate_loss(other)
    assert all(torch.equal(a, b) for a, b in zip(seen, inputs))
    torch.testing.assert_close(torch.stack(first[1:4]), torch.stack(second[1:4]))
    assert not torch.isclose(first[0], second[0])
    for h in hooks:
        h.remove()


NON_CAUSAL = [["std_cnn_5"], ["max_pool", "dil_cnn_3"], ["avg_pool", "std_cnn_3", "dil_cnn_5"]]


@pytest.mark.parametrize("training", [False, True])
def test_last_valid_item_does_not_depend_on_the_padding_after_it(tiny_config, training):
    """A student of non-causal operations: the representation at each sequence's last item is the same whether the
    batch is padded to MAX_ITEM_LIST_LENGTH, cut to its longest sequence, or each sequence is run alone without
    padding (training mode with dropout off: the BatchNorm statistics exclude padding too)."""
    config, train, *_ = setup("AdaRec", adarec_config(tiny_config, adarec_arch=NON_CAUSAL, retrain_init="random",
                                                      dropout_prob=0.0, MAX_ITEM_LIST_LENGTH=12))
    torch.manual_seed(0)
    model = get_model("AdaRec")(config, train._dataset)
    model.train(training)
    batch = next(iter(train))
    seq, lengths = batch["item_id_list"][:16], batch["item_length"][:16]
    assert seq.size(1) == 12 and int(lengths.max()) < 12 and len(set(lengths.tolist())) > 2
    full = model.forward(seq, lengths)
    cut = model.forward(seq[:, : int(lengths.max())], lengths)
    torch.testing.assert_close(cut, full)
    if training:  # one sequence alone has other batch statistics: compare batches only
        return
    for b in range(len(seq)):
        n = int(lengths[b])
        torch.testing.assert_close(model.forward(seq[b:b + 1, :n], lengths[b:b + 1]), full[b:b + 1])


# ---------------------------------------------------------------------------------------------------------------
# search trainer
# ---------------------------------------------------------------------------------------------------------------

def test_search_step_updates_weights_and_alpha_jointly_with_a_frozen_teacher(tiny_config):
    supernet, teacher, config, train, *_ = supernet_with_teacher(tiny_config)
    trainer = AdaRecSearchTrainer(config, supernet)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    alpha_before = [a.detach().clone() for a in supernet.alphas]
    emb_before = supernet.item_embedding.weight.detach().clone()
    supernet.train()
    assert not teacher.training
    trainer._train_epoch(train, epoch_idx=5)
    assert supernet.temperature == pytest.approx(0.8)
    assert all(not torch.equal(a, b) for a, b in zip(alpha_before, supernet.alphas))
    assert not torch.equal(emb_before, supernet.item_embedding.weight)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k])
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in supernet.parameters()}
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not teacher_ids & optimised
    assert {id(p) for p in supernet.alphas} <= {id(p) for g in trainer.optimizer["arch"].param_groups for p in g["params"]}
    assert not any(k.startswith(("_teacher", "teacher")) for k in supernet.state_dict())
    assert trainer.optimizer["arch"].param_groups[0]["lr"] == config["arch_learning_rate"]
    # EMD layer weights moved from uniform and live in the state dict
    assert not torch.allclose(supernet.emd.student_weights, torch.full((2,), 0.5))
    assert "emd.student_weights" in supernet.state_dict() and "alphas.0" in supernet.state_dict()


def test_step_learning_rate_schedule(tiny_config):
    config, train, *_ = setup("AdaRecNextItNetTeacher", adarec_config(tiny_config, lr_decay_step=2, lr_decay_gamma=0.5,
                                                                      learning_rate=0.01))
    from recbole_compress.trainer.adarec import StepLRTrainer

    model = get_model("AdaRecNextItNetTeacher")(config, train._dataset)
    trainer = StepLRTrainer(config, model)
    for epoch, lr in ((0, 0.01), (1, 0.01), (2, 0.005), (5, 0.0025)):
        trainer._set_epoch_learning_rates(epoch)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr)


# ---------------------------------------------------------------------------------------------------------------
# all phases in one run, reuse of each phase's artefact
# ---------------------------------------------------------------------------------------------------------------

def test_all_phases_in_one_run_then_genotype_round_trip(tiny_config, tmp_path):
    cfg = adarec_config(tiny_config)
    config, train, valid, test = setup("AdaRec", cfg)
    torch.manual_seed(0)
    model = get_model("AdaRec")(config, train._dataset)
    assert model.genotype is None and len(model.cells) == 0
    trainer = AdaRecTrainer(config, model)
    trainer.phases = PhaseRunner(config, Data(train._dataset, train, valid, test))  # what run.build gives it
    trainer.fit(train, valid, saved=True)
    result = trainer.evaluate(test, load_best_model=True)
    assert 0 <= result["ndcg@10"] <= 1

    phases = trainer.phase_checkpoints
    assert set(phases) == {"teacher", "search", "genotype"} and all(os.path.isfile(p) for p in phases.values())
    with open(phases["genotype"]) as f:
        saved = json.load(f)
    genotype = saved["genotype"]
    assert model.genotype == genotype and saved["source"]["search_checkpoint"] == phases["search"]
    assert len(saved["alpha"]) == 3 and saved["op_names"] == list(CANDIDATE_OPS)

    # every trainable tensor of the supernet trains in the search, its projections to the teacher's sizes too
    searched = trainer.search_trainer
    stepped = searched.optimizer["weights"].state
    assert all(p in stepped for p in searched.model.weight_parameters())
    assert searched.model.emb_projection.weight in stepped and searched.model.hidden_projection.weight in stepped

    # the search checkpoint: alpha and EMD weights restore, its genotype is the argmax of its alpha
    search = load_checkpoint(phases["search"])
    assert search["other_parameter"]["genotype"] == genotype
    supernet = get_model("AdaRecSearch")(trainer.search_trainer.config, train._dataset)
    supernet.set_teacher(trainer.teacher)
    supernet.load_state_dict(search["state_dict"])
    assert supernet.derive_genotype() == genotype
    torch.testing.assert_close(supernet.emd.teacher_weights, search["state_dict"]["emd.teacher_weights"])

    # the student's checkpoint holds the genotype in its config and reloads exactly
    student_file = trainer.saved_model_file
    checkpoint = load_checkpoint(student_file)
    assert checkpoint["config"]["adarec_arch"] == genotype
    assert checkpoint["config"]["teacher_checkpoint"] == phases["teacher"]
    _, reloaded, _, _, _, test2 = load_data_and_model(student_file)
    batch = next(iter(test2))[0]
    model.eval(), reloaded.eval()
    with torch.no_grad():
        scores = reloaded.full_sort_predict(batch)
        torch.testing.assert_close(model.full_sort_predict(batch), scores)
        item_batch = Interaction({k: v.clone() for k, v in batch.interaction.items()})
        item_batch.interaction["item_id"] = torch.arange(len(batch)) % (model.n_items - 1) + 1
        torch.testing.assert_close(reloaded.predict(item_batch),
                                   scores[torch.arange(len(batch)), item_batch["item_id"]])

    # the constructor reads no file: the run layer resolves the JSON file into adarec_arch before the model is built
    cfg2 = adarec_config(tiny_config, adarec_arch_file=phases["genotype"])
    config2, train2, valid2, _ = setup("AdaRec", cfg2)
    assert get_model("AdaRec")(config2, train2._dataset).genotype is None
    prepare_config(config2)
    assert config2["adarec_arch"] == genotype and config2["search_checkpoint"] == phases["search"]
    # the JSON file rebuilds an AdaRec whose parameter names are the supernet's chosen ops
    student = get_model("AdaRec")(config2, train2._dataset)
    assert student.genotype == genotype
    names = set(student.state_dict())
    assert names <= set(search["state_dict"])
    edge_ops = {(n.split(".")[1], n.split(".")[3], n.split(".")[5]) for n in names if ".edges." in n}
    flat = [name for node in genotype for name in node]
    for cell, edge, op in edge_ops:
        assert flat[int(edge)] == op
    assert not any(n.startswith(("emb_projection", "hidden_projection", "emd", "alphas")) for n in names)
    copied, missing = student.load_supernet_weights(search["state_dict"])
    assert missing == [] and set(copied) == names
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, search["state_dict"][name])

    # genotype file + teacher checkpoint: teacher loaded (not trained), no search
    config2b = config2.__class__(model="AdaRec", dataset="tiny", read_cmd_line=False,
                                 config_dict=dict(cfg2, teacher_checkpoint=phases["teacher"]))
    prepare_config(config2b)
    trainer2 = AdaRecTrainer(config2b, student)
    trainer2.phases = PhaseRunner(config2b, Data(train2._dataset, train2, valid2, None))
    trainer2.fit(train2, valid2, saved=True)
    assert set(trainer2.phase_checkpoints) == {"teacher"} and trainer2.teacher_info["trained"] is False
    assert load_checkpoint(trainer2.saved_model_file)["config"]["adarec_arch"] == genotype  # rebuilds without the file

    # a checkpoint whose config names only the genotype file (saved before the run layer resolved it) still restores
    from recbole_compress.checkpoint import save_checkpoint

    old = load_checkpoint(student_file)
    old["config"] = dict(old["config"], adarec_arch=None, adarec_arch_file=phases["genotype"])
    save_checkpoint(old, str(tmp_path / "old.pth"))
    _, restored, *_ = load_data_and_model(str(tmp_path / "old.pth"))
    assert restored.genotype == genotype
    with torch.no_grad():
        torch.testing.assert_close(restored.eval().full_sort_predict(batch), scores)

    # a search checkpoint alone gives the genotype and the warm start
    config3, train3, *_ = setup("AdaRec", adarec_config(tiny_config, search_checkpoint=phases["search"]))
    prepare_config(config3)
    assert get_model("AdaRec")(config3, train3._dataset).genotype == genotype

    # preflight: a search_checkpoint must be a search phase's; a genotype file must hold a genotype for num_nodes
    with pytest.raises(ConfigError, match="search_checkpoint=.*holds a AdaRecNextItNetTeacher model, not AdaRecSearch"):
        make_config("AdaRec", "tiny", config_dict=adarec_config(tiny_config, search_checkpoint=phases["teacher"]),
                    read_cmd_line=False)
    with pytest.raises(ConfigError, match="adarec_arch_file=.*num_nodes=2: adarec_arch_file must be a JSON file"):
        make_config("AdaRec", "tiny", config_dict=adarec_config(tiny_config, adarec_arch_file=phases["genotype"],
                                                                num_nodes=2), read_cmd_line=False)
    make_config("AdaRec", "tiny", config_dict=cfg2, read_cmd_line=False)  # the file as written is fine
    # a search checkpoint made on another dataset: refused once that dataset loads, before any model is built
    from recbole_compress.run import build

    other_root = write_tiny_dataset(str(tmp_path / "other"), name="other", n_items=30, seed=3)
    other = adarec_config(dict(tiny_config, dataset="other", data_path=other_root), search_checkpoint=phases["search"])
    with pytest.raises(ConfigError, match="search_checkpoint=.*another item-id mapping"):
        build(make_config("AdaRec", "other", config_dict=other, read_cmd_line=False))


def test_run_recbole_compress_runs_every_phase(tiny_config):
    result = run_recbole_compress(model="AdaRec", config_dict=adarec_config(tiny_config, search_epochs=1),
                                  saved=True, read_cmd_line=False)
    assert result["model"] == "AdaRec" and 0 <= result["test_result"]["ndcg@10"] <= 1
    config = load_checkpoint(result["checkpoint"])["config"]
    assert os.path.isfile(config["search_checkpoint"]) and os.path.isfile(config["adarec_arch_file"])
    assert os.path.isfile(config["teacher_checkpoint"])


def test_teacher_from_another_dataset_is_refused(tiny_config, tmp_path):
    config, train, valid, _ = setup("AdaRec", adarec_config(tiny_config))
    trainer = AdaRecTrainer(config, get_model("AdaRec")(config, train._dataset))
    trainer.phases = PhaseRunner(config, Data(train._dataset, train, valid, None))
    trainer.prepare_teacher(train, valid)
    teacher_file = trainer.phase_checkpoints["teacher"]
    other_root = write_tiny_dataset(str(tmp_path / "other"), name="other", n_items=30, seed=3)
    other = adarec_config(dict(tiny_config, dataset="other", data_path=other_root), teacher_checkpoint=teacher_file)
    config_o, train_o, valid_o, _ = setup("AdaRec", other)
    trainer_o = AdaRecTrainer(config_o, get_model("AdaRec")(config_o, train_o._dataset))
    trainer_o.phases = PhaseRunner(config_o, Data(train_o._dataset, train_o, valid_o, None))
    with pytest.raises(CheckpointError, match="another item-id mapping"):
        trainer_o.fit(train_o, valid_o)
    assert "search" not in trainer_o.phase_checkpoints


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------

def test_teacher_without_distillation_outputs_is_refused_before_any_data_loads(tiny_config):
    from recbole_compress.run import make_config

    with pytest.raises(ConfigError, match="teacher_model='SASRec': must be one of AdaRecNextItNetTeacher"):
        make_config("AdaRec", "tiny", config_dict=adarec_config(tiny_config, teacher_model="SASRec"),
                    read_cmd_line=False)
    # the supernet has the student's structure
    with pytest.raises(ConfigError, match="search_embedding_size=32 .* must equal embedding_size=8"):
        make_config("AdaRec", "tiny", config_dict=adarec_config(tiny_config, search_embedding_size=32),
                    read_cmd_line=False)


@pytest.mark.parametrize("extra, message", [
    ({"retrain_init": "pretrained"}, "retrain_init='pretrained' \\(config_dict\\): must be one of supernet, random"),
    ({"adarec_arch": [["skip_connect"]], "retrain_init": "random"},
     "adarec_arch=\\[\\['skip_connect'\\]\\], num_nodes=3: adarec_arch must be a list .* of num_nodes lists"),
    ({"adarec_arch": "[[", "retrain_init": "random"}, "adarec_arch='\\[\\[', num_nodes=3: adarec_arch must be a list"),
    ({"adarec_arch": [["skip_connect"], ["skip_connect", "conv9"], ["none"] * 3], "retrain_init": "random"},
     "adarec_arch=.*each one of std_cnn_3, .*, none \\(found: adarec_arch: unknown operation .conv9.; allowed: "),
    ({"adarec_arch": GENOTYPE}, "retrain_init='supernet', search_checkpoint=None: .*no search_checkpoint is set"),
    ({"adarec_arch_file": "no_such_dir/arch.json"},
     "adarec_arch_file='no_such_dir/arch.json' \\(config_dict\\): must be the path of an existing file or None"),
    ({"loss_type": "BPR"}, "loss_type='BPR' \\(config_dict\\): must be one of CE"),
    ({"embedding_size": 0}, "embedding_size=0 \\(config_dict\\): must be an integer >= 1"),
    ({"pool_kernel": 2}, "pool_kernel=2: pool_kernel must be odd"),
    ({"dropout_prob": 1.0}, "dropout_prob=1.0 \\(config_dict\\): must be a number in \\[0, 1\\)"),
    ({"teacher_distill_tap_every": 3}, "teacher phase \\(AdaRecNextItNetTeacher\\): distill_tap_every=3, "
                                       "block_num=1, dilations=\\[1, 4\\]: distill_tap_every must divide"),
    ({"teacher_model": "AdaRecSASRecTeacher", "teacher_n_heads": 3},
     "teacher phase \\(AdaRecSASRecTeacher\\): hidden_size=128, n_heads=3: hidden_size must be a multiple"),
    ({"lr_decay_step": -1}, "lr_decay_step=-1 \\(config_dict\\): must be an integer >= 0 or None"),
])
def test_bad_configuration_is_refused_before_any_data_loads(tiny_config, extra, message):
    with pytest.raises(ConfigError, match=message):
        make_config("AdaRec", "tiny", config_dict=adarec_config(tiny_config, **extra), read_cmd_line=False)


@pytest.mark.parametrize("content, message", [
    # the message says which of the file's problems it has: not JSON, no genotype entry, or a wrong shape
    ("[[", "must be a JSON file with a 'genotype' entry (as the search phase writes): "),
    ("[[", "(found: Expecting value"),
    ('{"op_names": []}', "(found: " + "'" + "{path}' has no 'genotype' entry)"),
    ('{"genotype": [["skip_connect"]]}', "num_nodes lists"),
    (json.dumps({"genotype": GENOTYPE}), None),
    (json.dumps(GENOTYPE), None),  # a bare list of lists
])
def test_a_bad_genotype_file_exits_2_before_any_data_loads(tiny_config, tmp_path, monkeypatch, capsys, content,
                                                            message):
    from recbole_compress.cli import main
    import recbole_compress.run as run

    def no_data(*args, **kwargs):
        raise AssertionError("a dataset was loaded")

    monkeypatch.setattr(run, "create_dataset", no_data)
    monkeypatch.setattr("recbole.data.create_dataset", no_data)  # the early data-rule check's
    path = tmp_path / "arch.json"
    path.write_text(content)
    args = ["--model=AdaRec", "--dataset=tiny", f"--data_path={tiny_config['data_path']}",
            "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--MAX_ITEM_LIST_LENGTH=10",
            "--embedding_size=8", "--num_cells=2", f"--adarec_arch_file={path}", "--retrain_init=random",
            "--state=ERROR", "--show_progress=False", f"--checkpoint_dir={tmp_path}/saved"]
    if message is None:  # a good file passes every check: the run goes on to load the data
        with pytest.raises(AssertionError, match="a dataset was loaded"):
            main(args)
        return
    assert main(args) == 2
    err = capsys.readouterr().err
    message = message.replace("{path}", str(path))
    assert f"adarec_arch_file={str(path)!r}" in err and message in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "saved")


@pytest.mark.parametrize("key, value, allowed", [
    ("kd_kl_direction", "both", "one of forward, reverse"),
    ("op_cost_mode", "official", "one of reference, actual, fraction"),
    ("kd_gamma", 1.5, "a number in \\[0, 1\\]"),
    ("eval_arch", "best", "one of argmax, sample"),
    ("efficiency_loss", "log", "one of relative, absolute"),
    ("gumbel_tau_decay_epochs", 0, "an integer >= 1"),
    ("arch_learning_rate", 0, "a number > 0"),
])
def test_bad_search_configuration_is_refused_before_any_data_loads(tiny_config, key, value, allowed):
    with pytest.raises(ConfigError, match=f"search phase \\(AdaRecSearch\\): {key}={value!r}.*must be {allowed}"):
        make_config("AdaRec", "tiny", config_dict=adarec_config(tiny_config, **{f"search_{key}": value}),
                    read_cmd_line=False)


def test_phase_keys_are_prefixed_and_known(tiny_config):
    keys = run_keys("AdaRec")
    assert {"teacher_embedding_size", "teacher_block_num", "teacher_epochs", "search_epochs", "search_kd_gamma",
            "search_train_batch_size", "search_eval_arch", "teacher_checkpoint", "search_checkpoint"} <= keys
    assert "teacher_no_such_key" not in keys
    # the teacher's keys are those of the chosen teacher model: the default NextItNet teacher has no n_layers
    assert "teacher_n_layers" not in keys
    assert "teacher_n_layers" in run_keys("AdaRec", {"teacher_": "AdaRecSASRecTeacher"})
    from recbole_compress.commandline import check_override_keys

    check_override_keys(["AdaRec"], {"teacher_embedding_size": "64", "search_epochs": "3"})
    with pytest.raises(ConfigError, match="teacher_no_such_key"):
        check_override_keys(["AdaRec"], {"teacher_no_such_key": "1"})


def test_phase_configs_keep_student_defaults_out_and_use_their_own_batch_size(tiny_config):
    cfg = adarec_config(tiny_config)
    config, train, *_ = setup("AdaRec", cfg)
    assert config["learning_rate"] == 1e-4  # the student's YAML default
    teacher = phase_config(config, "teacher_", "AdaRecNextItNetTeacher")
    search = phase_config(config, "search_", "AdaRecSearch")
    assert teacher["learning_rate"] == 1e-3 and teacher["embedding_size"] == 16 and teacher["epochs"] == 1
    assert search["learning_rate"] == 5e-3 and search["epochs"] == 2 and search["arch_learning_rate"] == 2e-5
    config_lr, *_ = setup("AdaRec", dict(cfg, learning_rate=0.02))  # given by the user: every phase
    assert phase_config(config_lr, "teacher_", "AdaRecNextItNetTeacher")["learning_rate"] == 0.02
    search["train_batch_size"] = 16
    loader = phase_train_data(search, train)
    assert loader is not train and len(next(iter(loader))) == 16 and len(next(iter(train))) == 64
    assert phase_train_data(teacher, train) is train


def test_sasrec_teacher_drives_the_search(tiny_config):
    config, train, *_ = setup("AdaRecSearch", adarec_config(tiny_config, teacher_hidden_size=16, teacher_n_layers=3,
                                                            teacher_n_heads=2))
    teacher = get_model("AdaRecSASRecTeacher")(phase_config(config, "teacher_", "AdaRecSASRecTeacher"),
                                                train._dataset).eval()
    supernet = get_model("AdaRecSearch")(config, train._dataset)
    supernet.set_teacher(teacher)
    assert supernet.emd.n_teacher == 3 and supernet.hidden_projection.out_features == 16
    parts = supernet.calculate_loss(next(iter(train)))
    sum(parts).backward()
    assert all(a.grad is not None and torch.any(a.grad != 0) for a in supernet.alphas)
    assert supernet.hidden_projection.weight.grad is not None and not any(p.grad is not None for p in teacher.parameters())
