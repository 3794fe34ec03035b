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
import random
import uuid
from enum import Enum

import numpy as np
import torch

from recbole.utils import EvaluatorType, InputType, ModelType

from recbole_compress.errors import CheckpointError

CHECKPOINT_FORMAT = "recbole_compress.checkpoint/1"

_ENUMS = {cls.__name__: cls for cls in (ModelType, InputType, EvaluatorType)}


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


def to_plain(value):
    """``value`` as plain data (enums, devices and numpy values converted), for a weights-only checkpoint."""
    if isinstance(value, Enum):
        cls = type(value).__name__
        if cls in _ENUMS:
            return {"__enum__": cls, "name": value.name}
        return value.value
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def from_plain(value):
    """The inverse of :func:`to_plain` for enums and devices."""
    if isinstance(value, dict):
        if set(value) == {"__enum__", "name"}:
            return _ENUMS[value["__enum__"]][value["name"]]
        if set(value) == {"__device__"}:
            return torch.device(value["__device__"])
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    return value


def config_to_plain(config):
    """The final configuration of ``config`` as plain data (dicts, lists, numbers, strings) for a weights-only
    checkpoint; :func:`recbole_compress.config.config_from_plain` rebuilds it."""
    return to_plain(dict(config.final_config_dict))


def save_checkpoint(state, path):
    """Write ``state`` atomically (a half-written file never replaces a good one)."""
    state = dict(state)
    state.setdefault("format", CHECKPOINT_FORMAT)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    torch.save(state, tmp)
    os.replace(tmp, path)


_UNSAFE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _pickle_content(path):
    """What a non-zip file holds, read with :mod:`pickletools` (nothing runs): ``"unsafe"`` and the first global
    it names, ``"plain"`` (a plain-data pickle), or ``"unknown"`` (no pickle at all)."""
    import pickletools

    with open(path, "rb") as f:
        try:  # the whole file must be one pickle (random bytes can start with valid opcodes)
            opcodes = [(opcode.name, arg) for opcode, arg, _ in pickletools.genops(f)]
        except Exception:  # not a pickle stream
            return "unknown", None
        if f.read(1):  # bytes after the pickle's end
            return "unknown", None
    for name, arg in opcodes:
        if name in _UNSAFE_OPCODES:
            return "unsafe", f"{name} {arg}" if arg is not None else name
    return "plain", None


def _unreadable(path, size):
    """The :class:`CheckpointError` for a file ``torch.load(weights_only=True)`` cannot read, in words."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return CheckpointError(f"{path!r} is truncated or damaged ({size} bytes): its zip archive is incomplete")
        return None
    kind, detail = _pickle_content(path)
    if kind == "unsafe":
        return CheckpointError(
            f"refusing to load {path!r}: it contains pickled Python objects that loading would execute ({detail}). "
            f"recbole-compress loads checkpoints with torch.load(weights_only=True) only. RecBole's own checkpoints "
            f"(which pickle the Config) are refused for the same reason: retrain the model through recbole-compress, "
            f"or load a file you trust yourself with torch.load(weights_only=False)."
        )
    if kind == "plain":
        return CheckpointError(f"{path!r} is a plain Python pickle, not a checkpoint (recbole-compress checkpoints are "
                               f"written by torch.save)")
    return CheckpointError(f"{path!r} is not a checkpoint ({size} bytes of unrecognised content)")


def load_checkpoint(path, map_location="cpu"):
    """Load a plugin checkpoint with ``weights_only=True``; refuse anything else with a clear error.

    Raises:
        CheckpointError: a missing, empty, truncated or foreign file, a file that needs unpickling of Python objects
            (RecBole's own checkpoints, or a crafted file: nothing in it runs), or a dict without the plugin's format
            and configuration.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path!r} is empty (0 bytes): not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        error = _unreadable(path, size)
        if error is None and isinstance(e, pickle.UnpicklingError):
            lines = str(e).strip().splitlines()
            reason = next((line for line in lines if "Unsupported global" in line or "GLOBAL" in line), "")
            error = CheckpointError(
                f"refusing to load {path!r}: it contains pickled Python objects that loading would execute "
                f"({reason.strip()}). recbole-compress loads checkpoints with torch.load(weights_only=True) only. "
                f"RecBole's own checkpoints (which pickle the Config) are refused for the same reason: retrain the "
                f"model through recbole-compress, or load a file you trust yourself with torch.load(weights_only=False)."
            )
        raise (error or CheckpointError(f"{path!r} is truncated or damaged ({size} bytes): "
                                        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path!r} is not a recbole-compress checkpoint (expected format {CHECKPOINT_FORMAT!r}, found {found!r})"
        )
    if not isinstance(checkpoint.get("config"), dict) or "model" not in checkpoint["config"]:
        raise CheckpointError(f"{path!r} records no configuration: it was not written by a recbole-compress trainer")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path!r} holds no model weights (state_dict)")
    return checkpoint


def check_item_mapping(checkpoint, dataset, path="checkpoint", allow_unverified=False):
    """Refuse a checkpoint whose item-id mapping differs from ``dataset``'s, or that records none.

    ``allow_unverified=True`` (config key ``accept_unverified_checkpoints``) accepts a checkpoint without a recorded
    mapping, with a warning: nothing then guarantees that its item tables score the right items.
    """
    expected = checkpoint.get("item_fingerprint")
    if expected is None:
        message = (f"{path} records no item-id mapping (made by an older or unknown version, or edited): it cannot be "
                   f"checked against dataset {getattr(dataset, 'dataset_name', '?')!r}")
        if not allow_unverified:
            raise CheckpointError(message + ". Set accept_unverified_checkpoints: True to use it anyway.")
        import logging

        logging.getLogger().warning(message + "; used anyway (accept_unverified_checkpoints: True)")
        return
    actual = item_fingerprint(dataset)
    if expected != actual:
        cfg = checkpoint.get("config") or {}
        raise CheckpointError(
            f"{path} was made for dataset {cfg.get('dataset')!r} with another item-id mapping "
            f"({checkpoint.get('n_items')} item ids, fingerprint {expected[:12]}); this run's dataset "
            f"{getattr(dataset, 'dataset_name', '?')!r} has {dataset.item_num} item ids, fingerprint {actual[:12]}: "
            f"its item tables would score the wrong items. Use a checkpoint made on the same dataset and filtering."
        )


def last_checkpoint_name(best_file):
    """The file that holds where to continue a run (its last complete epoch), beside its best-model file."""
    root, ext = os.path.splitext(best_file)
    return f"{root}-last{ext or '.pth'}"


def capture_rng(generator=None):
    """Every random state a training epoch draws from: python, numpy, torch (CPU and CUDA), and ``generator`` (the
    training data loader's shuffling generator), as plain data and tensors."""
    state = {
        "python": to_plain(random.getstate()),
        "numpy": to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def restore_rng(state, generator=None):
    """Set the random states :func:`capture_rng` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def check_state_dict(state, model, path):
    """Refuse weights that do not fit ``model``, naming the tensor: another shape, missing or unexpected tensors."""
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, the {type(model).__name__} model built "
                f"from its configuration needs {tuple(own[name].shape)}"
            )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: its weights do not fit a {type(model).__name__} model (missing tensors {missing[:5]}, "
            f"unexpected tensors {unexpected[:5]})"
        )
