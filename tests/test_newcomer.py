"""The newcomer's path: the main command announces a CPU budget (which --epochs overrides), shows progress, ends with
the model's size beside its counterpart's, stays quiet, explains itself (--help, "did you mean"); the README's commands
are true."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args, cwd, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_compress.py"), *args], cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


def tiny(tiny_data_path):
    return ["--dataset=tiny", f"--data_path={tiny_data_path}", "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
            "--MAX_ITEM_LIST_LENGTH=10", "--show_progress=False", "--hidden_size=8", "--use_context=False"]


def test_cpu_budget_progress_sizes_and_no_noise(tiny_data_path, tmp_path):
    proc = run_cli(["--model=LSAN"] + tiny(tiny_data_path), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err, out = proc.stderr, proc.stdout
    assert "No GPU found: a CPU budget applies (epochs=5, stopping_step=3" in err
    assert re.search(r"progress.*epoch 1 of 5 starts", err), err[-2000:]
    assert "budget" in err and "early stopping after 4 validations in a row" in err  # RecBole: > stopping_step
    row = next(line for line in out.splitlines() if line.startswith("| LSAN"))
    assert "SASRec: " in row and re.search(r"\| \d\.\d{3}x \|", row), row  # LSAN's size beside SASRec's
    assert "best valid MRR@10" in out  # the column says its metric (RecBole's default valid_metric)
    assert "FutureWarning" not in err + out and "GradScaler" not in err + out  # RecBole's and torch's noise
    # a key the user sets wins over the budget (and the announcement says only what still applies)
    proc = run_cli(["--model=SASRec", "--epochs=1", "--n_heads=1"] + tiny(tiny_data_path)[:-1], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No GPU found: a CPU budget applies (stopping_step=3" in proc.stderr and "epochs=5" not in proc.stderr
    assert "epoch 1 of" not in proc.stderr  # one epoch only


def test_help_lists_the_common_recbole_keys(tmp_path):
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0
    for key in ("--epochs", "--data_path", "--learning_rate", "--train_batch_size", "--MAX_ITEM_LIST_LENGTH",
                "--seed", "--checkpoint_dir", "--resume"):
        assert key in proc.stdout, key
    assert "recbole.io" in proc.stdout


def test_a_misspelt_model_gets_a_did_you_mean(tmp_path):
    proc = run_cli(["--model=LSNA"], tmp_path)
    assert proc.returncode == 2 and "did you mean LSAN" in proc.stderr


def _readme_commands():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # a command continued on the next line with a backslash
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line)[0].strip()
            if line.startswith(("python ", "./install.sh")) or " python " in line:
                commands.append(line)
    return commands


def test_every_readme_plan_parses_and_every_model_and_file_exists():
    from recbole_compress.benchmark import build_parser, build_plan
    from recbole_compress.registry import get_model

    commands = _readme_commands()
    assert any("run_recbole_compress.py --model=LSAN" in c for c in commands)
    plans = 0
    for command in commands:
        for part in command.split("&&"):
            words = shlex.split(part.strip())
            if not words or words[0] != "python":
                continue
            models = [w.split("=", 1)[1] for w in words if w.startswith("--model=")]
            for model in models:
                for name in model.split(","):
                    get_model(name)
            if words[1:3] == ["-m", "recbole_compress.benchmark"] and "--plan" in words:
                argv = [w if not w.startswith(("<", "/path")) else "/data" for w in words[3:]]
                if "--data_path" not in argv:
                    argv += ["--data_path", "/data"]
                args, extra = build_parser().parse_known_args(argv)
                assert build_plan(args, extra)["entries"]
                plans += 1
            for word in words:
                if word.endswith((".yaml", ".py")) and not word.startswith("-") and "/" in word:
                    assert os.path.isfile(os.path.join(ROOT, word)), f"README names {word}, which does not exist"
    assert plans >= 5


def test_every_shipped_plan_parses():
    import glob

    from recbole_compress.benchmark import build_parser, build_plan

    for path in glob.glob(os.path.join(ROOT, "benchmarks", "*.yaml")):
        args, extra = build_parser().parse_known_args(["--plan", path, "--data_path", "/data"])
        plan = build_plan(args, extra)
        assert plan["entries"] and len(plan["seeds"]) >= 1, path


@pytest.mark.parametrize("layer", ["overall.yaml", "quick_start_config", "model", "preset", "hyper"])
def test_the_config_layers_the_readme_lists_exist(layer):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert f"properties/{layer}" in text or layer == "hyper"
    assert os.path.exists(os.path.join(ROOT, "properties", layer))
    assert "properties/dataset/<dataset>.yaml" not in text  # a layer that does not exist is not listed
