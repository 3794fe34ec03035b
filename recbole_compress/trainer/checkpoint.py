"""Checkpoints that load with ``torch.load(weights_only=True)``, the default since torch 2.6.

RecBole pickles its whole ``Config`` object into every checkpoint, so torch >= 2.6 refuses to load them and
``Trainer.evaluate(load_best_model=True)``, ``resume_checkpoint`` and ``load_data_and_model`` fail. A plugin
checkpoint stores the configuration as plain data instead, plus a fingerprint of the dataset's item-id mapping
(a hash of the item token list) so that a checkpoint is never used with another dataset's ids.

Nothing here ever unpickles arbitrary objects: a file that needs it (a RecBole checkpoint, or a crafted file that
would run code) is refused with :class:`CheckpointError` before anything in it runs.
"""
import datetime
import hashlib
import os
import pickle
import uuid
from enum import Enum

import numpy as np
import torch

from recbole.utils import EvaluatorType, InputType, ModelType

CHECKPOINT_FORMAT = "recbole_compress.checkpoint/1"

_ENUMS = {cls.__name__: cls for cls in (ModelType, InputType, EvaluatorType)}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unsafe to load, not a plugin checkpoint, or made for other data."""


def unique_checkpoint_name(model_name):
    """``<model>-<local time to the microsecond>-<pid>-<random>.pth``: parallel runs never write the same file."""
    stamp = datetime.datetime.now().strftime("%b-%d-%Y_%H-%M-%S-%f")
    return f"{model_name}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.pth"


def item_fingerprint(dataset):
    """SHA-256 of the dataset's item token list (the id mapping a model's item tables are indexed by)."""
    tokens = dataset.field2id_token[dataset.iid_field]
    digest = hashlib.sha256()
    digest.update(str(len(tokens)).encode())
    for token in tokens:
        digest.update(b"\x1f" + str(token).encode("utf-8"))
    return digest.hexdigest()


def _to_plain(value):
    if isinstance(value, Enum):
        cls = type(value).__name__
        if cls in _ENUMS:
            return {"__enum__": cls, "name": value.name}
        return value.value
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _from_plain(value):
    if isinstance(value, dict):
        if set(value) == {"__enum__", "name"}:
            return _ENUMS[value["__enum__"]][value["name"]]
        if set(value) == {"__device__"}:
            return torch.device(value["__device__"])
        return {k: _from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_plain(v) for v in value]
    return value


def config_to_plain(config):
    """The final configuration as plain data (dicts, lists, numbers, strings) for a weights-only checkpoint."""
    return _to_plain(dict(config.final_config_dict))


def config_from_plain(plain):
    """A :class:`recbole_compress.config.Config` rebuilt from :func:`config_to_plain` output, for this machine."""
    from recbole_compress.config import Config

    config = Config.__new__(Config)
    config._read_cmd_line = False
    config.compatibility_settings()
    config._init_parameters_category()
    config.yaml_loader = config._build_yaml_loader()
    final = _from_plain(plain)
    # a checkpoint made on a GPU machine is evaluated on this one's device
    final["device"] = torch.device("cuda") if torch.cuda.is_available() and final.get("use_gpu", True) else torch.device("cpu")
    final["single_spec"] = True
    final["local_rank"] = 0
    config.final_config_dict = final
    config.model = final["model"]
    config.dataset = final["dataset"]
    from recbole_compress.utils import get_model

    config.model_class = get_model(final["model"])
    return config


def save_checkpoint(state, path):
    """Write ``state`` atomically (a half-written file never replaces a good one)."""
    state = dict(state)
    state.setdefault("format", CHECKPOINT_FORMAT)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """Load a plugin checkpoint with ``weights_only=True``; refuse anything else with a clear error.

    Raises:
        CheckpointError: missing file, a file that needs unpickling of Python objects (RecBole's own checkpoints,
            or a crafted file: nothing in it runs), or a file that is not a recbole-compress checkpoint.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        reason = next((line for line in first if "Unsupported global" in line or "GLOBAL" in line), first[0] if first else "")
        raise CheckpointError(
            f"refusing to load {path!r}: it contains pickled Python objects that loading would execute "
            f"({reason.strip()}). recbole-compress loads checkpoints with torch.load(weights_only=True) only. "
            f"RecBole's own checkpoints (which pickle the Config) are refused for the same reason: retrain the model "
            f"through recbole-compress, or load a file you trust yourself with torch.load(weights_only=False)."
        ) from None
    except Exception as e:  # corrupt or truncated file
        raise CheckpointError(f"cannot read checkpoint {path!r}: {type(e).__name__}: {e}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path!r} is not a recbole-compress checkpoint (expected format {CHECKPOINT_FORMAT!r}, "
            f"found {checkpoint.get('format') if isinstance(checkpoint, dict) else type(checkpoint).__name__!r})"
        )
    return checkpoint


def check_item_mapping(checkpoint, dataset, path="checkpoint"):
    """Refuse a checkpoint whose item-id mapping differs from ``dataset``'s."""
    expected = checkpoint.get("item_fingerprint")
    if expected is None:
        return
    actual = item_fingerprint(dataset)
    if expected != actual:
        cfg = checkpoint.get("config") or {}
        raise CheckpointError(
            f"{path} was trained on dataset {cfg.get('dataset')!r} with another item-id mapping "
            f"({checkpoint.get('n_items')} item ids, fingerprint {expected[:12]}) than this run's dataset "
            f"{getattr(dataset, 'dataset_name', '?')!r} ({dataset.item_num} item ids, fingerprint {actual[:12]}): "
            f"its item tables would score the wrong items. Use a checkpoint made on the same dataset and filtering."
        )
