"""benchmarks/eodrec_code_capacity.py: the composite table codes of a given size give for a trained item table."""
import importlib.util
import os

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "eodrec_code_capacity.py")
spec = importlib.util.spec_from_file_location("eodrec_code_capacity", SCRIPT)
capacity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(capacity)


def test_sizes_are_parsed_and_bad_ones_refused():
    assert capacity.parse_sizes("4x32, 2x256") == [(4, 32), (2, 256)]
    for bad in ("4", "4x1", "ax32", "0x8"):
        with pytest.raises(SystemExit, match="--sizes"):
            capacity.parse_sizes(bad)


def test_more_code_capacity_reconstructs_a_table_better_and_codes_are_unique():
    torch.manual_seed(0)
    # 200 items around 40 cluster centres: few codes can only give the centres, enough codes nearly every item
    centres = torch.randn(40, 16) * 3
    x = torch.cat([torch.zeros(1, 16), centres.repeat_interleave(5, 0) + 0.3 * torch.randn(200, 16)])
    small, small_stats = capacity.composite_table(x, 1, 8, steps=300, seed=0)
    large, large_stats = capacity.composite_table(x, 2, 64, steps=300, seed=0)
    assert small.shape == large.shape == x.shape and torch.equal(large[0], torch.zeros(16))
    assert large_stats["relative_reconstruction_error"] < 0.5 * small_stats["relative_reconstruction_error"]
    assert large_stats["unresolved"] == 0  # 64^2 tuples for 200 items: every item gets its own
    keys = {tuple(row) for row in large[1:].round(decimals=5).tolist()}
    assert len(keys) == 200  # unique codes give distinct composite vectors


def test_the_probe_evaluates_the_teacher_on_each_code_size_and_keeps_every_result(tmp_path):
    import json

    from conftest import write_tiny_dataset
    from recbole_compress.quick_start import run_recbole_compress

    root = write_tiny_dataset(str(tmp_path / "data"))
    cfg = {"dataset": "tiny", "data_path": root, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
           "epochs": 1, "train_batch_size": 64, "eval_batch_size": 256, "show_progress": False, "state": "ERROR",
           "checkpoint_dir": str(tmp_path / "saved"), "MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 8, "inner_size": 8,
           "n_heads": 2}
    teacher = run_recbole_compress("EODRecTeacher", "tiny", config_dict=cfg, read_cmd_line=False)["checkpoint"]
    output = tmp_path / "probe" / "capacity.json"
    assert capacity.main(["--teacher_checkpoint", teacher, "--sizes", "1x2,2x8", "--steps", "20",
                          "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert set(result["sizes"]) == {"1x2", "2x8"}
    for stats in result["sizes"].values():
        assert 0.0 <= stats["test"]["ndcg@10"] <= 1.0 and stats["paper_ratio"] > 0
    # two code values for all items reconstruct the teacher's table worse than 64 tuples
    errors = {size: stats["relative_reconstruction_error"] for size, stats in result["sizes"].items()}
    assert errors["1x2"] > errors["2x8"]


def test_residual_kmeans_codes_recover_a_table_built_from_codes():
    # every item is the sum of one vector from each of two codebooks at different scales, each tuple used once:
    # residual k-means must find both codebooks (near-zero error); one codebook alone can only give the first
    torch.manual_seed(1)
    books = torch.stack([torch.randn(6, 8) * 10, torch.randn(6, 8) * 2])
    codes = torch.cartesian_prod(torch.arange(6), torch.arange(6))
    items = books[0][codes[:, 0]] + books[1][codes[:, 1]] + 0.01 * torch.randn(36, 8)
    x = torch.cat([torch.zeros(1, 8), items])
    table, stats = capacity.composite_table(x, 2, 6, steps=0, seed=0, codes_from="residual")
    assert stats["codes_from"] == "residual" and stats["unresolved"] == 0 and table.shape == x.shape
    assert stats["relative_reconstruction_error"] < 0.05
    _, one_stats = capacity.composite_table(x, 1, 6, steps=0, seed=0, codes_from="residual")
    assert one_stats["relative_reconstruction_error"] > 10 * stats["relative_reconstruction_error"]
