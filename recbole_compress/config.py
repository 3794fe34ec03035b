"""recbole_compress.config: RecBole's Config, aware of the plugin's models and property files.

Resolution order of the internal (default) configuration, each later file overriding the earlier ones:

1. RecBole's own files, exactly as RecBole loads them (overall, the model's RecBole YAML if any, dataset, and the
   quick-start file of the model type, e.g. ``sequential.yaml``);
2. the plugin's ``properties/overall.yaml``;
3. the plugin's ``properties/quick_start_config/sequential_base.yaml`` (``train_neg_sample_args: ~``), only for a
   sequential model trained with the CE loss, so that pairwise baselines such as FPMC keep their negative sampling;
4. the plugin's ``properties/model/<Model>.yaml``;
5. the plugin's ``properties/quick_start_config/<Model>_on_<dataset>.yaml`` (dataset settings one model needs, e.g.
   LSAN's item categories on ml-100k), like RecBole's ``special_sequential_on_ml-100k.yaml``.

The external configuration then wins over all of it, as in RecBole: command line > ``config_dict`` > config files.

On a machine without a GPU, ``use_gpu`` is False and ``gpu_id`` empty, so that the configuration says what the run
really uses.

Distributed training (``local_rank`` set, as RecBole's ``run`` does for ``--nproc`` / ``--world_size``): RecBole
hard-codes the NCCL backend and CUDA devices. Where the run has no GPU (none available, or ``gpu_id: ''``) this Config
joins the process group with the gloo backend on the CPU instead; with a GPU it keeps RecBole's NCCL set-up.
"""
import os

import torch
from recbole.config import Config as RecBoleConfig
from recbole.utils import InputType, ModelType

from recbole_compress import properties_path
from recbole_compress.checkpoint import from_plain
from recbole_compress.config_keys import Key, declared
from recbole_compress.errors import ConfigError
from recbole_compress.registry import get_model, get_trainer


class Config(RecBoleConfig):
    """RecBole's Config with plugin model look-up and the plugin's property files loaded after RecBole's.

    Args:
        model (str or class): model name (plugin or RecBole, case-insensitive, aliases allowed) or model class.
        dataset (str): dataset name.
        config_file_list (list of str): YAML files; a missing file is a :class:`ConfigError`.
        config_dict (dict): parameters.
        read_cmd_line (bool): read ``--key=value`` from ``sys.argv`` as RecBole does (default). Ray Tune workers,
            whose ``sys.argv`` belongs to Ray, set it to False.
        command_line (dict): ``--key=value`` pairs the plugin's command line has already parsed (values as strings,
            converted as RecBole converts its command line), used instead of ``sys.argv``.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, read_cmd_line=True,
                 command_line=None):
        self._read_cmd_line = read_cmd_line
        self._command_line = command_line
        for file in config_file_list or []:
            if not os.path.isfile(file):
                raise ConfigError(f"config file {file!r} does not exist (given in config_file_list / --config_files)")
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)

    def _load_cmd_line(self):
        if self._command_line is not None:
            return self._convert_config_dict(dict(self._command_line))
        if not self._read_cmd_line:
            return dict()
        return super()._load_cmd_line()

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ConfigError("model must be given: as the model argument, in a config file, config_dict or --model")
        model_class = get_model(model)
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise ConfigError("dataset must be given: as the dataset argument, in a config file, config_dict or --dataset")
        return model_class.__name__, model_class, dataset

    def key_sources(self):
        """Where each user-set key came from: ``command line``, ``config_dict`` or ``config file``."""
        sources = {}
        for label, part in (("config file", self.file_config_dict), ("config_dict", self.variable_config_dict),
                            ("command line", self.cmd_config_dict)):
            for key in part or {}:
                sources[key] = label
        return sources

    def _init_device(self):
        final = self.final_config_dict
        if not torch.cuda.is_available():
            final["use_gpu"] = False  # the dump and the checkpoint say what the run really uses
            if "local_rank" not in final:
                final["gpu_id"] = ""
        gpu_id = final["gpu_id"]
        gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
        if "local_rank" not in final or (gpu_id and torch.cuda.is_available()):
            return super()._init_device()
        # Distributed on CPU: RecBole's NCCL/CUDA set-up cannot work; use gloo, one CPU process per rank.
        final["gpu_id"] = gpu_id
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(
                backend="gloo",
                rank=final["local_rank"] + final["offset"],
                world_size=final["world_size"],
                init_method=f"tcp://{final['ip']}:{final['port']}",
            )
        final["device"] = torch.device("cpu")
        final["single_spec"] = False
        if final["local_rank"] != 0:
            final["state"] = "error"
            final["show_progress"] = False
            final["verbose"] = False

    def _plugin_loss_is_ce(self, model_class, plugin_model_yaml):
        if getattr(model_class, "input_type", None) == InputType.PAIRWISE:
            return False
        loss = self.external_config_dict.get("loss_type")
        if loss is None:
            loss = (plugin_model_yaml or {}).get("loss_type")
        if loss is None:
            loss = self.internal_config_dict.get("loss_type")
        return str(loss).upper() == "CE"

    def _read_yaml(self, path):
        import yaml

        with open(path, "r", encoding="utf-8") as f:
            return yaml.load(f.read(), Loader=self.yaml_loader) or {}

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        model_file = properties_path("model", f"{model}.yaml")
        plugin_model_yaml = self._read_yaml(model_file) if os.path.isfile(model_file) else None
        files = [properties_path("overall.yaml")]
        if self.internal_config_dict["MODEL_TYPE"] == ModelType.SEQUENTIAL and self._plugin_loss_is_ce(
            model_class, plugin_model_yaml
        ):
            files.append(properties_path("quick_start_config", "sequential_base.yaml"))
        files += [model_file, properties_path("quick_start_config", f"{model}_on_{dataset}.yaml")]
        for file in files:
            if os.path.isfile(file):
                self._update_internal_config_dict(file)
        self.internal_config_dict["MODEL_TYPE"] = model_class.type


def config_from_plain(plain):
    """A :class:`Config` rebuilt from :func:`recbole_compress.checkpoint.config_to_plain` output, for this machine
    (its device, one process)."""
    config = Config.__new__(Config)
    config._read_cmd_line, config._command_line = False, None
    config.compatibility_settings()
    config._init_parameters_category()
    config.yaml_loader = config._build_yaml_loader()
    config.file_config_dict, config.variable_config_dict, config.cmd_config_dict = {}, {}, {}
    final = from_plain(plain)
    # a checkpoint made on a GPU machine is evaluated on this one's device
    final["device"] = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    final["single_spec"] = True
    final["local_rank"] = 0
    config.final_config_dict = final
    config.external_config_dict = {}
    config.model = final["model"]
    config.dataset = final["dataset"]
    config.model_class = get_model(final["model"])
    _fill_neutral_keys(final, config.model_class)
    return config


def _fill_neutral_keys(final, model_class):
    """Keys of ``model_class`` (and its trainer) added after a checkpoint was saved take their ``neutral`` value,
    the one with which the model behaves as it did before the key existed."""
    for owner in (model_class, get_trainer(model_class.type, model_class)):
        for key in declared(owner, "config_keys"):
            if key.name not in final and key.neutral is not Key.NO_NEUTRAL:
                final[key.name] = key.neutral
