"""EODRec and its teacher: the two stages, mixup, distillation losses, teachers, export, end to end."""
import os

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_compress.config import Config
from recbole_compress.export.eodrec import export_eodrec, load_on_device, size_report
from recbole_compress.model.layers.codebook_embedding import paper_compression_ratio
from recbole_compress.model.layers.distillation_losses import soft_label_kl
from recbole_compress.model.sequential_recommender.eodrec import EODRec, hot_items
from recbole_compress.model.sequential_recommender.eodrecteacher import EODRecTeacher
from recbole_compress.quick_start import run_recbole_compress
from recbole_compress.run import Data, PhaseRunner
from recbole_compress.trainer import CheckpointError, load_checkpoint
from recbole_compress.trainer.eodrec import EODRecTrainer
from recbole_compress.utils import ConfigError, get_trainer

from conftest import write_tiny_dataset

SMALL = {"hidden_size": 8, "inner_size": 8, "n_heads": 2, "num_codebooks": 2, "codebook_size": 8,
         "hidden_dropout_prob": 0.1, "attn_dropout_prob": 0.1, "teacher_epochs": 1, "epochs": 3,
         "learning_rate": 0.01, "codebook_learning_rate": 0.01, "code_fit_steps": 50, "code_fit_batch_size": 32}


def _cfg(tiny_config, **extra):
    cfg = dict(tiny_config)
    cfg.pop("embedding_size", None)
    cfg.update(SMALL)
    cfg.update(extra)
    return cfg


