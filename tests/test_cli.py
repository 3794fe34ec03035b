"""The command line, in a subprocess as a user runs it: training, the comparison table, and bad input."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_recbole_compress.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def tiny_args(tiny_data_path, tmp_path):
    return [
        "--dataset=tiny", f"--data_path={tiny_data_path}", "--epochs=1", "--train_batch_size=64",
        "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--MAX_ITEM_LIST_LENGTH=10",
        "--show_progress=False", f"--checkpoint_dir={tmp_path}/saved", "--state=ERROR",
    ]


def test_cli_runs_two_models_on_one_split_and_prints_one_table(tiny_data_path, tmp_path):
    proc = run_cli("--model=SASRec,gru4rec", "--hidden_size=8", "--embedding_size=8", *tiny_args(tiny_data_path, tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("Results on tiny"):]
    assert "| SASRec |" in table and "| GRU4Rec |" in table and "test NDCG@10" in table
    files = os.listdir(tmp_path / "saved")
    assert len([f for f in files if not f.endswith("-last.pth")]) == 2  # each model's best epoch
    assert len([f for f in files if f.endswith("-last.pth")]) == 2  # and where each would continue


def test_cli_refuses_bad_input_before_training(tiny_data_path, tmp_path):
    unknown = run_cli("--model=NoSuchModel")
    assert unknown.returncode == 2 and "Unknown model 'NoSuchModel'" in unknown.stderr
    assert "Plugin models:" in unknown.stderr and "lightgbm" not in unknown.stderr.lower()

    missing = run_cli("--model=SASRec", "--dataset=nosuchset", f"--data_path={tmp_path}")
    assert missing.returncode == 2 and "nosuchset.inter does not exist" in missing.stderr

    no_file = run_cli("--model=SASRec", f"--config_files={tmp_path}/nope.yaml")
    assert no_file.returncode == 2 and "nope.yaml' does not exist" in no_file.stderr

    typo = run_cli("--model=SASRec", "--hiden_size=8", *tiny_args(tiny_data_path, tmp_path))
    assert typo.returncode == 2 and "--hiden_size" in typo.stderr and "--hidden_size" in typo.stderr
    assert not os.path.exists(tmp_path / "saved")  # nothing trained
