"""Every check before any work: a bad key or value is refused with exit code 2, one message naming the key, its value
and what is allowed, before any dataset loads and before any model of a multi-model run trains."""
import os
import subprocess
import sys
import time

import pytest

from recbole_compress.cli import main
from recbole_compress.config_keys import Key, Relation, value_problems
from recbole_compress.errors import ConfigError
from recbole_compress.preflight import run_keys
from recbole_compress.run import make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(tiny_data_path, tmp_path, but=""):
    """The tiny data's arguments, without the key of ``but``."""
    args = ["--dataset=tiny", f"--data_path={tiny_data_path}", "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
            "--MAX_ITEM_LIST_LENGTH=10", "--show_progress=False", f"--checkpoint_dir={tmp_path}/saved", "--epochs=1"]
    return [a for a in args if not (but and a.startswith(but.split("=")[0] + "="))]


@pytest.mark.parametrize("arg, key, allowed", [
    ("--epochs=0", "epochs=0", "an integer >= 1"),
    ("--epochs=1.5", "epochs=1.5", "an integer >= 1"),
    ("--learning_rate=-1", "learning_rate=-1", "a number > 0"),
    ("--MAX_ITEM_LIST_LENGTH=0", "MAX_ITEM_LIST_LENGTH=0", "an integer >= 1"),
    ("--valid_metric=foo@10", "valid_metric='foo@10'", "one of the configured metrics at a configured top-k"),
    ("--hidden_dropout_prob=1.5", "hidden_dropout_prob=1.5", "in [0, 1)"),
    ("--train_batch_size=0", "train_batch_size=0", "an integer >= 1"),
    ("--hidden_size=abc", "hidden_size='abc'", "an integer >= 1"),
    ("--n_heads=3", "hidden_size=64, n_heads=3", "hidden_size must be a multiple of n_heads"),
])
def test_bad_values_exit_2_naming_key_value_and_what_is_allowed(arg, key, allowed, tiny_data_path, tmp_path, capsys):
    assert main(["--model=SASRec", arg] + _tiny(tiny_data_path, tmp_path, but=arg)) == 2
    err = capsys.readouterr().err
    assert key in err and allowed in err, err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "saved")  # nothing trained, nothing saved


def test_a_multi_model_run_trains_nothing_when_a_later_model_is_misconfigured(tiny_data_path, tmp_path, capsys):
    start = time.time()
    assert main(["--model=SASRec,LSAN", "--compression_rate=0"] + _tiny(tiny_data_path, tmp_path)) == 2
    assert time.time() - start < 60
    err = capsys.readouterr().err
    assert "compression_rate=0" in err and "an integer >= 1" in err, err
    assert not os.path.exists(tmp_path / "saved")


def test_keys_no_part_of_the_run_reads_are_refused_with_a_did_you_mean(tiny_data_path, tmp_path, capsys):
    assert main(["--model=SASRec", "--teacher_epochs=3"] + _tiny(tiny_data_path, tmp_path)) == 2
    assert "--teacher_epochs" in capsys.readouterr().err
    assert main(["--model=SASRec", "--lr_decay_step=1", "--num_cells=9"] + _tiny(tiny_data_path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "--lr_decay_step" in err and "--num_cells" in err
    # in a config file, too
    (tmp_path / "my.yaml").write_text("learnig_rate: 0.5\n")
    assert main(["--model=SASRec", f"--config_files={tmp_path / 'my.yaml'}"] + _tiny(tiny_data_path, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "learnig_rate (config file)" in err and "did you mean learning_rate" in err, err
    # strict_config_keys: False only warns (and the run goes on)
    assert main(["--model=SASRec", "--learnig_rate=0.5", "--strict_config_keys=False", "--hidden_size=8",
                 "--n_heads=1"] + _tiny(tiny_data_path, tmp_path)) == 0
    assert "learnig_rate" in capsys.readouterr().err


def test_config_dict_keys_are_checked_too(tiny_config):
    with pytest.raises(ConfigError, match="learnig_rate \\(config_dict\\).*did you mean learning_rate"):
        make_config("SASRec", config_dict=dict(tiny_config, learnig_rate=0.5, strict_config_keys=True),
                    read_cmd_line=False)


def test_a_run_knows_exactly_its_model_its_trainer_and_its_phases():
    sasrec = run_keys("SASRec")
    assert {"hidden_size", "n_layers", "epochs", "learning_rate", "data_path", "eval_args"} <= sasrec
    assert not {"teacher_epochs", "lr_decay_step", "num_cells", "code_fit_steps"} & sasrec
    assert {"item_compression", "compression_rate", "num_codebooks"} <= sasrec  # the switch any model can take
    eodrec = run_keys("EODRec")
    assert {"num_codebooks", "teacher_epochs", "teacher_hidden_size", "teacher_checkpoint", "pretrain_epochs"} <= eodrec
    assert "lr_decay_step" not in eodrec and "search_epochs" not in eodrec
    assert {"lr_decay_step", "teacher_lr_decay_step", "search_epochs", "search_arch_learning_rate"} <= run_keys("AdaRec")


def test_teacher_student_size_mismatch_is_refused_before_the_teacher_trains(tiny_config):
    start = time.time()
    with pytest.raises(ConfigError, match="teacher_hidden_size=16 .* must equal hidden_size=8"):
        make_config("EODRec", config_dict=dict(tiny_config, hidden_size=8, teacher_hidden_size=16), read_cmd_line=False)
    assert time.time() - start < 30
    assert not os.path.exists(tiny_config["checkpoint_dir"])


def test_checkpoint_keys_must_name_a_checkpoint_of_the_right_model(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="teacher_checkpoint='nope.pth': checkpoint file 'nope.pth' does not exist"):
        make_config("EODRec", config_dict=dict(tiny_config, teacher_checkpoint="nope.pth"), read_cmd_line=False)
    with pytest.raises(ConfigError, match="resume=.*does not exist"):
        make_config("SASRec", config_dict=dict(tiny_config, resume=str(tmp_path / "x.pth")), read_cmd_line=False)


def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_compress.py"), "--model=SASRec",
                           "--learning_rate=-1"], cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: learning_rate=-1 (command line): must be a number > 0")
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "log")


def test_rules_are_data_that_can_fail():
    keys = (Key("a", int, low=1), Key("b", float, low=0, high=1, high_open=True), Key("c", str, choices=("x", "y")),
            Key("d", list, items=int, low=1, nonempty=True), Key("e", int, none_ok=True), Key("f", bool))
    ok = {"a": 2, "b": 0.5, "c": "x", "d": [1, 2], "e": None, "f": True}
    assert value_problems(ok, keys) == []
    bad = {"a": True, "b": 1.0, "c": "z", "d": [], "e": "1", "f": 1}
    problems = value_problems(bad, keys)
    assert [p.split("=")[0] for p in problems] == ["a", "b", "c", "d", "e", "f"]
    relation = Relation(("a", "e"), lambda c: c["a"] > c["e"], "a must exceed e", when=lambda c: c["e"] is not None)
    assert value_problems({"a": 1, "e": 2}, (), (relation,)) == ["a=1, e=2: a must exceed e"]
    assert value_problems({"a": 1, "e": None}, (), (relation,)) == []