def _setup(cfg, model=EODRec):
    config = Config(model=model, dataset=cfg["dataset"], config_dict=cfg, read_cmd_line=False)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, train, valid, test


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A tiny EODRecTeacher checkpoint (hidden size 8) trained once for the module."""
    root = write_tiny_dataset(str(tmp_path_factory.mktemp("teacher_data")))
    cfg = {"dataset": "tiny", "data_path": root, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
           "epochs": 2, "train_batch_size": 64, "eval_batch_size": 256, "show_progress": False, "state": "ERROR",
           "checkpoint_dir": str(tmp_path_factory.mktemp("teacher_saved")), "MAX_ITEM_LIST_LENGTH": 10,
           "hidden_size": 8, "inner_size": 8, "n_heads": 2, "learning_rate": 0.01, "reproducibility": True}
    result = run_recbole_compress("EODRecTeacher", "tiny", config_dict=cfg, read_cmd_line=False)
    return result["checkpoint"], root


def _student(tiny_config, teacher_file, **extra):
    path, root = teacher_file
    cfg = _cfg(tiny_config, data_path=root, teacher_checkpoint=path, **extra)
    config, train, valid, test = _setup(cfg)
    model = EODRec(config, train._dataset)
    trainer = EODRecTrainer(config, model)
    trainer.phases = PhaseRunner(config, Data(train._dataset, train, valid, test))  # what run.build gives it
    return config, model, trainer, train, valid, test


# ----------------------------------------------------------------------------------------------------------------

def test_end_to_end_trains_teacher_then_student_with_saved_true(tiny_config):
    cfg = _cfg(tiny_config)
    result = run_recbole_compress("EODRec", "tiny", config_dict=cfg, read_cmd_line=False, saved=True)
    assert os.path.isfile(result["checkpoint"])
    checkpoint = load_checkpoint(result["checkpoint"])
    teacher_path = checkpoint["config"]["teacher_checkpoint"]
    assert os.path.isfile(teacher_path) and teacher_path != result["checkpoint"]
    assert load_checkpoint(teacher_path)["config"]["model"] == "EODRecTeacher"
    assert load_checkpoint(teacher_path)["config"]["hidden_size"] == 8  # teacher_hidden_size follows hidden_size
    # the best model is a stage-two model; the student's checkpoint never holds the teacher's weights
    assert int(checkpoint["state_dict"]["stage_flag"]) == 1
    assert not any(k.startswith("teacher") for k in checkpoint["state_dict"])
    assert "teacher_state_dict" in checkpoint  # the bidirectionally updated teacher, for resuming
    for metric in ("ndcg@10", "hit@10", "mrr@10"):
        assert 0.0 <= result["test_result"][metric] <= 1.0


def test_trainer_is_registered_and_model_declares_its_counterpart():
    assert get_trainer(None, "EODRec") is EODRecTrainer
    assert EODRec.counterpart == "teacher" and EODRec.phases[0].default_model == "EODRecTeacher"


def test_stage_two_freezes_codes_and_drops_the_encoder(tiny_config, teacher_file):
    config, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, epochs=2, pretrain_epochs=1)
    encoder_before = {k: v.clone() for k, v in model.code_encoder.state_dict().items()}
    trainer.fit(train, valid, saved=False)
    assert model.stage == "distill"
    codes = model.item_codebook.codes.clone()
    encoder_frozen = {k: v.clone() for k, v in model.code_encoder.state_dict().items()}
    assert any(not torch.equal(encoder_before[k], encoder_frozen[k]) for k in encoder_before)  # stage one trained it
    # the codes are the encoder's argmax when stage two started
    teacher = model.teacher
    books = model.item_codebook.codebooks.detach().clone()
    # stage-two optimiser: no encoder parameter, codebooks at codebook_learning_rate, the trainable teacher in it
    in_optimizer = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in model.code_encoder.parameters())
    assert in_optimizer[id(model.item_codebook.codebooks)]["lr"] == config["codebook_learning_rate"]
    assert all(id(p) in in_optimizer for p in teacher.parameters())
    trainer._train_epoch(train, 2)
    assert torch.equal(model.item_codebook.codes, codes)
    assert all(torch.equal(v, encoder_frozen[k]) for k, v in model.code_encoder.state_dict().items())
    assert not torch.equal(model.item_codebook.codebooks.detach(), books)


def test_stage_one_switch_and_early_stopping_reset(tiny_config, teacher_file):
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, pretrain_epochs=1,
                                                  code_collision_handling="none")
    trainer.prepare_teacher(train, valid)
    assert model.stage == "pretrain"
    assert all(not p.requires_grad for p in model.teacher.parameters())  # frozen in stage one
    trainer._train_epoch(train, 0)
    assert model.stage == "pretrain" and trainer.stopping_step > 10**6
    trainer.best_valid_score, trainer.cur_step = 0.5, 3
    # the codes frozen at the switch are the encoder's argmax on the (still frozen) teacher table
    expected = model.code_encoder.codes(model.teacher.item_embedding.weight.detach())
    trainer._train_epoch(train, 1)
    assert model.stage == "distill"
    assert trainer.best_valid_score == float("-inf") and trainer.cur_step == 0
    assert trainer.stopping_step == trainer.config["stopping_step"]
    assert all(p.requires_grad for p in model.teacher.parameters())
    assert torch.equal(model.item_codebook.codes.long(), expected)


def test_codes_are_fitted_to_the_teacher_table_before_the_first_student_epoch(tiny_config, teacher_file):
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file)
    encoder_before = {k: v.clone() for k, v in model.code_encoder.state_dict().items()}
    books_before = model.item_codebook.codebooks.detach().clone()
    trainer.prepare_teacher(train, valid)
    assert model.stage == "pretrain"
    assert any(not torch.equal(encoder_before[k], v) for k, v in model.code_encoder.state_dict().items())
    assert not torch.equal(model.item_codebook.codebooks.detach(), books_before)
    # without code fitting the encoder waits for the first epoch
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, code_fit_steps=0)
    encoder_before = {k: v.clone() for k, v in model.code_encoder.state_dict().items()}
    trainer.prepare_teacher(train, valid)
    assert all(torch.equal(encoder_before[k], v) for k, v in model.code_encoder.state_dict().items())


def test_fitted_codes_are_summarised_and_collisions_warned_about(tiny_config, teacher_file, caplog):
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, code_collision_warning=0.0)
    trainer.prepare_teacher(train, valid)
    summary = model.fit_codes()
    assert summary["steps"] == 50 and summary["items"] == model.n_items - 1
    assert summary["last_mse"] < summary["first_mse"]
    model.freeze_codes()
    stats = model.item_codebook.statistics()
    assert model.collision_share() == stats["items_sharing_a_code"] / stats["items"]
    model.set_stage("pretrain")
    with caplog.at_level("WARNING"):
        trainer.start_distillation(1)
    shared = [r for r in caplog.records if "share their code" in r.getMessage()]
    assert len(shared) == (1 if stats["items_sharing_a_code"] > 0 else 0)
    caplog.clear()
    model.code_collision_warning = 1.0
    model.set_stage("pretrain")
    with caplog.at_level("WARNING"):
        trainer.start_distillation(1)
    assert not [r for r in caplog.records if "share their code" in r.getMessage()]


def test_frozen_codes_are_made_unique_and_the_unshared_ones_kept(tiny_config, teacher_file):
    # 39 items, M=2, K=8: 64 codes, enough for every item; few code-fitting steps leave shared codes
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, code_fit_steps=300,
                                                  code_collision_handling="none")
    trainer.prepare_teacher(train, valid)
    # the encoder's argmax codes, fixed so that some items share a code and the others do not (a tiny encoder's
    # own codes may collapse onto a few codes, which leaves no unshared item to check)
    ids = torch.arange(model.n_items)
    encoder = torch.stack([ids % 8, (ids // 8) % 8], dim=1)
    encoder[2:6] = encoder[1]  # items 1-5 share one code; 6.. keep their own
    model.encoder_codes = lambda mode="argmax": encoder.clone()
    model.freeze_codes()
    assert model.item_codebook.statistics()["items_sharing_a_code"] > 0
    model.code_collision_handling = "repair"
    model.freeze_codes()
    stats = model.item_codebook.statistics()
    assert stats["items_sharing_a_code"] == 0 and stats["distinct_codes"] == model.n_items - 1
    report = model.code_assignment
    assert report["moved"] == report["before"]["collisions"] and report["after"] == stats
    rows = encoder.tolist()
    unshared = torch.tensor([i for i in range(1, len(rows)) if rows[1:].count(rows[i]) == 1], dtype=torch.long)
    assert len(unshared) > 0
    assert torch.equal(model.item_codebook.codes.long()[unshared], encoder[unshared])
    assert model.benchmark_report()["collision_share"] == 0.0
    # the least-squares refit lowers the reconstruction error of the teacher's table for the frozen codes
    x = model.teacher.item_embedding.weight.detach()[1:]
    error = lambda: float(((model.item_codebook.table().detach()[1:] - x) ** 2).sum(-1).mean())  # noqa: E731
    before = error()
    model.codebook_refit = True
    model.freeze_codes()
    assert error() < before


def test_mixup_is_used_in_training_only_and_annealed_to_the_composite_table(tiny_config, teacher_file):
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, mixup_anneal_epochs=None)
    trainer.prepare_teacher(train, valid)
    model.freeze_codes()
    x = model.teacher.item_embedding.weight.detach()
    e = model.item_codebook.table().detach()
    for eta in (1.0, 0.0, 0.8):
        model.mixup_eta = eta
        mixed, _ = model.training_tables()
        torch.testing.assert_close(mixed.detach(), eta * x + (1 - eta) * e)
    # annealing: linear in the training steps of stage two, down to the composite table itself
    model.mixup_anneal_epochs = 2
    model.set_mixup_schedule(4)
    batch = next(iter(train))
    model.train()
    etas = []
    for _ in range(10):
        etas.append(model.current_mixup_eta())
        model.calculate_loss(batch)
    assert etas[0] == pytest.approx(0.8) and etas[4] == pytest.approx(0.4) and etas[8] == pytest.approx(0.0)
    assert etas[9] == 0.0
    mixed, _ = model.training_tables()
    assert torch.equal(mixed.detach(), model.item_codebook.table().detach())
    model.mixup_anneal_epochs = 0
    model.mixup_progress.zero_()
    assert model.current_mixup_eta() == 0.0
    model.set_stage("pretrain")
    assert model.current_mixup_eta() == 0.8  # stage one keeps the paper's mixup
    model.set_stage("distill")
    e = model.item_codebook.table().detach()
    # evaluation: scores come from the codes alone, whatever the teacher's table holds
    batch = next(iter(train))
    model.eval()
    with torch.no_grad():
        before = model.full_sort_predict(batch)
        model.teacher.item_embedding.weight.mul_(3.0).add_(1.0)
        after = model.full_sort_predict(batch)
    torch.testing.assert_close(before, after)
    with torch.no_grad():
        theta = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    torch.testing.assert_close(before, theta @ e.t(), rtol=1e-5, atol=1e-5)


def _composite_cross_entropy(model, data):
    """Mean cross-entropy of the next item, scored from the codes alone (what evaluation and the export use)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data:
            scores = model.full_sort_predict(batch).view(-1, model.n_items)
            targets = batch[model.POS_ITEM_ID]
            total += float(torch.nn.functional.cross_entropy(scores, targets, reduction="sum"))
            count += len(targets)
    return total / count


