"""Pieces shared by the plugin's command lines (``run_recbole_compress.py``, its ``--tune`` search, the benchmark):
``--key=value`` overrides, the "did you mean" for them, one-line errors with exit code 2, Markdown tables.
"""
import argparse
import sys
import warnings

from recbole_compress.errors import ConfigError
from recbole_compress.preflight import closest_keys, run_keys

#: The RecBole keys most runs set, listed by ``--help`` (RecBole's full list: https://recbole.io/docs/user_guide/config/parameters.html).
COMMON_KEYS = (
    ("epochs", "training epochs (RecBole: 300; without a GPU the CLI plans a short CPU budget, see README)"),
    ("stopping_step", "early-stopping patience in validations (RecBole: 10)"),
    ("train_batch_size", "training batch size (RecBole: 2048)"),
    ("learning_rate", "learning rate (RecBole: 0.001)"),
    ("MAX_ITEM_LIST_LENGTH", "longest history a sequential model reads (RecBole: 50)"),
    ("data_path", "folder holding <dataset>/<dataset>.inter (not needed for ml-100k)"),
    ("load_col", "columns to load, e.g. \"{'inter': ['user_id', 'item_id', 'timestamp']}\""),
    ("seed", "random seed (RecBole: 2020)"),
    ("valid_metric", "early-stopping metric, e.g. NDCG@10 (RecBole: MRR@10)"),
    ("checkpoint_dir", "checkpoint folder (default saved/)"),
    ("hidden_size", "model width, for models that have one"),
    ("resume", "a checkpoint of this run to continue training from"),
    ("strict_config_keys", "False: only warn about keys no part of the run reads"),
)


#: Deprecation noise from RecBole's own code (pandas chained assignment, torch.cuda.amp) and from ray's import of
#: pkg_resources, filtered narrowly by message and module; the plugin's own warnings are never hidden.
KNOWN_NOISE = (
    (FutureWarning, r"A value is trying to be set on a copy of a DataFrame", r"recbole\."),
    (FutureWarning, r"using <built-in function len> in Series\.agg", r"recbole\."),
    (FutureWarning, r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"recbole\."),
    (UserWarning, r"pkg_resources is deprecated", r"ray\."),
    (DeprecationWarning, r"pkg_resources is deprecated", r"ray\."),
)


def quiet_known_noise():
    """Hide the known deprecation noise of RecBole and ray (:data:`KNOWN_NOISE`) in this process."""
    for category, message, module in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def common_keys_help():
    """The ``--help`` epilog: the common RecBole keys, one line each."""
    width = max(len(k) for k, _ in COMMON_KEYS) + 4
    lines = ["any RecBole or model key as --key=value, e.g.:"]
    lines += [f"  --{key}=...".ljust(width + 8) + text for key, text in COMMON_KEYS]
    lines.append("all of RecBole's keys: https://recbole.io/docs/user_guide/config/parameters.html; each model's "
                 "keys: properties/model/<Model>.yaml")
    return "\n".join(lines)


def parse_bool(value):
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_value(text):
    """A --key=value value, converted like RecBole converts its command line."""
    from recbole_compress.config import Config

    return Config._convert_config_dict(None, {"v": text})["v"]


def parse_overrides(extra):
    """``--key=value`` pairs into a dict of strings (RecBole's Config converts the values as for its command line)."""
    overrides = {}
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"unrecognised argument {arg!r}: configuration overrides are written --key=value")
        key, value = arg[2:].split("=", 1)
        if not key:
            raise ConfigError(f"unrecognised argument {arg!r}: empty key")
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"--{key} is given twice with different values ({overrides[key]!r}, {value!r})")
        overrides[key] = value
    return overrides


def keys_of_models(models, overrides=None):
    """``{model: the keys a run of it reads}``, with the phase models the overrides choose (``teacher_model``)."""
    from recbole_compress.phases import phases_of

    known = {}
    for model in models:
        chosen = {p.prefix: (overrides or {}).get(p.prefix + "model") for p in phases_of(model) if p.configurable}
        known[model] = run_keys(model, {k: v for k, v in chosen.items() if v})
    return known


def check_override_keys(models, overrides, strict=True):
    """Refuse override keys that no model of the run reads (with a "did you mean" among the keys this run reads);
    print a note for keys only some of them read. Returns :func:`keys_of_models`."""
    known = keys_of_models(models, overrides)
    problems, partial = [], []
    for key in overrides:
        readers = [m for m in models if key in known[m]]
        if not readers:
            close = closest_keys(key, set().union(*known.values()))
            problems.append(f"--{key}" + (f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""))
        elif len(readers) < len(models):
            partial.append(f"--{key} is read by {', '.join(readers)} only")
    if problems:
        message = (
            f"unknown configuration key(s) for {', '.join(models)}: {'; '.join(problems)}. No part of the run reads "
            f"them, so RecBole would silently ignore them."
        )
        if strict:
            raise ConfigError(message + " Pass --strict_config_keys=False to only warn.")
        print("WARNING: " + message, file=sys.stderr)
    for line in partial:
        print("NOTE: " + line, file=sys.stderr)
    return known


BUDGET_FILE = ("preset", "cpu_budget.yaml")


def cpu_budget(overrides):
    """On a machine without a GPU: the CPU budget preset (its path and the settings it adds, those the user did not
    set on the command line), else None. It goes first among the config files, so the user's files win over it."""
    import torch
    import yaml

    from recbole_compress import properties_path

    if torch.cuda.is_available():
        return None
    path = properties_path(*BUDGET_FILE)
    with open(path, encoding="utf-8") as f:
        budget = yaml.safe_load(f) or {}
    added = {k: v for k, v in budget.items() if k not in overrides}
    return (path, added) if added else None


def announce_budget(budget):
    path, added = budget
    settings = ", ".join(f"{k}={v}" for k, v in added.items())
    print(f"No GPU found: a CPU budget applies ({settings}; from {path}; your config files and "
          f"--key=value settings win). For RecBole's full budget pass --epochs=300 --stopping_step=10 "
          f"--train_batch_size=2048 --learning_rate=0.001.", file=sys.stderr, flush=True)


def report_error(error):
    """Print a user error in one block (no traceback) and return the exit code 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def format_table(rows, columns):
    """A Markdown table of ``rows`` (dicts) over ``columns`` (list of (key, header))."""
    header = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key, "")
            cells.append(f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
