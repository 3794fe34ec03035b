"""Nothing lost: a killed run resumes to exactly the uninterrupted run's numbers; a refused checkpoint changes nothing;
every bad checkpoint gets its own message; every run gets its own log file."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from recbole_compress.checkpoint import last_checkpoint_name, load_checkpoint, save_checkpoint
from recbole_compress.errors import CheckpointError
from recbole_compress.quick_start import load_data_and_model, run_recbole_compress
from recbole_compress.run import build, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from recbole_compress.quick_start import run_recbole_compress
r = run_recbole_compress(config_dict=json.loads(sys.argv[1]), read_cmd_line=False)
print("RESULT " + json.dumps({"test": {k: float(v) for k, v in r["test_result"].items()},
                              "best_valid": float(r["best_valid_score"]), "checkpoint": r["checkpoint"]}))
"""


def _child(cfg):
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))


def _result(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


@pytest.fixture
def slow_config(tiny_config, tmp_path):
    """SASRec on the tiny data with batches of 4, so that an epoch lasts long enough to be killed in the middle."""
    return dict(tiny_config, model="SASRec", epochs=3, train_batch_size=4, hidden_size=8, inner_size=16, n_layers=1,
                n_heads=1, embedding_size=None, stopping_step=10, valid_metric="NDCG@10",
                checkpoint_dir=str(tmp_path / "saved"), strict_config_keys=False)


@pytest.mark.parametrize("compression", [{}, {"item_compression": "adaptive", "n_clusters": 2, "cluster_cutoffs": [10]},
                                         {"item_compression": "codebook", "num_codebooks": 2, "codebook_size": 4}],
                         ids=["plain", "adaptive", "codebook"])
def test_a_run_killed_in_epoch_two_resumes_to_the_uninterrupted_numbers(slow_config, tmp_path, compression):
    slow_config = dict(slow_config, **compression)  # issue 20: a compressed model resumes as the plain one does
    reference = _result(_child(dict(slow_config, checkpoint_dir=str(tmp_path / "reference"))))

    proc = _child(slow_config)
    folder = tmp_path / "saved"
    deadline = time.time() + 300
    last = None
    while time.time() < deadline and proc.poll() is None:  # kill (SIGKILL: no chance to clean up) during epoch 2
        found = [f for f in os.listdir(folder) if f.endswith("-last.pth")] if folder.exists() else []
        if found:
            last = str(folder / found[0])
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate()
    assert last is not None and proc.returncode == -signal.SIGKILL, "the run was not killed in time"
    assert load_checkpoint(last)["epoch"] < 2, "killed after the last epoch had started"

    resumed = _result(_child(dict(slow_config, resume=last)))
    assert resumed["test"] == reference["test"]
    assert resumed["best_valid"] == reference["best_valid"]
    assert os.path.basename(resumed["checkpoint"]) != os.path.basename(reference["checkpoint"])
    assert resumed["checkpoint"] == load_checkpoint(last)["best_model_file"]  # the same run's best file, continued


def test_a_finished_run_resumed_trains_nothing_and_keeps_its_best_model(tiny_config):
    result = run_recbole_compress("SASRec", config_dict=dict(tiny_config, epochs=2), read_cmd_line=False)
    last = last_checkpoint_name(result["checkpoint"])
    before = open(result["checkpoint"], "rb").read()
    again = run_recbole_compress("SASRec", config_dict=dict(tiny_config, epochs=2, resume=last), read_cmd_line=False)
    assert again["test_result"] == result["test_result"]
    assert open(result["checkpoint"], "rb").read() == before


def _as_stopped_after_epoch_zero(path, **changes):
    """Rewrite a finished run's last-epoch file as if its process had been stopped after epoch 0."""
    state = load_checkpoint(path)
    state.update(epoch=0, finished=False, **changes)
    save_checkpoint(state, path)


def test_a_resumed_training_counts_the_time_spent_before_the_stop(tiny_config):
    """What ``fit`` took is carried in every checkpoint: a resumed training reports the earlier process's seconds
    plus its own (here the earlier part is set to 1000 s, so that it cannot be confused with this process's)."""
    result = run_recbole_compress("SASRec", config_dict=dict(tiny_config, epochs=2), read_cmd_line=False)
    last = last_checkpoint_name(result["checkpoint"])
    assert 0 < load_checkpoint(last)["fit_seconds"] < 1000
    _as_stopped_after_epoch_zero(last, fit_seconds=1000.0)
    run = build(make_config("SASRec", config_dict=dict(tiny_config, epochs=2, resume=last), read_cmd_line=False))
    start = time.perf_counter()
    run.trainer.fit(run.data.train, run.data.valid, saved=True)
    took = time.perf_counter() - start
    assert 1000 < run.trainer.fit_seconds() <= 1000 + took
    assert load_checkpoint(last)["fit_seconds"] == pytest.approx(run.trainer.fit_seconds())


def test_a_run_resumed_after_its_phases_finished_reports_them_as_the_uninterrupted_run(tiny_config):
    """A teacher-student run resumed from its own file loads its finished teacher instead of training it, and
    reports the teacher's training as the uninterrupted run did (trained here, its epochs, best validation, what
    stopped it, seconds per epoch), not as a checkpoint it was given; the teacher's seconds come from the run's
    checkpoint, and the run's time before the stop includes them."""
    from recbole_compress.run import seconds_before_resume

    cfg = dict(tiny_config, model="EODRec", hidden_size=8, inner_size=8, n_heads=2, num_codebooks=2,
               codebook_size=8, teacher_epochs=3, teacher_stopping_step=1, epochs=2, code_fit_steps=5,
               embedding_size=None)
    first = build(make_config(config_dict=cfg, read_cmd_line=False))
    first.trainer.fit(first.data.train, first.data.valid, saved=True)
    uninterrupted = first.trainer.teacher_info
    assert uninterrupted["trained"] and uninterrupted["epochs_run"] >= 2
    last = first.trainer.last_model_file
    teacher_seconds = load_checkpoint(last)["phase_seconds"]["teacher_"]
    assert 0 < teacher_seconds < 500
    _as_stopped_after_epoch_zero(last, fit_seconds=1000.0, phase_seconds={"teacher_": 500.0})
    run = build(make_config(config_dict=dict(cfg, resume=last), read_cmd_line=False))
    assert seconds_before_resume(run.trainer) == 1500.0
    run.trainer.fit(run.data.train, run.data.valid, saved=True)
    resumed = run.trainer.teacher_info
    assert resumed["fit_seconds"] == 500.0
    for key in ("trained", "epochs_run", "stopped_by", "best_valid_score", "best_valid_result",
                "train_seconds_per_epoch", "checkpoint", "model"):
        assert resumed[key] == uninterrupted[key], key
    assert load_checkpoint(last)["phase_seconds"] == {"teacher_": 500.0}


def test_a_given_teacher_checkpoint_is_reported_as_loaded_not_trained(tiny_config):
    cfg = dict(tiny_config, model="EODRec", hidden_size=8, inner_size=8, n_heads=2, num_codebooks=2,
               codebook_size=8, teacher_epochs=1, epochs=1, code_fit_steps=5, embedding_size=None)
    first = run_recbole_compress(config_dict=cfg, read_cmd_line=False)
    teacher = load_checkpoint(first["checkpoint"])["config"]["teacher_checkpoint"]
    run = build(make_config(config_dict=dict(cfg, teacher_checkpoint=teacher), read_cmd_line=False))
    run.trainer.fit(run.data.train, run.data.valid, saved=True)
    assert run.trainer.teacher_info["stopped_by"] == "loaded" and not run.trainer.teacher_info["trained"]
    assert run.trainer.teacher_info["fit_seconds"] is None


def test_a_resumed_training_reports_seconds_per_epoch_over_all_its_epochs(tiny_config):
    result = run_recbole_compress("SASRec", config_dict=dict(tiny_config, epochs=2), read_cmd_line=False)
    last = last_checkpoint_name(result["checkpoint"])
    _as_stopped_after_epoch_zero(last, epoch_seconds=[1000.0])
    run = build(make_config("SASRec", config_dict=dict(tiny_config, epochs=2, resume=last), read_cmd_line=False))
    run.trainer.fit(run.data.train, run.data.valid, saved=True)
    assert len(run.trainer.epoch_seconds) == 2 and run.trainer.epoch_seconds[0] == 1000.0


def test_a_refused_resume_changes_nothing(tiny_config):
    cprec = run_recbole_compress("CpRec", config_dict=dict(tiny_config, epochs=1), read_cmd_line=False)["checkpoint"]
    before = open(cprec, "rb").read()
    config = make_config("SASRec", config_dict=dict(tiny_config, epochs=1), read_cmd_line=False)
    run = build(config)
    saved_file, start, best = run.trainer.saved_model_file, run.trainer.start_epoch, run.trainer.best_valid_score
    with pytest.raises(CheckpointError, match="holds a CpRec model, not SASRec"):
        run.trainer.resume_checkpoint(cprec, dataset=run.data.dataset)
    assert (run.trainer.saved_model_file, run.trainer.start_epoch, run.trainer.best_valid_score) == (
        saved_file, start, best)
    run.trainer.fit(run.data.train, run.data.valid, saved=True)
    assert open(cprec, "rb").read() == before  # the refused file was not overwritten by the next fit


def _saved(tiny_config):
    return run_recbole_compress("SASRec", config_dict=dict(tiny_config, epochs=1), read_cmd_line=False)["checkpoint"]


def test_every_bad_checkpoint_gets_its_own_message(tiny_config, tmp_path):
    good = _saved(tiny_config)
    data = open(good, "rb").read()
    cases = {}
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty.pth"] = "is empty"
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    cases["truncated.pth"] = r"truncated or damaged \(\d+ bytes\)"
    (tmp_path / "random.pth").write_bytes(os.urandom(4000))
    cases["random.pth"] = "is not a checkpoint"
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    cases["plain.pkl"] = "plain Python pickle"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(print))
    cases["evil.pkl"] = "pickled Python objects that loading would execute"
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(str(tmp_path / name))

    checkpoint = load_checkpoint(good)
    no_config = dict(checkpoint)
    del no_config["config"]
    save_checkpoint(no_config, str(tmp_path / "no_config.pth"))
    with pytest.raises(CheckpointError, match="records no configuration"):
        load_checkpoint(str(tmp_path / "no_config.pth"))

    shape = dict(checkpoint, state_dict=dict(checkpoint["state_dict"]))
    shape["state_dict"]["item_embedding.weight"] = torch.zeros(3, 5)
    save_checkpoint(shape, str(tmp_path / "shape.pth"))
    with pytest.raises(CheckpointError, match=r"tensor 'item_embedding.weight' has shape \(3, 5\)"):
        load_data_and_model(str(tmp_path / "shape.pth"))

    unverified = dict(checkpoint)
    del unverified["item_fingerprint"]
    save_checkpoint(unverified, str(tmp_path / "unverified.pth"))
    with pytest.raises(CheckpointError, match="records no item-id mapping"):
        load_data_and_model(str(tmp_path / "unverified.pth"))
    with pytest.raises(CheckpointError, match="records no item-id mapping"):
        run_recbole_compress("EODRec", config_dict=dict(tiny_config, teacher_checkpoint=str(tmp_path / "unverified.pth"),
                                                        hidden_size=8, num_codebooks=2, codebook_size=8),
                             read_cmd_line=False)