def test_student_trained_on_its_composite_table_beats_one_trained_on_the_mixup(tiny_config, tmp_path):
    """Two students with the same teacher, codes, codebooks and initialisation; only the stage-two training table
    differs (the composite table, or the paper's constant mixup 0.8 X + 0.2 E). Scored on the composite table (what
    evaluation and the export use), the one trained on it must be better."""
    root = tiny_config["data_path"]
    teacher_cfg = {k: tiny_config[k] for k in ("dataset", "data_path", "load_col", "train_batch_size", "state",
                                               "show_progress", "MAX_ITEM_LIST_LENGTH", "reproducibility")}
    teacher_cfg.update({"hidden_size": 16, "inner_size": 16, "n_heads": 1, "epochs": 8, "learning_rate": 0.01,
                        "init_method": "recbole", "checkpoint_dir": str(tmp_path), "hidden_dropout_prob": 0.1,
                        "attn_dropout_prob": 0.1})
    teacher = run_recbole_compress("EODRecTeacher", "tiny", config_dict=teacher_cfg, read_cmd_line=False)
    results = {}
    for label, anneal in (("composite", 0), ("mixup", None)):
        _, model, trainer, train, _, _ = _student(
            tiny_config, (teacher["checkpoint"], root), hidden_size=16, inner_size=16, pretrain_epochs=0,
            mixup_eta=0.8, mixup_anneal_epochs=anneal, teacher_trainable=False, init_method="recbole",
            learning_rate=0.01, codebook_learning_rate=0.01, code_fit_steps=300,
        )
        init_seed(2020, True)
        trainer.prepare_teacher(train, None)
        for epoch in range(6):
            trainer._train_epoch(train, epoch)
        results[label] = _composite_cross_entropy(model, train)
    assert results["composite"] < results["mixup"] - 0.1, results


