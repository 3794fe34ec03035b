"""Hyperparameter search: RecBole's params-file syntax, the shipped search spaces, one real Ray Tune search through
the command line (shared by the assertions below: Ray starts slowly), and RecBole's HyperTuning on a plugin model."""
import glob
import json
import math
import os

import pytest

from recbole_compress import properties_path
from recbole_compress.tune import (
    STOPPED,
    ParamsFileError,
    failed,
    check_param_keys,
    hyperopt_space,
    parse_params_file,
    ray_search_space,
)

PLUGIN_MODELS = ("LSAN", "CpRec", "EODRec", "PKMACT", "AdaRec")
BASELINES = ("SASRec", "NextItNet", "GRU4Rec")


def _write(tmp_path, text, name="space.hyper"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# The params-file parser
# ---------------------------------------------------------------------------------------------------------------


def test_parser_reads_each_syntax_form(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    path = _write(tmp_path, """
# a comment, then a blank line

learning_rate loguniform -8,-5
dropout_prob uniform 0.1, 0.5
block_num quniform 2,6,2    # a trailing comment
weight_decay quniform 0.0,0.1,0.05
hidden_size choice [32, 64, 128]  # widths
sharing_scheme choice ['cross_layer','adjacent_block']
dilations choice [[1, 4], [1, 2, 4, 8]]
tag choice ['a#b', 'c']
""")
    params = {p.name: p for p in parse_params_file(path)}
    assert [p.type for p in params.values()] == ["loguniform", "uniform", "quniform", "quniform", "choice", "choice",
                                                 "choice", "choice"]
    assert params["learning_rate"].line == 4 and params["learning_rate"].values == [-8, -5]
    assert params["dropout_prob"].values == [0.1, 0.5]
    assert params["hidden_size"].values == [32, 64, 128]
    assert params["sharing_scheme"].values == ["cross_layer", "adjacent_block"]
    assert params["dilations"].values == [[1, 4], [1, 2, 4, 8]]
    assert params["block_num"].values == [2, 6, 2] and params["tag"].values == ["a#b", "c"]

    space = ray_search_space(list(params.values()))
    # loguniform bounds are natural logs, as in RecBole's scripts
    assert isinstance(space["learning_rate"], Float)
    assert space["learning_rate"].lower == pytest.approx(math.exp(-8))
    assert space["learning_rate"].upper == pytest.approx(math.exp(-5))
    assert isinstance(space["block_num"], Integer)  # integer bounds and step: integers (a width must be an int)
    assert isinstance(space["weight_decay"], Float)
    assert isinstance(space["hidden_size"], Categorical) and space["hidden_size"].categories == [32, 64, 128]
    for _ in range(20):
        assert space["block_num"].sample() in (2, 4, 6)
        assert math.exp(-8) <= space["learning_rate"].sample() <= math.exp(-5)

    grid = ray_search_space([params["hidden_size"], params["dilations"]], algo="exhaustive")
    assert grid["hidden_size"] == {"grid_search": [32, 64, 128]}
    with pytest.raises(ParamsFileError, match="line 4: exhaustive search takes `choice` lines only"):
        ray_search_space(list(params.values()), algo="exhaustive")

    from hyperopt.pyll.stochastic import sample

    drawn = sample(hyperopt_space(path))
    assert drawn["hidden_size"] in (32, 64, 128) and isinstance(drawn["block_num"], int)
    assert math.exp(-8) <= drawn["learning_rate"] <= math.exp(-5)


def test_bayes_search_suggests_configurations_inside_the_space(tmp_path):
    from ray.tune.search.hyperopt import HyperOptSearch

    path = _write(tmp_path, "learning_rate loguniform -8,-5\nblock_num quniform 2,6,2\nhidden_size choice [32, 64]\n")
    searcher = HyperOptSearch(random_state_seed=1)
    assert searcher.set_search_properties("mrr@10", "max", ray_search_space(parse_params_file(path)))
    for i in range(5):
        config = searcher.suggest(f"trial{i}")
        assert math.exp(-8) <= config["learning_rate"] <= math.exp(-5)
        assert config["block_num"] in (2, 4, 6) and config["hidden_size"] in (32, 64)


@pytest.mark.parametrize(
    "line, problem",
    [
        ("learning_rate loguniform", "needs a name, a type and a value"),
        ("learning_rate logunifrom -8,-5", "unknown type 'logunifrom'"),
        ("learning_rate uniform 0.1", "needs 2 comma-separated numbers"),
        ("learning_rate uniform 0.1,abc", "'abc' is not a number"),
        ("learning_rate uniform 0.5,0.1", "needs low < high"),
        ("block_num quniform 2,6", "needs 3 comma-separated numbers"),
        ("block_num quniform 2,6,0", "q > 0"),
        ("hidden_size choice [32, 64", "not a Python literal list"),
        ("hidden_size choice [32, 64  # no closing bracket]", "not a Python literal list"),
        ("hidden_size choice 64", "choice needs a non-empty list"),
        ("hidden_size choice []", "choice needs a non-empty list"),
        ("hidden_size choice [__import__('os')]", "not a Python literal list"),
        ("hidden-size choice [1]", "not a configuration key name"),
        ("embedding_size choice [8]", "already defined on line 2"),
    ],
)
def test_parser_names_the_line_of_a_malformed_entry(tmp_path, line, problem):
    path = _write(tmp_path, f"# space\nembedding_size choice [8, 16]\n{line}\n")
    with pytest.raises(ParamsFileError) as info:
        parse_params_file(path)
    message = str(info.value)
    assert f"{path}, line 3" in message and problem in message, message


def test_parser_refuses_an_empty_or_missing_file_and_unknown_keys(tmp_path):
    with pytest.raises(ParamsFileError, match="does not exist"):
        parse_params_file(str(tmp_path / "nope.hyper"))
    with pytest.raises(ParamsFileError, match="defines no hyperparameter"):
        parse_params_file(_write(tmp_path, "# nothing\n"))
    path = _write(tmp_path, "learning_rate loguniform -8,-5\nhiden_size choice [8, 16]\n")
    with pytest.raises(ParamsFileError, match=r"line 2: 'hiden_size' is not a configuration key of SASRec "
                                              r"\(did you mean hidden_size"):
        check_param_keys("SASRec", parse_params_file(path), path)


# ---------------------------------------------------------------------------------------------------------------
# The shipped search spaces
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", PLUGIN_MODELS + BASELINES)
def test_shipped_space_keys_are_configuration_keys_of_its_model(model):
    from recbole.trainer import HyperTuning

    from recbole_compress.utils import UnknownModelError, get_model

    path = properties_path("hyper", f"{model}.hyper")
    assert os.path.isfile(path), f"no search space shipped for {model}"
    params = parse_params_file(path)
    assert 2 <= len(params) <= 6, "a CPU-sized space: the few hyperparameters that matter most"
    # RecBole's own reader (HyperTuning(params_file=...)) reads the same file to the same names
    assert set(HyperTuning._build_space_from_file(path)) == {p.name for p in params}
    for p in params:
        if p.type == "choice":
            assert len(p.values) <= 4, f"{model}: {p.name} has {len(p.values)} values; keep spaces CPU-sized"
    try:
        model_class = get_model(model)
    except UnknownModelError:
        pytest.skip(f"{model} is not on this branch yet")
    from recbole_compress.preflight import run_keys

    keys = run_keys(model_class)
    unknown = sorted(p.name for p in params if p.name not in keys)
    assert not unknown, f"{path}: {unknown} are not configuration keys of {model}"


def test_every_shipped_space_is_for_a_known_model_name():
    files = glob.glob(properties_path("hyper", "*.hyper"))
    names = {os.path.basename(f)[: -len(".hyper")] for f in files}
    assert set(PLUGIN_MODELS + BASELINES) <= names


# ---------------------------------------------------------------------------------------------------------------
# One real search, through the command line, shared by the tests below
# ---------------------------------------------------------------------------------------------------------------

TINY_OVERRIDES = [
    "--epochs=2", "--hidden_size=8", "--inner_size=16", "--n_layers=1", "--MAX_ITEM_LIST_LENGTH=10",
    "--train_batch_size=64", "--eval_batch_size=256", "--state=ERROR", "--log_wandb=False",
    "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
]


@pytest.fixture(scope="module")
def search(tiny_data_path, tmp_path_factory):
    """A 6-trial grid on the tiny data: n_heads 1 and 2 train; n_heads 3 does not divide hidden_size 8 (bad
    hyperparameters: the model refuses it); layer_norm_eps -1 gives a NaN loss in the first batch."""
    import ray

    from recbole_compress.cli import main

    folder = tmp_path_factory.mktemp("search")
    params = folder / "space.hyper"
    params.write_text("n_heads choice [1, 2, 3]\nlayer_norm_eps choice [1e-12, -1.0]\n")
    argv = ["--model=SASRec", "--tune", "--dataset=tiny", f"--data_path={tiny_data_path}",
            f"--params_file={params}", "--algo=exhaustive", f"--storage_path={folder / 'ray'}", "--name=grid",
            "--num_cpus=2", "--verbose=0"] + TINY_OVERRIDES
    from io import StringIO
    from contextlib import redirect_stdout

    out = StringIO()
    with redirect_stdout(out):
        code = main(argv)
    summary = json.loads((folder / "ray" / "grid" / "trials.json").read_text())
    return {"code": code, "stdout": out.getvalue(), "summary": summary, "folder": folder,
            "ray_left_running": ray.is_initialized(), "data_path": tiny_data_path}


def test_search_completes_and_writes_its_table(search):
    assert search["code"] == 0, search["stdout"]
    assert not search["ray_left_running"], "the local Ray the search started must be stopped"
    summary = search["summary"]
    assert summary["metric"] == "mrr@10" and summary["mode"] == "max"  # RecBole's default valid_metric MRR@10
    table = open(summary["output_file"]).read()
    assert summary["output_file"] == str(search["folder"] / "ray" / "grid" / "trials.md")
    rows = [line for line in table.splitlines() if line.startswith("| trial_")]
    assert len(rows) == 6
    assert "| trial | n_heads | layer_norm_eps | epochs | best valid mrr@10 | test (best trial) | status |" in table
    assert table in search["stdout"]  # printed too
    ok = [t for t in summary["trials"] if not failed(t)]
    assert sorted(t["params"]["n_heads"] for t in ok) == [1, 2]
    for trial in ok:
        # ASHA (grace period 1, reduction factor 2) may stop the worse of the two after its first epoch
        assert trial["status"] == "ok" and trial["epochs"] == 2 or trial["status"] == STOPPED and trial["epochs"] == 1
        assert 0 < trial["best_valid_score"] <= 1
        assert trial["params"]["layer_norm_eps"] == 1e-12
    assert summary["best"]["status"] == "ok" and summary["best"]["epochs"] == 2


def test_one_report_per_epoch_with_valid_metric_and_loss(search):
    import csv

    for trial in search["summary"]["trials"]:
        if failed(trial):
            continue
        with open(os.path.join(trial["trial_dir"], "progress.csv")) as f:
            reports = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in reports] == list(range(trial["epochs"]))
        assert [int(r["training_iteration"]) for r in reports] == list(range(1, trial["epochs"] + 1))
        for r in reports:
            assert float(r["train_loss"]) > 0 and 0 <= float(r["mrr@10"]) <= 1
            assert float(r["valid_score"]) == float(r["mrr@10"])
            assert "ndcg@10" in r and "best_valid_score" in r


def test_failing_trials_are_reported_failed_and_the_search_goes_on(search):
    failures = [t for t in search["summary"]["trials"] if failed(t)]
    assert len(failures) == 4
    bad_heads = [t for t in failures if t["params"]["n_heads"] == 3]
    nan_loss = [t for t in failures if t["params"]["n_heads"] != 3]
    assert len(bad_heads) == 2 and len(nan_loss) == 2
    for trial in bad_heads:
        assert "hidden_size must be a multiple of n_heads" in trial["status"], trial["status"]
        assert trial["epochs"] == 0
    for trial in nan_loss:
        assert trial["params"]["layer_norm_eps"] == -1.0
        assert "nan" in trial["status"].lower(), trial["status"]
    assert "6 trials, 4 failed" in search["stdout"]


def test_trials_never_share_a_checkpoint_file(search):
    ok = [t for t in search["summary"]["trials"] if not failed(t)]
    files = [t["checkpoint_file"] for t in ok]
    assert len(set(files)) == len(files) == 2
    owners = {}
    for trial in search["summary"]["trials"]:
        for path in glob.glob(os.path.join(trial["trial_dir"], "**", "*.pth"), recursive=True):
            owners.setdefault(os.path.basename(path), []).append(trial["trial"])
    assert all(len(v) == 1 for v in owners.values()), owners
    for trial in ok:
        assert os.path.dirname(trial["checkpoint_file"]) == os.path.join(trial["trial_dir"], "saved")
        assert os.path.isfile(trial["checkpoint_file"])
        assert os.path.isdir(os.path.join(trial["trial_dir"], "log"))  # RecBole's log is in the trial's folder


def test_best_trial_is_tested_and_its_command_reruns_it(search, tmp_path, capsys):
    import shlex

    from recbole_compress.cli import main

    summary = search["summary"]
    best = summary["best"]
    ok = [t for t in summary["trials"] if not failed(t)]
    assert best["best_valid_score"] == max(t["best_valid_score"] for t in ok)
    test = summary["best_test_result"]
    assert set(test) >= {"ndcg@10", "hit@10", "mrr@10"} and all(0 <= v <= 1 for v in test.values())
    assert "Rerun the best configuration:" in search["stdout"]
    assert summary["rerun_command"] in search["stdout"]
    words = shlex.split(summary["rerun_command"])
    assert words[:2] == ["python", "run_recbole_compress.py"]
    assert f"--n_heads={best['params']['n_heads']}" in words
    # the printed command reproduces the best trial: same best validation score and test result
    code = main(words[2:] + [f"--checkpoint_dir={tmp_path}"])
    assert code == 0
    printed = capsys.readouterr().out
    row = [line for line in printed.splitlines() if line.startswith("| SASRec")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(test["ndcg@10"], abs=1e-4)
    assert float(cells[4]) == pytest.approx(best["best_valid_score"], abs=1e-4)


def test_search_refuses_bad_input_before_starting_ray(tiny_data_path, tmp_path, capsys):
    from recbole_compress.cli import main

    base = ["--tune", "--dataset=tiny", f"--data_path={tiny_data_path}", f"--storage_path={tmp_path}"]
    assert main(["--model=SASRec", f"--params_file={_write(tmp_path, 'n_heads choise [1]')}"] + base) == 2
    err = capsys.readouterr().err
    assert "space.hyper, line 1 ('n_heads choise [1]'): unknown type 'choise'" in err, err
    assert main(["--model=SASRec", f"--params_file={_write(tmp_path, 'n_heads choice [1]')}", "--n_heads=2"]
                + base) == 2
    assert "n_heads is both searched" in capsys.readouterr().err
    assert main(["--model=FPMC", "--dataset=tiny"] + base[2:] + ["--tune"]) == 2
    assert "no search space is shipped for FPMC" in capsys.readouterr().err
    assert main(["--model=SASRec", "--nproc=2"] + base) == 2
    assert "--nproc cannot be combined with --tune" in capsys.readouterr().err
    assert not os.listdir(tmp_path) or all(p.endswith(".hyper") for p in os.listdir(tmp_path))


def test_a_compressed_model_searches_with_a_relative_codebook_teacher(tiny_data_path, tmp_path, monkeypatch):
    """Trials run in their own folders: a relative path given for a file key (here ``codebook_teacher``, the checkpoint
    whose item table a codebook is fitted to) must still name the file there, so the compressed model trains in the
    trial instead of failing on a file it cannot find."""
    from recbole_compress.cli import main

    monkeypatch.chdir(tmp_path)
    data = ["--dataset=tiny", f"--data_path={tiny_data_path}"]
    assert main(["--model=SASRec", "--checkpoint_dir=saved"] + data + TINY_OVERRIDES) == 0
    teacher = next(p for p in glob.glob("saved/SASRec-*.pth") if not p.endswith("-last.pth"))
    params = _write(tmp_path, "n_heads choice [1]\n")
    code = main(["--model=SASRec", "--tune", f"--params_file={params}", "--algo=exhaustive", "--storage_path=ray",
                 "--name=codebook", "--num_cpus=1", "--verbose=0", "--item_compression=codebook",
                 f"--codebook_teacher={teacher}", "--num_codebooks=2", "--codebook_size=4"] + data + TINY_OVERRIDES)
    trials = json.loads((tmp_path / "ray" / "codebook" / "trials.json").read_text())["trials"]
    assert code == 0 and [t["status"] for t in trials] == ["ok"], trials


# ---------------------------------------------------------------------------------------------------------------
# RecBole's hyperopt HyperTuning with a plugin model, through the plugin's objective_function
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def test_plugin_model(monkeypatch):
    """Register tests/tune_plugin_models as a plugin model package (a model RecBole itself cannot find)."""
    from recbole_compress import registry

    monkeypatch.setattr(registry, "PLUGIN_MODEL_PACKAGES", registry.PLUGIN_MODEL_PACKAGES + ("tune_plugin_models",))
    for cached in (registry.plugin_models, registry._plugin_lookup):
        cached.cache_clear()
    yield "MeanPoolRec"
    for cached in (registry.plugin_models, registry._plugin_lookup):
        cached.cache_clear()


def test_recbole_hypertuning_with_a_plugin_model(test_plugin_model, tiny_data_path, tmp_path, capsys):
    import yaml
    from recbole.trainer import HyperTuning

    from recbole_compress.quick_start import objective_function

    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump({
        "model": test_plugin_model, "dataset": "tiny", "data_path": tiny_data_path, "epochs": 1, "loss_type": "CE",
        "embedding_size": 8, "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 64, "state": "ERROR",
        "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False, "log_wandb": False,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    }))
    params = _write(tmp_path, "learning_rate choice [0.01, 0.001]\npool_dropout choice [0.0, 0.3]\n")
    hp = HyperTuning(objective_function, algo="exhaustive", params_file=params, fixed_config_file_list=[str(fixed)])
    hp.run()
    assert len(hp.params2result) == 4
    for result in hp.params2result.values():
        assert result["model"] == "MeanPoolRec"
        assert 0 <= result["test_result"]["ndcg@10"] <= 1
    assert hp.best_params["learning_rate"] in (0.01, 0.001)
    out = tmp_path / "hyper.result"
    hp.export_result(output_file=str(out))
    assert out.read_text().count("Test result:") == 4

    # the plugin's reader (comments allowed) feeds HyperTuning too
    commented = _write(tmp_path, "# one line\npool_dropout choice [0.1]\n", "commented.hyper")
    hp2 = HyperTuning(objective_function, algo="exhaustive", space=hyperopt_space(commented),
                      fixed_config_file_list=[str(fixed)])
    hp2.run()
    assert list(hp2.params2result) == ["pool_dropout:0.1"]


def test_an_interrupted_search_says_so_and_resumes_to_completion(tiny_data_path, tmp_path):
    """Ctrl-C during the first trial: no best trial is announced or tested, the exit status is not 0, the unfinished
    trials are listed as such; --resume continues the search (the trial from its last epoch) to the end."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    params = tmp_path / "space.hyper"
    params.write_text("n_heads choice [1, 2]\n")
    overrides = [a for a in TINY_OVERRIDES if not a.startswith(("--epochs", "--train_batch_size"))]
    base = [sys.executable, os.path.join(root, "run_recbole_compress.py"), "--model=SASRec", "--tune"]
    common = ["--num_cpus=1", "--verbose=0"]
    argv = base + [f"--dataset=tiny", f"--data_path={tiny_data_path}", f"--params_file={params}",
                   "--algo=exhaustive", "--scheduler=fifo", "--max_concurrent_trials=1", f"--storage_path={tmp_path}",
                   "--name=grid", "--epochs=3", "--train_batch_size=8"] + common + overrides
    env = dict(os.environ, PYTHONPATH=root)
    proc = subprocess.Popen(argv, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        reports = glob.glob(str(tmp_path / "grid" / "trial_*" / "progress.csv"))
        if reports and any(len(open(r).read().splitlines()) >= 2 for r in reports):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    summary = json.loads((tmp_path / "grid" / "trials.json").read_text())
    assert summary["interrupted"] and summary["best"] is None and summary["best_test_result"] is None
    statuses = [t["status"] for t in summary["trials"]]
    assert len(statuses) == 2, statuses  # a trial Ray had not created yet is listed too
    assert any(s in ("interrupted", "not started") for s in statuses), statuses
    assert "Continue it with" in out and "Rerun the best configuration" not in out

    resumed = subprocess.run(base + [f"--resume={tmp_path / 'grid'}"] + common, cwd=str(tmp_path),
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout[-2000:], resumed.stderr[-2000:])
    summary = json.loads((tmp_path / "grid" / "trials.json").read_text())
    assert not summary["interrupted"] and summary["best"] is not None
    assert [t["status"] for t in summary["trials"]] == ["ok", "ok"]
    for trial in summary["trials"]:  # the trial's own console output is kept in its folder
        assert glob.glob(os.path.join(trial["trial_dir"], "*stdout*")) or glob.glob(
            os.path.join(trial["trial_dir"], "*.out"))


def test_planned_trials_counts_the_grid_or_the_samples(tmp_path):
    from recbole_compress.tune import parse_params_file, planned_trials

    space = tmp_path / "space.hyper"
    space.write_text("n_heads choice [1, 2]\nn_layers choice [1, 2, 3]\n")
    params = parse_params_file(str(space))
    assert planned_trials(params, "exhaustive", 1) == 6
    assert planned_trials(params, "exhaustive", 2) == 12
    assert planned_trials(params, "random", 4) == 4
