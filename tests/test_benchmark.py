"""The benchmark harness on two tiny models: table, JSON, PNG, ratios, and resuming without retraining."""
import glob
import json
import os

import numpy as np
import pytest
import torch
import yaml

from recbole_compress.benchmark import main
from recbole_compress.checkpoint import load_checkpoint
from recbole_compress.intervals import ndcg_from_ranks
from recbole_compress.profiling import count_parameters, peak_memory, state_dict_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(tiny_data_path, out, *extra):
    return [
        "--models", "SASRec,GRU4Rec", "--dataset", "tiny", "--data_path", tiny_data_path, "--epochs", "2",
        "--output_dir", str(out), "--infer_batch_users", "16", "--infer_batches", "2", "--repeats", "2",
        "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--hidden_size=8", "--embedding_size=8",
        "--inner_size=16", "--MAX_ITEM_LIST_LENGTH=10", "--state=ERROR", "--train_batch_size=64", *extra,
    ]


def test_benchmark_two_tiny_models(tiny_data_path, tmp_path, capsys):
    out = tmp_path / "bench"
    args = _args(tiny_data_path, out, "--seeds", "2020,2021")
    assert main(args) == 0
    for name in ("results.json", "results.md", "pareto.png", "pareto_inference.png"):
        assert (out / name).stat().st_size > 0
    with open(out / "results.json") as f:
        results = json.load(f)
    rows = {r["label"]: r for r in results["summary"]}
    sas, gru = rows["SASRec"], rows["GRU4Rec"]
    assert gru["counterpart"] == "SASRec" and sas["seeds"] == gru["seeds"] == 2
    assert abs(gru["params_ratio"] - gru["params"] / sas["params"]) < 1e-12
    assert abs(gru["bytes_ratio"] - gru["state_dict_bytes"] / sas["state_dict_bytes"]) < 1e-12
    for row in (sas, gru):
        assert 0 <= row["ndcg@10"] <= 1 and row["infer_ms_per_batch"] > 0
        assert row["train_peak_bytes"] > 0 and row["infer_peak_bytes"] > 0 and row["train_seconds_per_epoch"] > 0
        assert len(row["epochs_run"]) == 2 and all(s in ("early stopping", "epoch cap") for s in row["stopped_by"])
    assert gru["infer_ratio"] > 0 and "infer_ratio" not in sas
    # the interval comes from the per-user test ranks kept in the results, which reproduce RecBole's NDCG@10
    assert gru["ndcg@10_ratio_ci_low"] <= gru["ndcg@10_ratio"] <= gru["ndcg@10_ratio_ci_high"]
    assert len(results["test_users"]) == 60
    for run in results["runs"].values():
        assert np.mean(ndcg_from_ranks(run["test_ranks"])) == pytest.approx(run["test_result"]["ndcg@10"], abs=1e-4)
        # where it trained, for a later run that does not repeat the numbers
        assert run["trained_on"] == {"torch": torch.__version__,
                                     "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with open(out / "results.md") as f:
        table = f.read()
    assert "| GRU4Rec | SASRec |" in table and "95 % CI" in table
    assert "instruction sets" not in table  # one CPU: nothing to say

    # an interrupted run resumes: finished trainings are reused, not redone
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "SASRec@2020: done in an earlier run, reused" in printed and "GRU4Rec@2021: done in an earlier" in printed

    # --report_only writes the table again from the folder: no training, no timing (the last run's is kept)
    with open(out / "results.json") as f:
        before = {r["label"]: r for r in json.load(f)["summary"]}
    assert main(args + ["--report_only"]) == 0
    printed = capsys.readouterr().out
    assert ": training" not in printed and "measuring" not in printed
    with open(out / "results.json") as f:
        again = json.load(f)
    for row in again["summary"]:
        assert row["infer_ms_per_batch"] == before[row["label"]]["infer_ms_per_batch"]
        assert row.get("ndcg@10_ratio") == before[row["label"]].get("ndcg@10_ratio")
    assert again["command"] == results["command"]
    assert "Table written again by" in (out / "results.md").read_text()
    assert main(_args(tiny_data_path, tmp_path / "empty") + ["--report_only"]) == 2

    # one seed over the same folder: its table is that seed's, not every seed the folder holds
    assert main([a if a != "2020,2021" else "2020" for a in args]) == 0
    with open(out / "results.json") as f:
        one_seed = json.load(f)
    assert {r["label"]: r["seeds"] for r in one_seed["summary"]} == {"SASRec": 1, "GRU4Rec": 1}
    assert len(one_seed["runs"]) == 4  # the other seed's trainings stay recorded

    # another plan with an entry trained alike takes its trainings from this one
    other = [a for a in _args(tiny_data_path, tmp_path / "other", "--seeds", "2020,2021") if a != "SASRec,GRU4Rec"]
    other[other.index("--models") + 1:other.index("--models") + 1] = ["SASRec"]
    other = [a for a in other if not a.startswith("--embedding_size")]
    assert main(other + ["--reuse_from", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 finished trainings reused" in printed and ": training" not in printed


def test_two_jobs_give_the_numbers_of_one(tiny_data_path, tmp_path):
    assert main(_args(tiny_data_path, tmp_path / "one", "--seeds", "2020")) == 0
    assert main(_args(tiny_data_path, tmp_path / "two", "--seeds", "2020", "--jobs", "2")) == 0
    one, two = (json.load(open(tmp_path / d / "results.json"))["runs"] for d in ("one", "two"))
    assert set(one) == set(two)
    for key in one:
        assert one[key]["test_result"] == two[key]["test_result"]
        assert one[key]["test_ranks"] == two[key]["test_ranks"]


def _plan_stopped_and_run_again(tiny_data_path, tmp_path, model, extra, drop, stop_at):
    """The tiny plan of ``model`` run once uninterrupted (``ref``) and once killed (SIGKILL) as soon as a file
    ``stop_at(name)`` accepts appears in its checkpoint folder, then run again (``cut``); returns both plans' runs."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def command(out):
        args = [a for a in _args(tiny_data_path, out, "--seeds", "2020", *extra) if not a.startswith(drop)]
        args[args.index("SASRec,GRU4Rec")] = model
        return [sys.executable, "-m", "recbole_compress.benchmark"] + args

    env = dict(os.environ, PYTHONPATH=root)
    reference = subprocess.run(command(tmp_path / "ref"), cwd=root, env=env, capture_output=True, text=True,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    proc = subprocess.Popen(command(tmp_path / "cut"), cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    folder = tmp_path / "cut" / "checkpoints" / f"{model}@2020"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if folder.exists() and any(stop_at(f) for f in os.listdir(folder)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    again = subprocess.run(command(tmp_path / "cut"), cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    return {name: json.load(open(tmp_path / name / "results.json"))["runs"] for name in ("ref", "cut")}


def test_a_plan_stopped_in_the_middle_of_an_entry_ends_with_the_uninterrupted_numbers(tiny_data_path, tmp_path):
    """The benchmark is killed (SIGKILL) during the second epoch of an entry; run again, it continues that entry
    from its last complete epoch and ends with the numbers of a plan that was never stopped."""
    runs = _plan_stopped_and_run_again(
        tiny_data_path, tmp_path, "SASRec", ["--epochs", "3", "--train_batch_size=4", "--stopping_step", "10"],
        ("--train_batch_size=64", "--embedding_size"), lambda name: name.endswith("-last.pth"))
    ref, cut = runs["ref"]["SASRec@2020"], runs["cut"]["SASRec@2020"]
    assert cut["resumed_from"] and cut["test_result"] == ref["test_result"] and cut["test_ranks"] == ref["test_ranks"]
    assert cut["epochs_run"] == ref["epochs_run"] == 3


def test_a_plan_stopped_in_a_teacher_phase_continues_the_phase_and_ends_with_the_uninterrupted_numbers(
        tiny_data_path, tmp_path):
    """Killed (SIGKILL) while an EODRec entry's teacher trains its second epoch, the plan run again continues the
    teacher from its last complete epoch (recorded before the phase trained), not from scratch."""
    runs = _plan_stopped_and_run_again(
        tiny_data_path, tmp_path, "EODRec",
        ["--epochs", "1", "--teacher_epochs=3", "--teacher_train_batch_size=4", "--teacher_stopping_step=10",
         "--n_heads=2", "--inner_size=8", "--num_codebooks=2", "--codebook_size=8", "--code_fit_steps=20"],
        ("--embedding_size", "--inner_size=16"),
        lambda name: name.startswith("EODRecTeacher") and name.endswith("-last.pth"))
    ref, cut = runs["ref"]["EODRec@2020"], runs["cut"]["EODRec@2020"]
    assert set(cut["resumed_from"]) == {"teacher_resume"}
    assert "1 of them continued after a stop)" in open(tmp_path / "cut" / "results.md").read()
    assert "continued after a stop" not in open(tmp_path / "ref" / "results.md").read()
    assert cut["test_result"] == ref["test_result"] and cut["test_ranks"] == ref["test_ranks"]
    ref_teacher, cut_teacher = runs["ref"]["EODRec/teacher@2020"], runs["cut"]["EODRec/teacher@2020"]
    assert cut_teacher["test_ranks"] == ref_teacher["test_ranks"] and cut_teacher["epochs_run"] == 3
    assert cut_teacher["resumed_from"] == cut["resumed_from"]["teacher_resume"] and ref_teacher["resumed_from"] is None
    assert cut_teacher["checkpoint"] == load_checkpoint(cut["resumed_from"]["teacher_resume"])["best_model_file"]
    # the teacher's time before the stop is counted: in its own row and in the run's
    assert cut["fit_seconds_before_resume"] > 0 and ref["fit_seconds_before_resume"] is None
    assert cut_teacher["fit_seconds"] > cut["fit_seconds_before_resume"]


def test_a_plan_stopped_after_a_teacher_phase_reports_the_teacher_as_the_uninterrupted_plan(tiny_data_path, tmp_path):
    """Killed (SIGKILL) while the student trains, after its teacher phase finished: run again, the plan loads that
    teacher and its row says what the uninterrupted plan's says (epochs, why it stopped, best validation), not
    "loaded (given checkpoint)"."""
    runs = _plan_stopped_and_run_again(
        tiny_data_path, tmp_path, "EODRec",
        ["--epochs", "3", "--train_batch_size=4", "--stopping_step", "10", "--teacher_epochs=2",
         "--n_heads=2", "--inner_size=8", "--num_codebooks=2", "--codebook_size=8", "--code_fit_steps=20"],
        ("--train_batch_size=64", "--embedding_size", "--inner_size=16"),
        lambda name: name.startswith("EODRec-") and name.endswith("-last.pth"))
    ref, cut = runs["ref"]["EODRec@2020"], runs["cut"]["EODRec@2020"]
    assert set(cut["resumed_from"]) == {"resume"}
    assert cut["test_ranks"] == ref["test_ranks"] and cut["epochs_run"] == ref["epochs_run"] == 3
    ref_teacher, cut_teacher = runs["ref"]["EODRec/teacher@2020"], runs["cut"]["EODRec/teacher@2020"]
    assert cut_teacher["test_ranks"] == ref_teacher["test_ranks"]
    for key in ("epochs_run", "stopped_by", "best_valid_score"):
        assert cut_teacher[key] == ref_teacher[key], key
    assert cut_teacher["stopped_by"] == "epoch cap" and cut_teacher["epochs_run"] == 2
    assert cut_teacher["fit_seconds"] > 0


def test_profiling_counts_what_the_call_allocates():
    def allocate():
        a = torch.empty(1 << 20, dtype=torch.uint8)  # 1 MiB alive ...
        b = torch.empty(1 << 19, dtype=torch.uint8)  # ... plus 0.5 MiB at the peak
        del a, b
        return torch.empty(1 << 10, dtype=torch.uint8)

    _, peak = peak_memory(allocate)
    assert (1 << 20) + (1 << 19) <= peak < (1 << 20) + (1 << 19) + 4096

    lin = torch.nn.Linear(4, 4)
    tied = torch.nn.Sequential(lin, torch.nn.Linear(4, 4))
    tied[1].weight = lin.weight
    assert state_dict_bytes(tied) == (16 + 4 + 4) * 4  # the tied weight is stored once
    assert count_parameters(tied) == 24


def test_an_entry_can_take_another_entrys_checkpoint_of_the_same_seed(tiny_data_path, tmp_path):
    """``codebook_teacher: "@SASRec"``: the codes of SASRec-codebook are fitted to the plain SASRec of each seed,
    trained first."""

    from recbole_compress.checkpoint import load_checkpoint

    plan = {"dataset": "tiny", "seeds": [2020, 2021], "epochs": 1,
            "config": {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "hidden_size": 8,
                       "MAX_ITEM_LIST_LENGTH": 10, "state": "ERROR", "train_batch_size": 64},
            "entries": [{"label": "SASRec-codebook", "model": "SASRec",
                         "config": {"item_compression": "codebook", "num_codebooks": 2, "codebook_size": 4,
                                    "codebook_teacher": "@SASRec"}},
                        {"label": "SASRec", "model": "SASRec"}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    out = tmp_path / "out"
    assert main(["--plan", str(tmp_path / "plan.yaml"), "--data_path", tiny_data_path, "--output_dir", str(out),
                 "--infer_batch_users", "16", "--infer_batches", "1", "--repeats", "1"]) == 0
    runs = json.load(open(out / "results.json"))["runs"]
    for seed in (2020, 2021):
        student = load_checkpoint(runs[f"SASRec-codebook@{seed}"]["checkpoint"])["config"]
        assert student["codebook_teacher"] == runs[f"SASRec@{seed}"]["checkpoint"]


def test_an_ablation_can_distil_from_another_entrys_in_run_teacher(tiny_data_path, tmp_path, capsys):
    """``teacher_checkpoint: "@EODRec/teacher"``: an ablation entry takes the teacher EODRec trained in its own run
    (same seed) instead of training one, and is compared with that teacher's row; a reference to the teacher of an
    entry that trains none is refused before anything trains."""

    from recbole_compress.checkpoint import load_checkpoint

    tiny = {"hidden_size": 8, "inner_size": 8, "n_heads": 2, "num_codebooks": 2, "codebook_size": 8,
            "code_fit_steps": 5, "teacher_epochs": 1}
    plan = {"dataset": "tiny", "seeds": [2020], "epochs": 1,
            "config": {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": 10,
                       "state": "ERROR", "train_batch_size": 64},
            "entries": [{"label": "EODRec", "model": "EODRec", "config": tiny},
                        {"label": "EODRec-no-repair", "model": "EODRec",
                         "config": dict(tiny, code_collision_handling="none",
                                        teacher_checkpoint="@EODRec/teacher")}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    out = tmp_path / "out"
    args = ["--plan", str(tmp_path / "plan.yaml"), "--data_path", tiny_data_path, "--output_dir", str(out),
            "--infer_batch_users", "16", "--infer_batches", "1", "--repeats", "1"]
    assert main(args) == 0
    results = json.load(open(out / "results.json"))
    runs, rows = results["runs"], {r["label"]: r for r in results["summary"]}
    teacher = runs["EODRec/teacher@2020"]["checkpoint"]
    assert load_checkpoint(runs["EODRec-no-repair@2020"]["checkpoint"])["config"]["teacher_checkpoint"] == teacher
    assert not [f for f in os.listdir(out / "checkpoints" / "EODRec-no-repair@2020") if f.startswith("EODRecTeacher")]
    assert rows["EODRec-no-repair"]["counterpart"] == "EODRec/teacher" and "EODRec-no-repair/teacher" not in rows
    assert rows["EODRec-no-repair"]["infer_ratio"] > 0  # timed against the row it is compared with

    plan["entries"][0]["model"] = "SASRec"  # an entry without an in-run teacher
    plan["entries"][0]["config"] = {"hidden_size": 8}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    capsys.readouterr()
    assert main(args[:4] + ["--output_dir", str(tmp_path / "refused")]) == 2
    assert "refers to @EODRec/teacher, not an entry of the plan or the in-run teacher of one" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "checkpoints").exists()


@pytest.mark.parametrize("plan_file", sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_plan_passes_the_checks_made_before_training(plan_file, tmp_path):
    """Each plan under benchmarks/ builds and passes every check the benchmark makes before its first training (keys,
    values, ``@`` references, counterparts), on a stand-in dataset under its dataset's name (a catalogue of about a
    thousand items, so that the checks against the item count see a real-sized table)."""
    from conftest import write_tiny_dataset

    from recbole_compress.benchmark import build_parser, build_plan, check_plan

    dataset = yaml.safe_load(open(plan_file)).get("dataset", "ml-100k")
    if dataset != "ml-100k":
        write_tiny_dataset(str(tmp_path), name=dataset, n_users=200, n_items=1000)
    args, extra = build_parser().parse_known_args(["--plan", plan_file, "--data_path", str(tmp_path)])
    check_plan(build_plan(args, extra), str(tmp_path / "out"))


def test_a_teacher_loaded_from_a_given_checkpoint_is_not_reported_as_not_converged():
    """A student whose teacher is another entry's checkpoint (``teacher_checkpoint: "@teacher"``) gets a teacher row
    that was loaded, not trained: the table says so instead of 'not converged'; a trained row ended by the epoch cap
    still says 'not converged'."""
    from recbole_compress.benchmark_report import markdown_table, summarise

    def record(label, seed, stopped_by, epochs, ranks, **extra):
        return {"label": label, "model": "M", "seed": seed, "test_result": {"ndcg@10": 0.1}, "test_ranks": ranks,
                "params": 10, "state_dict_bytes": 40, "stopped_by": stopped_by, "epochs_run": epochs, **extra}

    runs = {}
    for seed in (1, 2):
        runs[f"teacher@{seed}"] = record("teacher", seed, "epoch cap", 50, [0, 3, -1])
        runs[f"student@{seed}"] = record("student", seed, "early stopping", 7, [1, 3, -1])
        runs[f"student/teacher@{seed}"] = record("student/teacher", seed, "loaded", None, [0, 3, -1],
                                                 teacher_of="student")
    plan = {"entries": [{"label": "teacher", "model": "M"},
                        {"label": "student", "model": "M", "counterpart": "student/teacher"}]}
    rows = {r["label"]: r for r in summarise(plan, runs, {})}
    assert rows["student/teacher"]["converged"] and not rows["teacher"]["converged"]
    lines = {line.split(" | ")[0].lstrip("| "): line for line in markdown_table(list(rows.values())).splitlines()}
    assert lines["student/teacher"].endswith("| loaded (given checkpoint) |")
    assert lines["teacher"].endswith("| 50, 50 (not converged) |")
    assert lines["student"].endswith("| 7, 7 |")


def test_a_student_of_a_teacher_entry_is_compared_with_that_entry_without_a_repeated_row():
    """A student whose teacher is another entry (``teacher_checkpoint: "@teacher"``, the beta sweeps) is compared
    with that entry's row, and its loaded teacher (the same checkpoint on the same users) is not listed again as a
    row ``<label>/teacher``; a student with an in-run teacher keeps its teacher row."""
    from recbole_compress.benchmark_report import markdown_table, summarise

    def record(label, seed, ranks, ndcg, **extra):
        return {"label": label, "model": "M", "seed": seed, "test_result": {"ndcg@10": ndcg}, "test_ranks": ranks,
                "params": 10, "state_dict_bytes": 40, "stopped_by": "early stopping", "epochs_run": 5, **extra}

    runs = {}
    for seed in (1, 2):
        runs[f"teacher@{seed}"] = record("teacher", seed, [0, 0, 1], 0.8)
        runs[f"beta=0@{seed}"] = record("beta=0", seed, [0, 1, 1], 0.6)
        runs[f"beta=0/teacher@{seed}"] = record("beta=0/teacher", seed, [0, 0, 1], 0.8, teacher_of="beta=0")
        runs[f"inrun@{seed}"] = record("inrun", seed, [0, 1, 1], 0.6)
        runs[f"inrun/teacher@{seed}"] = record("inrun/teacher", seed, [0, 0, 0], 1.0, teacher_of="inrun")
    plan = {"entries": [
        {"label": "teacher", "model": "M", "counterpart": "teacher"},
        {"label": "beta=0", "model": "M", "counterpart": "beta=0/teacher", "config": {"teacher_checkpoint": "@teacher"}},
        {"label": "inrun", "model": "M", "counterpart": "inrun/teacher", "config": {}}]}
    rows = {r["label"]: r for r in summarise(plan, runs, {})}
    assert list(rows) == ["teacher", "beta=0", "inrun", "inrun/teacher"]
    assert rows["beta=0"]["counterpart"] == "teacher" and rows["beta=0"]["ndcg@10_ratio_ci_low"] is not None
    assert rows["inrun"]["counterpart"] == "inrun/teacher"
    assert "beta=0/teacher" not in markdown_table(list(rows.values()))


def test_a_plan_wide_teacher_counterpart_applies_only_to_models_with_a_teacher(tmp_path):
    """``counterpart: teacher`` for a whole plan: a student is compared with its own teacher row, while the plan's
    teacher entry (a model without a teacher) has no counterpart, not a row ``teacher/teacher`` that never exists."""

    from recbole_compress.benchmark import build_parser, build_plan

    plan = {"dataset": "ml-100k", "counterpart": "teacher",
            "entries": [{"label": "teacher", "model": "AdaRecNextItNetTeacher"},
                        {"label": "student", "model": "AdaRec", "config": {"teacher_checkpoint": "@teacher"}},
                        {"label": "EODRec", "model": "EODRec"}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    args, extra = build_parser().parse_known_args(["--plan", str(tmp_path / "plan.yaml")])
    counterparts = {e["label"]: e["counterpart"] for e in build_plan(args, extra)["entries"]}
    assert counterparts == {"teacher": "teacher", "student": "student/teacher", "EODRec": "EODRec/teacher"}


def test_only_runs_the_named_entries_and_what_they_need(tmp_path):
    """``--only``: a probe of some entries of a plan keeps their counterparts and the entries whose checkpoints they
    take ("@label"), nothing else; an unknown label is refused, naming the plan's labels."""
    from recbole_compress.benchmark import build_parser, build_plan
    from recbole_compress.errors import ConfigError

    def labels(plan_file, only):
        args, extra = build_parser().parse_known_args(["--plan", plan_file, "--data_path", str(tmp_path),
                                                       "--only", only])
        return [e["label"] for e in build_plan(args, extra)["entries"]]

    assert labels("benchmarks/all_five_beauty.yaml", "CpRec") == ["SASRec", "NextItNet-uncompressed", "CpRec"]
    assert labels("benchmarks/all_five_beauty.yaml", "EODRec,GRU4Rec") == ["SASRec", "GRU4Rec", "EODRec"]
    # GRU4Rec-codebook: its counterpart GRU4Rec, its codes fitted to GRU4Rec; the plain GRU4Rec row is its own
    # counterpart, so one backbone's group runs without the others
    assert labels("benchmarks/any_model_beauty.yaml", "GRU4Rec-codebook") == ["GRU4Rec", "GRU4Rec-codebook"]
    assert labels("benchmarks/adarec_beta_beauty.yaml", "beta=1") == ["teacher", "beta=1"]
    with pytest.raises(ConfigError, match="--only=LSAN: no entry labelled 'LSAN' in the plan .*LSAN-m2"):
        labels("benchmarks/all_five_beauty.yaml", "LSAN")


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_workers_of_a_killed_benchmark_stop_too(tmp_path):
    """``kill <pid>`` of a ``--jobs 2`` benchmark: its pool's workers (same initializer) end with it instead of
    training on unseen."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "import multiprocessing\n"
        "from recbole_compress.benchmark import _worker_dies_with_parent\n"
        "def work():\n"
        "    import os, sys, time\n"
        "    sys.stdout.write(f'{os.getpid()}\\n'); sys.stdout.flush()  # one write: print's two could interleave\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn'),\n"
        "                             initializer=_worker_dies_with_parent) as pool:\n"
        "        pool.submit(work); pool.submit(work)\n"
        "        time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env=dict(os.environ, PYTHONPATH=os.getcwd()))
    workers = [int(parent.stdout.readline()) for _ in range(2)]

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    assert all(alive(pid) for pid in workers)
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)
    deadline = time.time() + 30
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)


def test_a_training_made_under_other_defaults_is_not_reused(tiny_data_path, tmp_path, capsys, monkeypatch):
    """A plan leaves most keys to the model's defaults: after a default changes, an earlier training of the same
    entry (here or in a --reuse_from folder) is trained again, not taken as it is."""
    import recbole_compress.config as config_module

    out = tmp_path / "bench"
    args = [a if a != "SASRec,GRU4Rec" else "SASRec" for a in _args(tiny_data_path, out, "--seeds", "2020")
            if not a.startswith("--embedding_size")]
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert "SASRec@2020: done in an earlier run, reused" in capsys.readouterr().out

    real = config_module.properties_path
    changed = tmp_path / "SASRec.yaml"
    changed.write_text("n_layers: 1\n")  # SASRec's default is 2: the same plan now trains another model
    monkeypatch.setattr(config_module, "properties_path",
                        lambda *parts: str(changed) if parts == ("model", "SASRec.yaml") else real(*parts))
    other = [a if a != str(out) else str(tmp_path / "other") for a in args]
    assert main(other + ["--reuse_from", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0 finished trainings reused" in printed and "SASRec@2020: done in an earlier run" not in printed
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "SASRec@2020: done in an earlier run" not in printed
    runs = json.load(open(out / "results.json"))["runs"]
    from recbole_compress.checkpoint import load_checkpoint

    assert load_checkpoint(runs["SASRec@2020"]["checkpoint"])["config"]["n_layers"] == 1


def test_a_key_added_at_its_neutral_default_keeps_the_defaults_digest():
    """A key added later with a ``neutral`` default (LSAN's ``base_table_order: id``, the order the model always
    used) leaves the defaults digest as it was before the key existed; another default changes it."""
    from recbole_compress.benchmark import defaults_digest
    from recbole_compress.run import make_config

    config = make_config("LSAN", "ml-100k", None, {"state": "ERROR"}, read_cmd_line=False)
    assert config.internal_config_dict["base_table_order"] == "id"
    now = defaults_digest(config)
    del config.internal_config_dict["base_table_order"]  # the defaults before the key was added
    assert defaults_digest(config) == now
    config.internal_config_dict["base_table_order"] = "frequency"
    assert defaults_digest(config) != now
    config.internal_config_dict["base_table_order"] = "id"
    config.internal_config_dict["hidden_size"] = 32  # a key without a neutral value counts at any default
    assert defaults_digest(config) != now


def test_a_results_revision_makes_the_trainings_before_a_fix_stale_and_only_that_models(monkeypatch):
    """A fix that changes a model's results without a setting raises ``results_revision`` on its model or trainer:
    the defaults digest changes for that model (its earlier trainings are made again) and for no other."""
    from recbole_compress.benchmark import defaults_digest
    from recbole_compress.run import make_config
    from recbole_compress.trainer.adarec import AdaRecTrainer

    adarec = make_config("AdaRec", "ml-100k", None, {"state": "ERROR"}, read_cmd_line=False)
    sasrec = make_config("SASRec", "ml-100k", None, {"state": "ERROR"}, read_cmd_line=False)
    now, other = defaults_digest(adarec), defaults_digest(sasrec)
    monkeypatch.setattr(AdaRecTrainer, "results_revision", 0)
    before_fix = defaults_digest(adarec)
    assert before_fix != now and defaults_digest(sasrec) == other
    monkeypatch.setattr(AdaRecTrainer, "results_revision", 2)
    assert defaults_digest(adarec) not in (now, before_fix)


def test_a_record_older_than_the_defaults_digest_is_not_reused_for_a_revised_model():
    """Records written before the benchmark recorded defaults (no ``defaults_digest``) predate every results
    revision: they are reused for a model whose results were never revised, not for AdaRec (revised by a fix)."""
    from recbole_compress.benchmark import same_defaults

    old = {"defaults_digest": None}
    assert same_defaults(old, {"model": "SASRec", "defaults_digest": "abc"})
    assert not same_defaults(old, {"model": "AdaRec", "defaults_digest": "abc"})
    assert same_defaults({"defaults_digest": "abc"}, {"model": "AdaRec", "defaults_digest": "abc"})
    assert not same_defaults({"defaults_digest": "abd"}, {"model": "AdaRec", "defaults_digest": "abc"})


def test_jobs_1_trains_at_one_thread_too(monkeypatch):
    """``--jobs 1`` trains in the benchmark's own process: at one thread, as a ``--jobs 2`` worker does (the
    protocol's "one thread per training"), and the process's thread count is back afterwards for the timing."""
    import recbole_compress.benchmark as benchmark

    seen = []
    monkeypatch.setattr(benchmark, "train_entry", lambda *args: seen.append(torch.get_num_threads()) or ([], []))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        benchmark._train_wave({}, [({}, 2020, "d", {"label": "A"}), ({}, 2021, "d", {"label": "A"})], "out", 1,
                              lambda *args, **kwargs: None)
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_committed_results_file_gives_its_accuracy_without_its_checkpoints(tiny_data_path, tmp_path, capsys):
    """``--reuse_from docs/benchmarks/<plan>.json``: a training recorded in a committed results file, whose
    checkpoint is not on this machine, counts for accuracy (not trained again, compared with the new rows on the same
    users) but is not timed; an entry that takes its checkpoint ("@label") trains it again."""
    first = tmp_path / "first"
    sasrec_only = _args(tiny_data_path, first, "--seeds", "2020")
    sasrec_only[sasrec_only.index("--models") + 1] = "SASRec"
    sasrec_only = [a for a in sasrec_only if not a.startswith("--embedding_size")]
    assert main(sasrec_only) == 0
    committed = tmp_path / "committed.json"
    committed.write_text((first / "results.json").read_text())
    # a table put together from that file (--report_only) while the checkpoint is still here carries the timing
    # its run measured, as it does on a machine without the checkpoint (below)
    timed_then = json.load(open(committed))["summary"][0]
    here = [a if a != str(first) else str(tmp_path / "here") for a in sasrec_only] + ["--report_only"]
    assert main(here + ["--reuse_from", str(committed)]) == 0
    rows = {r["label"]: r for r in json.load(open(tmp_path / "here" / "results.json"))["summary"]}
    assert rows["SASRec"]["infer_ms_per_batch"] == timed_then["infer_ms_per_batch"]
    import shutil
    shutil.rmtree(first)  # a new checkout: the committed file is all that is left
    capsys.readouterr()

    out = tmp_path / "second"
    assert main(_args(tiny_data_path, out, "--seeds", "2020", "--reuse_from", str(committed))) == 0
    printed = capsys.readouterr().out
    assert "SASRec@2020: done in an earlier run, reused (its checkpoint is not here" in printed
    assert "SASRec@2020: training" not in printed and "GRU4Rec@2020: training" in printed
    results = json.load(open(out / "results.json"))
    rows = {r["label"]: r for r in results["summary"]}
    old = json.load(open(committed))["runs"]["SASRec@2020"]
    assert rows["SASRec"]["ndcg@10"] == pytest.approx(old["test_result"]["ndcg@10"])
    assert rows["GRU4Rec"]["ndcg@10_ratio_ci_low"] <= rows["GRU4Rec"]["ndcg@10_ratio"]
    # its timing is the one its own run measured (that run timed its first seed), and the table says so
    assert rows["SASRec"]["infer_ms_per_batch"] == timed_then["infer_ms_per_batch"]
    assert rows["GRU4Rec"]["infer_ms_per_batch"] > 0 and "infer_ratio" not in rows["GRU4Rec"]
    assert "SASRec with the timing that run measured" in (out / "results.md").read_text()
    # the same folder again, without --reuse_from: the reused record stays done
    assert main(_args(tiny_data_path, out, "--seeds", "2020")) == 0
    assert ": training" not in capsys.readouterr().out

    # --report_only puts a table together from committed files alone (no training, no timing); with nothing to
    # report from it refuses
    assemble = [a if a != str(first) else str(tmp_path / "assembled") for a in sasrec_only] + ["--report_only"]
    assert main(assemble) == 2 and "nor --reuse_from" in capsys.readouterr().err
    assert main(assemble + ["--reuse_from", str(committed)]) == 0
    assert ": training" not in capsys.readouterr().out
    rows = {r["label"]: r for r in json.load(open(tmp_path / "assembled" / "results.json"))["summary"]}
    assert rows["SASRec"]["ndcg@10"] == pytest.approx(old["test_result"]["ndcg@10"])
    assert rows["SASRec"]["infer_ms_per_batch"] == timed_then["infer_ms_per_batch"]

    # a results file without a summary (no timing): the row is reused for its accuracy and said to be untimed
    bare = json.load(open(committed))
    bare.pop("summary")
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert main(_args(tiny_data_path, tmp_path / "fourth", "--seeds", "2020", "--reuse_from",
                      str(tmp_path / "bare.json"))) == 0
    rows = {r["label"]: r for r in json.load(open(tmp_path / "fourth" / "results.json"))["summary"]}
    assert "infer_ms_per_batch" not in rows["SASRec"] and "ndcg@10_ratio" in rows["GRU4Rec"]
    assert "not timed: SASRec" in (tmp_path / "fourth" / "results.md").read_text()
    capsys.readouterr()

    # an entry that takes SASRec's checkpoint makes SASRec train again
    plan = {"dataset": "tiny", "seeds": [2020], "epochs": 2,
            "config": {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "hidden_size": 8,
                       "inner_size": 16, "MAX_ITEM_LIST_LENGTH": 10, "state": "ERROR",
                       "train_batch_size": 64},
            "entries": [{"label": "SASRec", "model": "SASRec"},
                        {"label": "SASRec-codebook", "model": "SASRec",
                         "config": {"item_compression": "codebook", "num_codebooks": 2, "codebook_size": 4,
                                    "codebook_teacher": "@SASRec"}}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert main(["--plan", str(tmp_path / "plan.yaml"), "--data_path", tiny_data_path, "--output_dir",
                 str(tmp_path / "third"), "--infer_batch_users", "16", "--infer_batches", "1", "--repeats", "1",
                 "--reuse_from", str(committed)]) == 0
    printed = capsys.readouterr().out
    assert "0 finished trainings reused" in printed and "SASRec@2020: training" in printed
    # ... but a table put together from committed files alone (--report_only trains nothing) keeps that row
    assert main(["--plan", str(tmp_path / "plan.yaml"), "--data_path", tiny_data_path, "--output_dir",
                 str(tmp_path / "fifth"), "--report_only", "--reuse_from", str(committed)]) == 0
    assert "1 finished trainings reused" in capsys.readouterr().out
    rows = {r["label"]: r for r in json.load(open(tmp_path / "fifth" / "results.json"))["summary"]}
    assert rows["SASRec"]["ndcg@10"] == pytest.approx(old["test_result"]["ndcg@10"])


def test_the_timing_runs_at_one_thread_unless_asked_otherwise(tiny_data_path, tmp_path, monkeypatch):
    """More threads than free cores (next to another run) make timings meaningless: the timing runs at one thread by
    default, at --timing_threads N if given, and the table says at how many; torch's setting is restored."""
    import recbole_compress.benchmark as bench

    seen = []
    monkeypatch.setattr(bench, "measure", lambda plan, runs, repeats=5: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = _args(tiny_data_path, tmp_path / "t", "--seeds", "2020", "--epochs", "1")
        assert main(args) == 0
        assert "Timed at 1 torch thread." in (tmp_path / "t" / "results.md").read_text()
        assert main(args + ["--timing_threads", "2"]) == 0  # trainings reused: only the timing runs again
        assert "Timed at 2 torch threads." in (tmp_path / "t" / "results.md").read_text()
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="flock is POSIX's")
def test_two_benchmarks_never_share_an_output_folder(tiny_data_path, tmp_path, capsys):
    """A second benchmark on a folder another one is using stops before any work (exit 2, the holder named), and the
    folder is free again as soon as the holder ends, even killed."""
    import subprocess
    import sys

    out = tmp_path / "bench"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom recbole_compress.benchmark import claim_output_dir\n"
         f"lock = claim_output_dir({str(out)!r}, 'the first benchmark')\nprint('held', flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_args(tiny_data_path, out, "--seeds", "2020")) == 2
        printed = capsys.readouterr()
        assert f"--output_dir {out} is in use by another benchmark" in printed.err
        assert "the first benchmark" in printed.err and ": training" not in printed.out
        assert not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    from recbole_compress.benchmark import claim_output_dir
    again = claim_output_dir(str(out), "after the holder was killed")
    assert again is not None
    again.close()


def test_reuse_from_takes_several_files_at_once_and_repeats():
    """``--reuse_from a.json b.json`` (what a shell pattern expands to) and a repeated flag add up, and the overrides
    for every entry that follow stay overrides."""
    from recbole_compress.benchmark import build_parser

    args, extra = build_parser().parse_known_args(
        ["--models", "SASRec", "--reuse_from", "a.json", "b.json", "--reuse_from", "c", "--hidden_size=8"])
    assert args.reuse_from == ["a.json", "b.json", "c"] and extra == ["--hidden_size=8"]


def test_a_table_from_trainings_on_different_cpus_says_so():
    """A retrained convolutional model does not repeat its numbers on a CPU with another instruction set, so a table
    pooling trainings from two such CPUs says which ran where; runs from before this was recorded are not counted."""
    from recbole_compress.benchmark import _note_mixed_cpus

    def run(capability):
        return {"trained_on": {"torch": "2.13.0", "cpu_capability": capability}} if capability else {}

    same = {"a@1": run("AVX512"), "b@1": run("AVX512"), "c@1": run(None)}
    assert _note_mixed_cpus(same, "Timed at 1 torch thread.") == "Timed at 1 torch thread."
    mixed = dict(same, **{"a@2": run("AVX2")})
    note = _note_mixed_cpus(mixed, "Timed at 1 torch thread.")
    assert note.startswith("Timed at 1 torch thread. ") and "AVX2: 1, AVX512: 2" in note
