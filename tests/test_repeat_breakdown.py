"""benchmarks/repeat_breakdown.py: a row against its counterpart, split by whether the test item is a repeat."""
import importlib.util
import json
import math
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "repeat_breakdown.py")
spec = importlib.util.spec_from_file_location("repeat_breakdown", SCRIPT)
breakdown = importlib.util.module_from_spec(spec)
spec.loader.exec_module(breakdown)


def test_a_model_that_fails_only_on_repeats_shows_it_in_the_repeat_row_alone():
    groups = [0, 0, 0, 1, 1]           # the last two users' test items repeat their history
    counterpart = [[0, 1, -1, 0, 2]]   # one seed; 0-based ranks in the top 10, -1: not in it
    model = [[0, 1, -1, -1, -1]]
    new, repeat = breakdown.group_breakdown(model, counterpart, groups, ["new item", "repeat"], replicates=200)
    assert (new["users"], repeat["users"]) == (3, 2) and new["share"] == pytest.approx(0.6)
    assert new["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3) and new["ratio"] == pytest.approx(1.0)
    assert new["ci"] == pytest.approx([1.0, 1.0])
    assert repeat["ndcg@10"] == 0.0 and repeat["counterpart_ndcg@10"] == pytest.approx((1 + 0.5) / 2)
    assert repeat["ratio"] == 0.0 and repeat["ci"][1] == 0.0
    # two seeds are pooled: the second seed's misses halve the new-item ratio
    two = breakdown.group_breakdown(model + [[-1, -1, -1, -1, -1]], counterpart, groups, ["new item", "repeat"])
    assert two[0]["ratio"] == pytest.approx(0.5)


def _repeat_users_from_the_file(inter_path):
    """Users whose last item (by time) occurs earlier in their sequence, read from the raw atomic file."""
    sequences = {}
    with open(inter_path) as f:
        next(f)
        for line in f:
            user, item, _, t = line.rstrip("\n").split("\t")
            sequences.setdefault(user, []).append((float(t), item))
    repeats = set()
    for user, events in sequences.items():
        items = [item for _, item in sorted(events)]
        if items[-1] in items[:-1]:
            repeats.add(user)
    return repeats


def test_the_script_finds_the_repeat_users_of_the_data_and_splits_the_rows_by_them(tmp_path, capsys):
    from conftest import write_tiny_dataset
    from recbole_compress.quick_start import run_recbole_compress

    root = write_tiny_dataset(str(tmp_path / "data"), n_items=12)  # walks wrap around a small catalogue: repeats
    cfg = {"dataset": "tiny", "data_path": root, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
           "epochs": 1, "train_batch_size": 64, "eval_batch_size": 256, "show_progress": False, "state": "ERROR",
           "checkpoint_dir": str(tmp_path / "saved"), "MAX_ITEM_LIST_LENGTH": 30, "hidden_size": 8, "inner_size": 8,
           "n_heads": 2}
    checkpoint = run_recbole_compress("SASRec", "tiny", config_dict=cfg, read_cmd_line=False)["checkpoint"]
    repeats = breakdown.repeats_of(checkpoint)
    expected = _repeat_users_from_the_file(os.path.join(root, "tiny", "tiny.inter"))
    assert 0 < len(expected) < 60 and int(repeats.sum()) == len(expected)

    # a results file whose row ranks every repeat user's item first and misses every other: the repeat row shows
    # ratio 1, the new-item row 0 -- which holds only if the script's users line up with the data's
    from recbole_compress.run import restore

    restored = restore(checkpoint)
    uid = restored.config["USER_ID_FIELD"]
    users = [restored.data.dataset.id2token(uid, int(u)) for batch in restored.data.test for u in batch[0][uid]]
    ranks = [0 if u in expected else -1 for u in users]
    runs = {"Row@2020": {"test_ranks": ranks, "counterpart": "Base", "checkpoint": checkpoint},
            "Base@2020": {"test_ranks": [0] * len(users), "checkpoint": checkpoint}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"test_users": users, "runs": runs}))
    assert breakdown.main([str(path), "--label", "Row"]) == 0
    table = capsys.readouterr().out
    assert "Row against Base, seeds 2020" in table
    assert f"| new item | {60 - len(expected)} |" in table and "| 0.000 [0.000, 0.000] |" in table
    assert f"| repeat | {len(expected)} |" in table and "| 1.000 [1.000, 1.000] |" in table
    share = len(expected) / 60  # every user: the repeat users' NDCG@10 is 1, the others' 0, the counterpart's 1
    assert f"| all | 60 | 100.0% | {share:.4f} | 1.0000 | {share:.3f} [" in table
    with pytest.raises(SystemExit, match="--label 'Nope'"):
        breakdown.main([str(path), "--label", "Nope"])