def test_losses_are_separate_and_finite_and_soft_loss_is_teacher_to_student(tiny_config, teacher_file):
    _, model, trainer, train, valid, _ = _student(
        tiny_config, teacher_file, teacher_trainable=False, soft_kd_reduction="sum"
    )
    trainer.prepare_teacher(train, valid)
    batch = next(iter(train))
    model.train()
    stage_one = model.calculate_loss(batch)
    assert len(stage_one) == 5 and all(torch.isfinite(l) for l in stage_one)
    assert stage_one[2] == 0 and stage_one[3] == 0 and stage_one[4] == 0  # no distillation in stage one
    model.freeze_codes()
    torch.manual_seed(0)
    losses = model.calculate_loss(batch)
    assert all(torch.isfinite(l) for l in losses)
    assert losses[2] > 0 and losses[3] > 0
    assert losses[4] == 0  # the teacher's own loss only while it is trainable
    # the soft loss is soft_weight * KL(p_teacher || p_student) on the model's own logits
    model.eval()  # no dropout: the student's logits are reproducible
    model.train(False)
    mixed, _ = model.training_tables()
    seq, seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        logits_s = model.forward(seq, seq_len, mixed) @ mixed.t()
        logits_t = model.teacher(seq, seq_len) @ model.teacher.item_embedding.weight.t()
        p_t, log_p_s = logits_t.softmax(-1), logits_s.log_softmax(-1)
        expected = (p_t * (p_t.log() - log_p_s)).sum()
        losses = model.calculate_loss(batch)
    assert losses[3].item() == pytest.approx(model.soft_weight * expected.item(), rel=1e-4)
    assert expected.item() == pytest.approx(soft_label_kl(logits_s, logits_t, reduction="sum").item(), rel=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_shared_log_softmaxes_give_each_loss_its_definition(tiny_config, teacher_file, temperature):
    """The student's cross-entropy, the teacher's own and the tempered soft loss share the catalogue-wide
    log-softmaxes where they can: each must still equal its definition, computed here independently."""
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, teacher_trainable=True,
                                                   kd_temperature=temperature, teacher_rec_weight=0.5)
    trainer.prepare_teacher(train, valid)
    batch = next(iter(train))
    model.freeze_codes()
    model.train(False)
    model.teacher.train(False)
    mixed, _ = model.training_tables()
    seq, seq_len, pos = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], batch[model.POS_ITEM_ID]
    with torch.no_grad():
        logits_s = model.forward(seq, seq_len, mixed) @ mixed.t()
        logits_t = model.teacher(seq, seq_len) @ model.teacher.item_embedding.weight.t()
        p_t = (logits_t / temperature).softmax(-1)
        kl = (p_t * (p_t.log() - (logits_s / temperature).log_softmax(-1))).sum(-1).mean() * temperature ** 2
        losses = model.calculate_loss(batch)
    assert losses[0].item() == pytest.approx(torch.nn.functional.cross_entropy(logits_s, pos).item(), rel=1e-5)
    assert losses[3].item() == pytest.approx(model.soft_weight * kl.item(), rel=1e-3)  # a small KL: float error
    assert losses[4].item() == pytest.approx(0.5 * torch.nn.functional.cross_entropy(logits_t, pos).item(), rel=1e-5)


def test_bidirectional_distillation_updates_the_teacher_only_when_trainable(tiny_config, teacher_file):
    for trainable in (False, True):
        _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, teacher_trainable=trainable)
        trainer.prepare_teacher(train, valid)
        trainer.start_distillation(1)
        teacher = model.teacher
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        batch = next(iter(train))
        model.train()
        trainer.optimizer.zero_grad()
        sum(model.calculate_loss(batch)).backward()
        trainer.optimizer.step()
        changed = any(not torch.equal(before[k], v) for k, v in teacher.state_dict().items())
        assert changed is trainable
        if not trainable:
            assert all(p.grad is None for p in teacher.parameters())
    # the soft loss alone already sends gradient to the (trainable) teacher: student -> teacher transfer
    _, model, trainer, train, valid, _ = _student(
        tiny_config, teacher_file, contrastive_weight=0.0, teacher_rec_weight=0.0, mixup_eta=0.0
    )
    trainer.prepare_teacher(train, valid)
    trainer.start_distillation(1)
    model.train()
    losses = model.calculate_loss(next(iter(train)))
    losses[3].backward()
    assert model.teacher.backbone.readout.f.weight.grad.abs().sum() > 0


def test_contrastive_recombination_and_degenerate_batches(tiny_config, teacher_file):
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file)
    trainer.prepare_teacher(train, valid)
    model.freeze_codes()
    x = model.teacher.item_embedding.weight.detach()
    mixed = x.clone()
    theta_s, theta_t = torch.randn(3, 8), torch.randn(3, 8)
    # only length-1 sessions: nothing to contrast, 0 without NaN
    seq = torch.tensor([[1, 0, 0], [2, 0, 0], [5, 0, 0]])
    assert model.contrastive_loss(seq, mixed, x, theta_s, theta_t).item() == 0.0
    # single-type sessions contrast the two models' session representations directly
    model.is_hot.zero_()
    seq = torch.tensor([[1, 2, 0], [3, 4, 5], [6, 7, 0]])
    from recbole_compress.model.layers.distillation_losses import info_nce

    expected = info_nce(theta_t, theta_s, model.cl_temperature)
    assert model.contrastive_loss(seq, mixed, x, theta_s, theta_t).item() == pytest.approx(expected.item(), rel=1e-6)
    # a mixed session depends on the teacher's cold items and the student's hot items through the swap
    model.is_hot[[1, 3, 6]] = True
    base = model.contrastive_loss(seq, mixed, x, theta_s, theta_t)
    x2 = x.clone()
    x2[2] += 1.0  # item 2 is cold in session 0: it enters through the teacher's cold readout
    assert model.contrastive_loss(seq, mixed, x2, theta_s, theta_t).item() != pytest.approx(base.item())