def test_two_runs_started_in_the_same_second_write_two_log_files(tiny_config, tmp_path):
    from recbole_compress.logs import start_logging, stop_logging

    config = make_config("SASRec", config_dict=tiny_config, read_cmd_line=False)
    first = start_logging(config, log_root=str(tmp_path / "log"))
    second = start_logging(config, log_root=str(tmp_path / "log"))
    stop_logging()
    assert first != second and os.path.isfile(first) and os.path.isfile(second)


def test_each_model_of_a_multi_model_run_logs_into_its_own_file(tiny_data_path, tmp_path):
    args = ["--model=SASRec,GRU4Rec", "--dataset=tiny", f"--data_path={tiny_data_path}", "--epochs=1",
            "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--MAX_ITEM_LIST_LENGTH=10",
            "--show_progress=False", f"--checkpoint_dir={tmp_path}/saved", "--hidden_size=8", "--embedding_size=8"]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_compress.py"), *args], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model in ("SASRec", "GRU4Rec"):
        files = os.listdir(tmp_path / "log" / model)
        assert len(files) == 1
        text = open(tmp_path / "log" / model / files[0]).read()
        assert "test result" in text and text.count("test result") == 1


def _ctrl_c(args, tmp_path, prefix=""):
    """The command line run with ``args`` and SIGINT a second after a ``<prefix>...-last.pth`` file appears in
    ``<tmp_path>/saved``: its stderr, after checking exit 130, no traceback and the resume command."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_recbole_compress.py"), *args,
                             "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--MAX_ITEM_LIST_LENGTH=10",
                             "--show_progress=False", f"--checkpoint_dir={tmp_path}/saved"], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT),
                            # a suite started in the background (``cmd &``) hands its children SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        saved = tmp_path / "saved"
        if saved.exists() and any(f.startswith(prefix) and f.endswith("-last.pth") for f in os.listdir(saved)):
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Continue it with:" in err, err[-2000:]
    return err


def test_ctrl_c_ends_with_the_resume_command_and_exit_130(tiny_data_path, tmp_path):
    """SIGINT during training: no traceback, the last complete epoch's file and the command that continues it."""
    err = _ctrl_c(["--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data_path}", "--epochs=200",
                   "--stopping_step=200", "--train_batch_size=8"], tmp_path)
    last = err.split("--resume=")[1].split()[0].strip("'\"")
    assert os.path.isfile(last) and load_checkpoint(last)["epoch"] >= 0


