"""Distributed (DDP) training on CPU with gloo: through the command line as RecBole's run_recbole.py does, and with the
distillation trainer (a trainable teacher outside the student stays identical on every process)."""
import os
import socket

import pytest
import torch
from recbole.model.sequential_recommender import SASRec

from recbole_compress.config_keys import Phase
from recbole_compress.trainer.teacher import DistillationTrainer

# batch order fixed (no shuffle) and no dropout: a 2-process run then sees the same batches as a 1-process run (each
# process takes every other row of a batch) and must give the same test metrics up to rounding
DETERMINISTIC = ["--shuffle=False", "--hidden_dropout_prob=0.0", "--attn_dropout_prob=0.0"]
TINY = ["--epochs=2", "--hidden_size=8", "--inner_size=16", "--n_layers=1", "--n_heads=1",
        "--MAX_ITEM_LIST_LENGTH=10", "--train_batch_size=64", "--eval_batch_size=256", "--state=ERROR",
        "--log_wandb=False", "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _metrics(printed):
    lines = printed.splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| model")).strip("|").split("|")]
    row = [c.strip() for c in next(line for line in lines if line.startswith("| SASRec")).strip("|").split("|")]
    cells = dict(zip(header, row))
    return {"ndcg@10": float(cells["test NDCG@10"]), "hit@10": float(cells["test HIT@10"]),
            "mrr@10": float(cells["test MRR@10"]), "status": cells["status"]}


@pytest.mark.parametrize("block", [[], ["--item_compression=adaptive", "--n_clusters=2", "--cluster_cutoffs=[10]"],
                                   ["--item_compression=codebook", "--num_codebooks=2", "--codebook_size=4"]],
                         ids=["plain", "adaptive", "codebook"])
def test_two_process_cpu_run_through_the_cli_matches_one_process(tiny_data_path, tmp_path, capsys, block):
    """Plain and compressed (issue 20: the adaptive block trains and scores through its own softmax, the codebook
    block through fixed codes and shared codebooks): two processes give one process's numbers."""
    from recbole_compress.cli import main

    args = ["--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data_path}",
            f"--checkpoint_dir={tmp_path}"] + TINY + DETERMINISTIC + block
    assert main(args) == 0
    one = _metrics(capsys.readouterr().out)
    assert main(args + ["--nproc=2", f"--port={free_port()}"]) == 0
    two = _metrics(capsys.readouterr().out)
    assert two["status"] == "ok" and 0 < two["ndcg@10"] <= 1
    for key in ("ndcg@10", "hit@10", "mrr@10"):
        # the metrics are all-gathered over processes after RecBole rounds them to 4 decimals
        assert two[key] == pytest.approx(one[key], abs=5e-4), (one, two)
    # the one checkpoint is rank 0's: no second file with another name
    best = [p for p in tmp_path.glob("SASRec-*.pth") if not p.name.endswith("-last.pth")]
    assert len(best) == 2  # one per run (each also keeps its -last.pth, where it would continue)


def test_ddp_flags_are_checked(tiny_data_path, capsys):
    from recbole_compress.cli import main

    code = main(["--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data_path}", "--nproc=2",
                 "--world_size=3", "--group_offset=2"] + TINY)
    assert code == 2
    assert "group_offset (2) + nproc (2) exceeds world_size (3)" in capsys.readouterr().err


class TrainableTeacherStudent(SASRec):
    """A SASRec student whose teacher (held outside it, as in EODRec) keeps training on its own loss."""

    phases = (Phase("teacher_", "SASRec"),)

    def set_teacher(self, teacher):
        object.__setattr__(self, "teacher", teacher)

    def calculate_loss(self, interaction):
        return super().calculate_loss(interaction), self.teacher.calculate_loss(interaction)


class TrainableTeacherTrainer(DistillationTrainer):
    """Puts the teacher's parameters in the optimizer, as EODRec's trainer does for bidirectional distillation."""

    def _build_optimizer(self, **kwargs):
        teacher = getattr(self.model, "teacher", None)
        if teacher is not None:
            kwargs.setdefault("params", list(self.model.parameters()) + list(teacher.parameters()))
        return super()._build_optimizer(**kwargs)

    def prepare_teacher(self, *args, **kwargs):
        teacher = super().prepare_teacher(*args, **kwargs)
        self.optimizer = self._build_optimizer()
        return teacher


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _distillation_worker(rank, config_dict, queue):
    import torch.distributed as dist
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_compress.config import Config
    from recbole_compress.run import Data, PhaseRunner
    from recbole_compress.trainer import load_checkpoint

    torch.set_num_threads(1)
    config = Config(model=TrainableTeacherStudent, dataset="tiny", config_dict=dict(config_dict, local_rank=rank),
                    read_cmd_line=False)
    assert not config["single_spec"] and config["device"].type == "cpu"
    assert dist.get_backend() == "gloo"
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"] + rank, config["reproducibility"])
    student = TrainableTeacherStudent(config, train._dataset)
    trainer = TrainableTeacherTrainer(config, student)
    trainer.phases = PhaseRunner(config, Data(dataset, train, valid, test))
    trainer.fit(train, valid, saved=True)
    teacher_after_phase_one = load_checkpoint(trainer.phase_checkpoints["teacher"])["state_dict"]
    result = trainer.evaluate(test, load_best_model=True)

    def same_on_all_ranks(vector):
        gathered = [torch.zeros_like(vector) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, vector)
        return all(torch.equal(gathered[0], g) for g in gathered)

    report = {
        "student_same": same_on_all_ranks(_flat(student)),
        "teacher_same": same_on_all_ranks(_flat(student.teacher)),
        "teacher_trained_in_phase_two": not torch.equal(
            teacher_after_phase_one["item_embedding.weight"], student.teacher.item_embedding.weight.detach()
        ),
        "checkpoint": trainer.saved_model_file,
        "teacher_checkpoint": trainer.phase_checkpoints["teacher"],
        "test": dict(result),
    }
    dist.destroy_process_group()
    if rank == 0:
        queue.put(report)


def test_distillation_trainer_runs_in_two_cpu_processes(tiny_config, tmp_path):
    import os

    import torch.multiprocessing as mp

    config_dict = dict(tiny_config, epochs=2, teacher_epochs=1, loss_type="CE", hidden_dropout_prob=0.2,
                       attn_dropout_prob=0.2, hidden_act="gelu", layer_norm_eps=1e-12, initializer_range=0.02,
                       checkpoint_dir=str(tmp_path / "saved"), world_size=2, nproc=2, offset=0, ip="localhost",
                       port=free_port())
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_distillation_worker, args=(config_dict, queue), nprocs=2, join=True)
    report = queue.get()
    assert report["student_same"], "the student's weights drifted apart between processes"
    assert report["teacher_same"], "the trainable teacher (outside DDP) drifted apart between processes"
    assert report["teacher_trained_in_phase_two"]
    assert os.path.isfile(report["checkpoint"]) and os.path.isfile(report["teacher_checkpoint"])
    best = sorted(p for p in os.listdir(tmp_path / "saved") if not p.endswith("-last.pth"))
    assert best == sorted(
        os.path.basename(p) for p in (report["checkpoint"], report["teacher_checkpoint"])
    )  # rank 0 alone writes, under one name shared by all ranks
    assert 0 <= report["test"]["ndcg@10"] <= 1


def test_checkpoint_dir_exists_before_recbole_checks_it(tiny_config, tmp_path, monkeypatch):
    """RecBole's ``ensure_dir`` checks, then creates: DDP processes starting together on a fresh checkpoint_dir race
    on it (one fails with FileExistsError). Our trainer creates the folder first, so RecBole's check finds it."""
    import recbole.trainer.trainer as recbole_trainer
    from recbole.data import create_dataset, data_preparation

    from recbole_compress.run import make_config
    from recbole_compress.utils import get_trainer

    checkpoint_dir = str(tmp_path / "fresh" / "saved")
    config = make_config("SASRec", "tiny", None, dict(tiny_config, checkpoint_dir=checkpoint_dir),
                          read_cmd_line=False)
    train_data = data_preparation(config, create_dataset(config))[0]
    model = SASRec(config, train_data._dataset)
    seen = []
    original = recbole_trainer.ensure_dir

    def recording_ensure_dir(path):
        seen.append(os.path.isdir(path))
        original(path)

    monkeypatch.setattr(recbole_trainer, "ensure_dir", recording_ensure_dir)
    get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert seen and all(seen)
