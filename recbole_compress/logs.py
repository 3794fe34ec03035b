"""One log file (and one tensorboard folder) per run, in RecBole's format.

RecBole's ``init_logger`` names the file by the second and a hash of the configuration, so two identical runs started
in the same second write into one file; and it configures logging with ``logging.basicConfig``, which does nothing
once the root logger has handlers, so the second model of a multi-model run logs into the first model's file.
:func:`start_logging` replaces the root logger's handlers on every call and names the file like the plugin's
checkpoints (time to the microsecond, process id, random suffix). RecBole's trainer names its tensorboard folder after
the log file, so that is unique too.
"""
import datetime
import logging
import os
import uuid

import colorlog
from recbole.utils.logger import RemoveColorFilter, log_colors_config

LOG_ROOT = "log"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


def log_file_name(config):
    """``<model>/<model>-<dataset>-<local time to the microsecond>-<pid>-<random>.log``."""
    stamp = datetime.datetime.now().strftime("%b-%d-%Y_%H-%M-%S-%f")
    model = config["model"]
    return os.path.join(model, f"{model}-{config['dataset']}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.log")


def start_logging(config, log_root=LOG_ROOT):
    """Send the root logger to the console and to this run's own file under ``log_root``; returns the file path."""
    path = os.path.join(log_root, log_file_name(config))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    level = _LEVELS.get(str(config["state"] or "info").lower(), logging.INFO)

    file_handler = logging.FileHandler(path)
    file_handler.setLevel(level)
    file_handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%a %d %b %Y %H:%M:%S"))
    file_handler.addFilter(RemoveColorFilter())
    console = logging.StreamHandler()
    console.setLevel(level)
    console.setFormatter(colorlog.ColoredFormatter("%(log_color)s%(asctime)-15s %(levelname)s  %(message)s",
                                                   "%d %b %H:%M", log_colors=log_colors_config))
    stop_logging()
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(console)
    root.addHandler(file_handler)
    return path


def stop_logging():
    """Close and remove the root logger's handlers (the run's log file is complete)."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