def test_ctrl_c_in_a_teacher_phase_names_the_phase_file_that_continues_it(tiny_data_path, tmp_path):
    """SIGINT while EODRec's teacher trains: exit 130, no traceback, and the command continues the teacher phase."""
    err = _ctrl_c(["--model=EODRec", "--dataset=tiny", f"--data_path={tiny_data_path}", "--teacher_epochs=200",
                   "--teacher_stopping_step=200", "--teacher_train_batch_size=8", "--hidden_size=8", "--inner_size=8",
                   "--n_heads=2", "--num_codebooks=2", "--codebook_size=8"], tmp_path, prefix="EODRecTeacher")
    command = err.split("Continue it with:")[1].strip()
    assert "--resume=" not in command and "--model=EODRec" in command
    last = command.split("--teacher_resume=")[1].split()[0].strip("'\"")
    assert load_checkpoint(last)["config"]["model"] == "EODRecTeacher"


def test_data_too_short_for_a_validation_and_a_test_item_is_refused_with_the_counts(tmp_path, capsys):
    from recbole_compress.cli import main

    folder = tmp_path / "short"
    folder.mkdir()
    rows = [f"{u}\t{u * 2 + k}\t{k}" for u in range(1, 30) for k in range(1 + u % 2)]
    (folder / "short.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
    code = main(["--model=SASRec", "--dataset=short", f"--data_path={tmp_path}", "--epochs=1",
                 "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", f"--checkpoint_dir={tmp_path}/saved",
                 "--user_inter_num_interval=[0,inf)", "--item_inter_num_interval=[0,inf)"])
    err = capsys.readouterr().err
    assert code == 2 and "no user has enough interactions" in err and "29 users, 44 interactions" in err, err
    assert "Traceback" not in err and not (tmp_path / "saved").exists()


def _killed_when(proc, folder, prefix, epoch_below=2):
    """SIGKILL ``proc`` as soon as a ``<prefix>...-last.pth`` file appears in ``folder``; returns that file."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = [f for f in os.listdir(folder) if f.startswith(prefix) and f.endswith("-last.pth")] \
            if folder.exists() else []
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            last = str(folder / found[0])
            assert load_checkpoint(last)["epoch"] < epoch_below, "killed after the phase's last epoch had started"
            return last
        time.sleep(0.02)
    proc.communicate()
    raise AssertionError("the run was not killed in time")


def test_a_run_killed_in_its_teacher_phase_resumes_the_phase_to_the_uninterrupted_numbers(tiny_config, tmp_path):
    """An EODRec run killed during its teacher's second epoch: ``teacher_resume`` continues the teacher from its last
    complete epoch, and the student then trains exactly as in the run that was never stopped."""
    cfg = dict(tiny_config, model="EODRec", hidden_size=8, inner_size=8, n_heads=2, num_codebooks=2, codebook_size=8,
               teacher_epochs=3, teacher_train_batch_size=4, teacher_stopping_step=10, epochs=2,
               learning_rate=0.01, code_fit_steps=20, code_fit_batch_size=32, embedding_size=None,
               checkpoint_dir=str(tmp_path / "saved"))
    reference = _result(_child(dict(cfg, checkpoint_dir=str(tmp_path / "reference"))))

    last = _killed_when(_child(cfg), tmp_path / "saved", "EODRecTeacher")
    assert not [f for f in os.listdir(tmp_path / "saved") if f.startswith("EODRec-")], "the student had started"

    resumed = _result(_child(dict(cfg, teacher_resume=last)))
    assert resumed["test"] == reference["test"] and resumed["best_valid"] == reference["best_valid"]
    teacher = load_checkpoint(resumed["checkpoint"])["config"]["teacher_checkpoint"]
    assert teacher == load_checkpoint(last)["best_model_file"]  # the same teacher run, continued


def test_a_run_killed_in_its_search_phase_resumes_both_phases_to_the_uninterrupted_numbers(tiny_config, tmp_path):
    """AdaRec killed during its supernet search: the finished teacher and the search continue from their last-epoch
    files (the supernet's projections to the teacher restore with it), and the run ends as if never stopped."""
    cfg = dict(tiny_config, model="AdaRec", embedding_size=8, num_cells=2, epochs=1, teacher_embedding_size=16,
               teacher_block_num=1, teacher_distill_tap_every=1, teacher_epochs=1, search_epochs=2,
               search_train_batch_size=4, search_stopping_step=10, checkpoint_dir=str(tmp_path / "saved"))
    for key in ("hidden_size", "inner_size", "n_layers", "n_heads"):
        cfg.pop(key)
    reference = _result(_child(dict(cfg, checkpoint_dir=str(tmp_path / "reference"))))

    search = _killed_when(_child(cfg), tmp_path / "saved", "AdaRecSearch")
    teacher = next(str(tmp_path / "saved" / f) for f in os.listdir(tmp_path / "saved")
                   if f.startswith("AdaRecNextItNetTeacher") and f.endswith("-last.pth"))
    resumed = _result(_child(dict(cfg, teacher_resume=teacher, search_resume=search)))
    assert resumed["test"] == reference["test"] and resumed["best_valid"] == reference["best_valid"]
    assert load_checkpoint(resumed["checkpoint"])["config"]["search_checkpoint"] == \
        load_checkpoint(search)["best_model_file"]  # the same search, continued


def test_a_phase_resume_of_another_model_is_refused_before_training(tiny_config, tmp_path):
    from recbole_compress.errors import ConfigError

    sasrec = run_recbole_compress("SASRec", "tiny", config_dict=dict(tiny_config), read_cmd_line=False)["checkpoint"]
    with pytest.raises(ConfigError, match=r"teacher_resume=.*holds a SASRec model, not EODRecTeacher"):
        make_config("EODRec", "tiny", None, dict(tiny_config, teacher_resume=sasrec), read_cmd_line=False)


def test_a_phase_resume_beside_a_given_phase_checkpoint_is_refused(tiny_config):
    from recbole_compress.errors import ConfigError

    teacher = run_recbole_compress("EODRecTeacher", "tiny", config_dict=dict(tiny_config, hidden_size=8, inner_size=8,
                                                                         n_heads=2), read_cmd_line=False)
    last = last_checkpoint_name(teacher["checkpoint"])
    with pytest.raises(ConfigError, match="teacher_resume=.*teacher_checkpoint=.*set only one"):
        make_config("EODRec", "tiny", None, dict(tiny_config, teacher_resume=last,
                                                 teacher_checkpoint=teacher["checkpoint"]), read_cmd_line=False)