def test_hot_items_are_the_most_frequent_fifth():
    seqs = torch.tensor([[1, 1, 1, 2, 0], [2, 2, 3, 4, 0], [5, 6, 7, 8, 9], [10, 1, 2, 0, 0]])
    hot = hot_items(seqs, 12, 0.2)
    # counts: 1 x4, 2 x4, others <= 1; 10 items seen -> 2 hot
    assert hot.tolist() == [False, True, True] + [False] * 9
    assert not hot_items(seqs, 12, 0.0).any()


def test_fast_scoring_methods_agree_in_the_model(tiny_config, teacher_file):
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file)
    trainer.prepare_teacher(train, valid)
    model.freeze_codes()
    model.eval()
    batch = next(iter(valid))[0]
    scores = {}
    with torch.no_grad():
        for method in ("dense", "rebuild", "embedding_bag", "gather", "sparse"):
            model.score_method = method
            scores[method] = model.full_sort_predict(batch)
    for method, value in scores.items():
        torch.testing.assert_close(value, scores["dense"], rtol=1e-5, atol=1e-5)
    assert scores["dense"].shape == (len(batch), model.n_items)
    with torch.no_grad():
        p = model.predict(batch)
    assert p.shape == (len(batch),)


def test_export_reproduces_top10_and_reports_sizes(tiny_config, teacher_file, tmp_path):
    _, model, trainer, train, valid, test = _student(tiny_config, teacher_file)
    trainer.prepare_teacher(train, valid)
    model.freeze_codes()
    model.item_codebook.set_codes(torch.randint(0, 8, model.item_codebook.codes.shape))  # distinct-ish codes
    model.eval()
    result = export_eodrec(model, str(tmp_path / "device"))
    exported = load_on_device(str(tmp_path / "device"))
    scripted = torch.jit.load(result["scripted"])
    batch = next(iter(test))[0]
    with torch.no_grad():
        reference = model.full_sort_predict(batch)
        reference[:, 0] = -float("inf")
        top = reference.topk(10)
        ours = exported(batch[model.ITEM_SEQ], 10)
        theirs = scripted(batch[model.ITEM_SEQ], 10)
    torch.testing.assert_close(ours[0], top.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[1], top.indices) and torch.equal(theirs[1], top.indices)
    # both on-device scorers (pair on large catalogues, embedding_bag on small ones) give the same scores
    assert not exported.use_pair  # 41 items, pair tables of 64 columns
    with torch.no_grad():
        small = exported.scores(batch[model.ITEM_SEQ])
        exported.use_pair = True
        torch.testing.assert_close(exported.scores(batch[model.ITEM_SEQ]), small, rtol=1e-5, atol=1e-5)
    # the artifact holds codes (uint8), codebooks and the backbone only
    state = torch.load(result["artifact"], weights_only=True)
    assert state["codes"].dtype == torch.uint8 and state["codes"].shape == (model.n_items, 2)
    assert set(state) == {"format", "meta", "codes", "codebooks", "backbone"}
    assert set(state["backbone"]) == set(model.backbone.state_dict())  # no encoder, distillation head or teacher
    report = result["size_report"]
    backbone = sum(v.numel() * v.element_size() for v in model.backbone.state_dict().values())
    assert report["bytes_codes"] == model.n_items * 2
    assert report["bytes_codebooks"] == 2 * 8 * 8 * 4
    assert report["bytes_backbone"] == backbone
    assert report["bytes_export"] == model.n_items * 2 + 2 * 8 * 8 * 4 + backbone
    assert report["paper_compression_ratio"] == pytest.approx(paper_compression_ratio(model.n_items - 1, 8, 2, 8))
    assert report["bytes_item_table_dense"] == model.n_items * 8 * 4
    assert report["bytes_teacher"] == sum(v.numel() * v.element_size() for v in model.teacher.state_dict().values())
    assert report["whole_model_ratio_vs_teacher"] == pytest.approx(report["bytes_teacher"] / report["bytes_export"])
    from recbole_compress.benchmark import _model_extras

    assert _model_extras(model)["benchmark_report"]["bytes_export"] == report["bytes_export"]
    assert size_report(model) == {k: v for k, v in report.items() if not k.startswith("file_bytes")}
    # the checkpoint route gives the same artifact
    checkpoint_dir = tmp_path / "ck"
    trainer.saved_model_file = str(checkpoint_dir / "student.pth")
    trainer.item_fingerprint = None
    trainer._save_checkpoint(0, verbose=False)
    again = export_eodrec(trainer.saved_model_file, str(tmp_path / "device2"), script=False)
    with torch.no_grad():
        assert torch.equal(load_on_device(str(tmp_path / "device2"))(batch[model.ITEM_SEQ], 10)[1], top.indices)
    assert again["size_report"]["bytes_export"] == report["bytes_export"]


