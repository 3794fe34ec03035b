"""Shared fixtures: a tiny generated dataset in RecBole atomic format, and small configs that train in seconds."""
import os

import numpy as np
import pytest

N_USERS = 60
N_ITEMS = 40
N_CATEGORIES = 5


def write_tiny_dataset(root, name="tiny", n_users=N_USERS, n_items=N_ITEMS, seed=0, min_len=8, max_len=16):
    """Users walk through the catalogue with a learnable next-item pattern; real-looking timestamps (hours vary)
    and one category per item in an .item file (field ``categories``)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, n_users + 1):
        length = int(rng.integers(min_len, max_len + 1))
        item = int(rng.integers(1, n_items + 1))
        t = 1_600_000_000 + int(rng.integers(0, 86_400 * 30))
        for _ in range(length):
            lines.append(f"u{u}\ti{item}\t{int(rng.integers(1, 6))}\t{t}")
            step = 1 if rng.random() < 0.8 else int(rng.integers(2, 5))
            item = (item - 1 + step) % n_items + 1
            t += int(rng.integers(600, 7 * 3600))
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    item_lines = ["item_id:token\tcategories:token"]
    for i in range(1, n_items + 1):
        item_lines.append(f"i{i}\tc{(i - 1) % N_CATEGORIES}")
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write("\n".join(item_lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory):
    return write_tiny_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def tiny_config(tiny_data_path, tmp_path):
    """config_dict of a tiny, fast run on the generated dataset (1 epoch, tiny widths, quiet). It sets the small
    widths of every model (hidden_size, embedding_size, ...), so a model warns about the ones it does not read
    instead of refusing them (strict_config_keys: False); tests of the key check set it back to True."""
    return {
        "dataset": "tiny",
        "data_path": tiny_data_path,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "stopping_step": 2,
        "show_progress": False,
        "state": "ERROR",
        "checkpoint_dir": str(tmp_path / "saved"),
        "log_wandb": False,
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 8,
        "inner_size": 16,
        "embedding_size": 8,
        "n_layers": 1,
        "n_heads": 1,
        "reproducibility": True,
        "strict_config_keys": False,
    }
