"""The benchmark harness on two tiny models: table, JSON, PNG, ratios, and resuming without retraining."""
import json
import os

from recbole_compress.benchmark import main
from recbole_compress.profiling import count_parameters, peak_memory, state_dict_bytes

import torch


def test_benchmark_two_tiny_models(tiny_data_path, tmp_path, capsys):
    out = tmp_path / "bench"
    args = [
        "--models", "SASRec,GRU4Rec", "--dataset", "tiny", "--data_path", tiny_data_path, "--epochs", "1",
        "--output_dir", str(out), "--infer_batch_users", "16", "--infer_batches", "2", "--repeats", "2",
        "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}", "--hidden_size=8", "--embedding_size=8",
        "--inner_size=16", "--MAX_ITEM_LIST_LENGTH=10", "--state=ERROR", "--train_batch_size=64",
    ]
    assert main(args) == 0
    for name in ("results.json", "results.md", "pareto.png"):
        assert (out / name).stat().st_size > 0
    with open(out / "results.json") as f:
        results = json.load(f)
    rows = {r["label"]: r for r in results["summary"]}
    sas, gru = rows["SASRec"], rows["GRU4Rec"]
    assert gru["counterpart"] == "SASRec"
    assert abs(gru["params_ratio"] - gru["params"] / sas["params"]) < 1e-12
    assert abs(gru["bytes_ratio"] - gru["state_dict_bytes"] / sas["state_dict_bytes"]) < 1e-12
    for row in (sas, gru):
        assert 0 <= row["ndcg@10"] <= 1 and row["infer_ms_per_batch"] > 0
        assert row["train_peak_bytes"] > 0 and row["infer_peak_bytes"] > 0 and row["train_seconds_per_epoch"] > 0
    assert gru["infer_ratio"] > 0 and "infer_ratio" not in sas
    with open(out / "results.md") as f:
        table = f.read()
    assert "| GRU4Rec | SASRec |" in table

    # an interrupted run resumes: finished trainings are reused, not redone
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "SASRec@2020: done in an earlier run, reused" in printed and "GRU4Rec@2020: done" in printed


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