def test_teacher_from_another_dataset_is_refused(tiny_config, teacher_file, tmp_path):
    path, _ = teacher_file
    other_root = write_tiny_dataset(str(tmp_path / "other"), name="other", n_items=30, seed=3)
    cfg = _cfg(tiny_config, dataset="other", data_path=other_root, teacher_checkpoint=path)
    with pytest.raises(CheckpointError, match="another item-id mapping"):
        run_recbole_compress("EODRec", "other", config_dict=cfg, read_cmd_line=False)


def test_teacher_of_another_width_is_refused_clearly(tiny_config, teacher_file):
    path, root = teacher_file
    cfg = _cfg(tiny_config, data_path=root, teacher_checkpoint=path, hidden_size=16, inner_size=16)
    with pytest.raises(ConfigError, match="teacher_hidden_size"):
        run_recbole_compress("EODRec", "tiny", config_dict=cfg, read_cmd_line=False)


def test_a_recbole_sasrec_can_be_the_teacher(tiny_config):
    torch.autograd.set_detect_anomaly(False)  # an earlier test may have imported RecBole's models directly
    cfg = _cfg(tiny_config, teacher_model="SASRec", teacher_n_layers=1, teacher_inner_size=8, epochs=2)
    result = run_recbole_compress("EODRec", "tiny", config_dict=cfg, read_cmd_line=False)
    teacher = load_checkpoint(load_checkpoint(result["checkpoint"])["config"]["teacher_checkpoint"])
    assert teacher["config"]["model"] == "SASRec"
    assert teacher["state_dict"]["item_embedding.weight"].shape[1] == 8
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    # importing RecBole's sequential models runs SINE's set_detect_anomaly(True); the plugin undoes it
    assert not torch.is_anomaly_enabled()


def test_student_backbone_can_start_from_the_teachers(tiny_config, teacher_file):
    _, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, student_backbone_init="teacher")
    trainer.prepare_teacher(train, valid)
    trainer.start_distillation(1)
    theirs = model.teacher.backbone.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.backbone.state_dict().items())
    # copies, not shared tensors: a student step leaves the teacher's backbone alone
    model.backbone.readout.f.weight.data.add_(1.0)
    assert not torch.equal(model.backbone.readout.f.weight, model.teacher.backbone.readout.f.weight)
    model.teacher.__dict__["backbone"] = None  # a teacher without the student's backbone is refused clearly
    with pytest.raises(ConfigError, match="student_backbone_init"):
        model.init_backbone_from_teacher()


@pytest.mark.parametrize("key,value,allowed", [
    ("score_method", "fastest", "embedding_bag"),
    ("code_freeze_mode", "random", "argmax"),
    ("mse_reduction", "mean", "item_sum_mean"),
    ("mixup_eta", 1.5, "in \\[0, 1\\]"),
    ("soft_kd_reduction", "mean", "batchmean"),
    ("init_method", "xavier", "uniform"),
    ("code_fit_steps", -1, "an integer >= 0"),
    ("code_fit_batch_size", 0, "an integer >= 1 or None"),
    ("code_fit_tau_start", 0.0, "> 0 or None"),
    ("code_collision_warning", 2.0, "in \\[0, 1\\]"),
])
def test_bad_settings_are_refused_before_any_data_loads(tiny_config, key, value, allowed):
    from recbole_compress.run import make_config

    cfg = _cfg(tiny_config, **{key: value})
    with pytest.raises(ConfigError, match=f"{key}={value!r} \\(config_dict\\): must be .*{allowed}"):
        make_config("EODRec", config_dict=cfg, read_cmd_line=False)
    make_config("EODRec", config_dict=_cfg(tiny_config), read_cmd_line=False)  # the same run with a good value


@pytest.mark.parametrize("arg, named", [
    ("--codebook_size=1", "codebook_size=1 (command line): must be an integer >= 2"),
    ("--num_codebooks=0", "num_codebooks=0 (command line): must be an integer >= 1"),
    ("--n_heads=3", "hidden_size=8, n_heads=3: hidden_size must be a multiple of n_heads"),
    ("--mixup_anneal_epochs=-1", "mixup_anneal_epochs=-1 (command line): must be a number >= 0 or None"),
    ("--student_backbone_init=copy", "student_backbone_init='copy' (command line): must be one of random, teacher"),
    ("--pretrain_epochs=-1", "pretrain_epochs=-1 (command line): must be an integer >= 0"),
    ("--teacher_n_heads=3", "teacher phase (EODRecTeacher): hidden_size=8, n_heads=3"),
])
def test_the_command_line_exits_2_naming_the_key_before_any_data_loads(tiny_config, tmp_path, capsys, monkeypatch,
                                                                        arg, named):
    from recbole_compress.cli import main
    import recbole_compress.run as run

    def no_data(*args, **kwargs):
        raise AssertionError("a dataset was loaded")

    monkeypatch.setattr(run, "create_dataset", no_data)
    monkeypatch.setattr("recbole.data.create_dataset", no_data)  # the early data-rule check's
    args = ["--model=EODRec", "--dataset=tiny", f"--data_path={tiny_config['data_path']}",
            "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--MAX_ITEM_LIST_LENGTH=10",
            "--hidden_size=8", "--inner_size=8", "--n_heads=2", "--num_codebooks=2", "--codebook_size=4",
            "--state=ERROR", "--show_progress=False", f"--checkpoint_dir={tmp_path}/saved"]
    args = [a for a in args if a.split("=")[0] != arg.split("=")[0]] + [arg]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "saved")


def test_codebooks_as_large_as_the_catalogue_are_refused_once_it_loads(tiny_config, caplog):
    from recbole_compress.run import build, make_config

    # the tiny catalogue has 40 items: 2 codebooks of 20 vectors compress nothing (issue 13: 100000 vectors)
    for size in (20, 100000):
        config = make_config("EODRec", config_dict=_cfg(tiny_config, codebook_size=size), read_cmd_line=False)
        with pytest.raises(ConfigError, match=f"codebook_size={size}: 2 codebooks .* not fewer than the 40 items"):
            build(config)
    # 39 codewords for 40 items: at width 8 the codebooks and the codes outweigh the table, a warning only
    config = make_config("EODRec", config_dict=_cfg(tiny_config, num_codebooks=3, codebook_size=13),
                         read_cmd_line=False)
    with caplog.at_level("WARNING"):
        run = build(config)
    assert run.model.codebook_size == 13
    assert "codebook_size=13: the codebooks and codes (1,371 bytes) are not smaller than the 1,312-byte" in caplog.text
    caplog.clear()
    config = make_config("EODRec", config_dict=_cfg(tiny_config, codebook_size=4), read_cmd_line=False)
    with caplog.at_level("WARNING"):
        build(config)
    assert "codebook_size" not in caplog.text


def test_teacher_model_matches_its_formula(tiny_config):
    cfg = _cfg(tiny_config)
    config, train, _, _ = _setup(cfg, model=EODRecTeacher)
    teacher = EODRecTeacher(config, train._dataset).eval()
    batch = next(iter(train))
    with torch.no_grad():
        scores = teacher.full_sort_predict(batch)
        theta = teacher(batch[teacher.ITEM_SEQ], batch[teacher.ITEM_SEQ_LEN])
        # the readout ignores padded positions: changing what they hold changes nothing
        seq = batch[teacher.ITEM_SEQ]
        torch.testing.assert_close(scores, theta @ teacher.item_embedding.weight.t())
        pred = teacher.predict(batch)
    torch.testing.assert_close(pred, scores.gather(1, batch[teacher.ITEM_ID].unsqueeze(1)).squeeze(1))
    assert torch.equal(teacher.item_embedding.weight[0], torch.zeros(8))
    assert (seq == 0).any()


def test_command_line_accepts_teacher_phase_keys_and_runs(tiny_config, capsys):
    from recbole_compress.cli import main
    from recbole_compress.commandline import check_override_keys

    check_override_keys(["EODRec"], {"teacher_epochs": "1", "teacher_n_layers": "1", "teacher_learning_rate": "0.01",
                                     "teacher_init_range": "0.02", "mixup_eta": "0.5"})
    with pytest.raises(ConfigError, match="teacher_nonsense"):
        check_override_keys(["EODRec"], {"teacher_nonsense": "1"})
    # a teacher key is one the chosen teacher reads: SASRec's initializer_range, not EODRecTeacher's
    with pytest.raises(ConfigError, match="teacher_initializer_range"):
        check_override_keys(["EODRec"], {"teacher_initializer_range": "0.02"})
    check_override_keys(["EODRec"], {"teacher_model": "SASRec", "teacher_initializer_range": "0.02"})
    args = ["--model=EODRec", "--dataset=tiny", f"--data_path={tiny_config['data_path']}",
            "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--MAX_ITEM_LIST_LENGTH=10",
            "--train_batch_size=64", "--epochs=2", "--teacher_epochs=1", "--hidden_size=8", "--inner_size=8",
            "--num_codebooks=2", "--codebook_size=4", "--state=ERROR", "--show_progress=False",
            f"--checkpoint_dir={tiny_config['checkpoint_dir']}"]
    assert main(args) == 0
    assert "| EODRec |" in capsys.readouterr().out


def test_resuming_a_stage_two_checkpoint_restores_teacher_and_optimiser(tiny_config, teacher_file):
    config, model, trainer, train, valid, _ = _student(tiny_config, teacher_file, epochs=2)
    trainer.fit(train, valid, saved=True)
    saved = load_checkpoint(trainer.saved_model_file)
    assert int(saved["state_dict"]["stage_flag"]) == 1
    config2, model2, trainer2, train2, valid2, _ = _student(tiny_config, teacher_file, epochs=3)
    trainer2.resume_checkpoint(trainer.saved_model_file)
    assert model2.stage == "distill" and trainer2.start_epoch == saved["epoch"] + 1
    trainer2.prepare_teacher(train2, valid2)
    for key, value in saved["teacher_state_dict"].items():
        torch.testing.assert_close(model2.teacher.state_dict()[key], value)
    assert len(trainer2.optimizer.param_groups) == 3  # student, codebooks, teacher
    assert all(p.requires_grad for p in model2.teacher.parameters())
    assert len(trainer2.optimizer.state) > 0  # Adam moments restored
    trainer2.fit(train2, valid2, saved=False)
    assert torch.equal(model2.item_codebook.codes, model.item_codebook.codes)


def test_its_size_leaves_out_the_training_only_parts_which_scoring_never_reads(tiny_config, teacher_file):
    """The size a student is compared by is what it needs to recommend: scores are unchanged with the parts listed
    in training_only_modules broken, and on ml-100k the defaults give a student smaller than its teacher."""
    import copy

    from recbole_compress.profiling import count_parameters

    _, model, trainer, train, valid, test = _student(tiny_config, teacher_file, epochs=2, pretrain_epochs=1)
    trainer.fit(train, valid, saved=False)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        before = model.full_sort_predict(batch)
        broken = copy.deepcopy(model)
        for name in EODRec.training_only_modules:
            for p in getattr(broken, name).parameters():
                p.fill_(float("nan"))
        assert torch.equal(broken.full_sort_predict(batch), before)
    parts = sum(count_parameters(getattr(model, n)) for n in EODRec.training_only_modules)
    assert parts > 0 and count_parameters(model, inference=True) == count_parameters(model) - parts

    sizes = {}
    for cls in (EODRec, EODRecTeacher):
        config = Config(model=cls, dataset="ml-100k", config_dict={"state": "ERROR"}, read_cmd_line=False)
        train_ml, _, _ = data_preparation(config, create_dataset(config))
        sizes[cls.__name__] = count_parameters(cls(config, train_ml._dataset), inference=True)
    assert sizes["EODRec"] < sizes["EODRecTeacher"], sizes


# -- code_composition: pair_product ------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, named", [
    ({"score_method": "gather"}, "score_method must be one of"),
    ({"codebook_refit": True}, "codebook_refit .* needs code_composition 'sum'"),
    ({"num_codebooks": 1}, "num_codebooks >= 2"),
])
def test_pair_product_settings_are_checked_before_any_data_loads(tiny_config, extra, named):
    from recbole_compress.run import make_config

    with pytest.raises(ConfigError, match=named):
        make_config("EODRec", config_dict=_cfg(tiny_config, code_composition="pair_product", **extra),
                    read_cmd_line=False)
    make_config("EODRec", config_dict=_cfg(tiny_config, code_composition="pair_product"), read_cmd_line=False)


def test_pair_product_student_learns_its_factors_and_exports_them(tiny_config, tmp_path):
    cfg = _cfg(tiny_config, code_composition="pair_product", epochs=2)
    result = run_recbole_compress("EODRec", "tiny", config_dict=cfg, read_cmd_line=False, saved=True)
    checkpoint = load_checkpoint(result["checkpoint"])
    factors = checkpoint["state_dict"]["item_codebook.pair_factors"]
    assert factors.shape == (1, 2, 8, 8) and factors[:, 1].abs().max() > 0  # R starts at 0: it was trained
    exported = export_eodrec(result["checkpoint"], str(tmp_path / "device"))
    state = torch.load(exported["artifact"], weights_only=True)
    torch.testing.assert_close(state["pair_factors"], factors)
    assert state["meta"]["code_composition"] == "pair_product"
    report = exported["size_report"]
    assert report["bytes_codebooks"] == (2 * 8 * 8 + 2 * 8 * 8) * 4
    n_items = state["codes"].shape[0]
    assert report["paper_compression_ratio"] == pytest.approx(
        paper_compression_ratio(n_items - 1, 8, 2, 8, extra_floats=128))
    # the on-device model (eager and scripted) gives the trained model's top 10
    teacher = (checkpoint["config"]["teacher_checkpoint"], cfg["data_path"])
    config, model, trainer, train, valid, test = _student(tiny_config, teacher, code_composition="pair_product")
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        reference = model.full_sort_predict(batch)
        reference[:, 0] = -float("inf")
        top = reference.topk(10)
        ours = load_on_device(str(tmp_path / "device"))(batch[model.ITEM_SEQ], 10)
        theirs = torch.jit.load(exported["scripted"])(batch[model.ITEM_SEQ], 10)
    torch.testing.assert_close(ours[0], top.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[1], top.indices) and torch.equal(theirs[1], top.indices)
    # the factors learn at the codebooks' rate
    groups = {g.get("name"): g for g in trainer.param_groups()}
    assert any(p is model.item_codebook.pair_factors for p in groups["codebooks"]["params"])


def test_a_checkpoint_saved_before_code_composition_existed_restores_as_a_sum(tiny_config):
    from recbole_compress.checkpoint import config_to_plain
    from recbole_compress.config import config_from_plain

    result = run_recbole_compress("EODRec", "tiny", config_dict=_cfg(tiny_config, epochs=1), read_cmd_line=False,
                                  saved=True)
    plain = load_checkpoint(result["checkpoint"])["config"]
    old = {k: v for k, v in plain.items() if k not in ("code_composition", "num_codebooks")}
    config = config_from_plain(old)
    assert config["code_composition"] == "sum"  # the neutral value: the model as it was before the key
    assert "num_codebooks" not in config.final_config_dict  # a key without a neutral value is not invented
    assert config_to_plain(config_from_plain(plain))["code_composition"] == "sum"
