"""recbole_compress.quick_start: RecBole's quick-start functions for plugin and RecBole models alike.

RecBole's ``run_recbole``, ``objective_function`` and ``load_data_and_model`` look models up inside RecBole only and
reload checkpoints with a pickled Config that torch >= 2.6 refuses. These mirror their signatures and return values
and use the plugin's Config, model/trainer look-up and weights-only checkpoints.
"""
import sys
from logging import getLogger

from recbole.utils import get_environment, set_color

from recbole_compress.errors import ConfigError
from recbole_compress.logs import start_logging
from recbole_compress.profiling import count_parameters
from recbole_compress.run import build, counterpart_size, fit_and_test, make_config, restore


def _log_flops(model, dataset, config, logger):
    from recbole.data.transform import construct_transform
    from recbole.utils import get_flops

    try:
        flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
        logger.info(set_color("FLOPs", "blue") + f": {flops}")
    except Exception as e:  # FLOPs are informative only; never lose a run for them
        logger.warning(f"FLOPs not computed: {type(e).__name__}: {e}")


def run_recbole_compress(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    queue=None,
    read_cmd_line=True,
    command_line=None,
):
    r"""Train and test a model (plugin or RecBole) end to end, as ``recbole.quick_start.run_recbole`` does.

    Args:
        model (str): model name (plugin or RecBole; case-insensitive; aliases such as ``PKM-ACT``).
        dataset (str): dataset name.
        config_file_list (list): config files.
        config_dict (dict): parameters.
        saved (bool): save the best model and reload it for the test.
        queue: multiprocessing queue the result is put on (rank 0), as in RecBole.
        read_cmd_line (bool): read ``--key=value`` from ``sys.argv`` as RecBole does.
        command_line (dict): ``--key=value`` pairs already parsed (the plugin's CLI), used instead of ``sys.argv``.

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``, ``test_result`` (RecBole's keys),
        plus ``model``, ``checkpoint`` (the best-model file, when saved) and ``log_file``.

    Raises:
        ConfigError: a bad key or value, found before any data loads (or, for rules that need the data, right
            after it loads and before any training).
    """
    config = make_config(model, dataset, config_file_list, config_dict, read_cmd_line, command_line)
    log_file = start_logging(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    run = build(config)
    logger.info(run.data.dataset)
    logger.info(run.model)
    _log_flops(run.model, run.data.dataset, config, logger)
    result = fit_and_test(run, saved=saved, show_progress=config["show_progress"])
    result["params"] = count_parameters(run.model)
    result["counterpart_size"] = counterpart_size(run)
    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {result['best_valid_result']}")
    logger.info(set_color("test result", "yellow") + f": {result['test_result']}")
    result["log_file"] = log_file
    if not config["single_spec"]:
        import torch.distributed as dist

        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def check_distributed_args(nproc=1, world_size=-1, group_offset=0):
    """Check RecBole's DDP options before any process starts; returns the world size (``nproc`` when -1)."""
    if nproc < 1:
        raise ConfigError(f"nproc must be >= 1, got {nproc}")
    if world_size == -1:
        world_size = nproc
    if world_size < 1 or group_offset < 0 or group_offset + nproc > world_size:
        raise ConfigError(
            f"group_offset ({group_offset}) + nproc ({nproc}) exceeds world_size ({world_size}): the ranks of this "
            f"group would not fit (--world_size is the total number of processes over all groups)"
        )
    return world_size


def run(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
    read_cmd_line=True,
    command_line=None,
):
    r"""Train and test a model in one process or in ``nproc`` distributed processes, as ``recbole.quick_start.run``.

    With ``nproc > 1`` or ``world_size > 0`` the processes are spawned here and join one process group at
    ``tcp://ip:port`` (ranks ``group_offset .. group_offset + nproc - 1`` of ``world_size``; ``world_size`` defaults
    to ``nproc``). RecBole uses NCCL on GPUs; where the run has no GPU the plugin's Config uses gloo, so this works on
    CPU. On CPU each process gets ``1/nproc`` of this process's torch threads.

    Returns:
        dict: as :func:`run_recbole_compress` (from rank 0; None on the other groups of a multi-node run).
    """
    if nproc == 1 and world_size <= 0:
        return run_recbole_compress(
            model=model,
            dataset=dataset,
            config_file_list=config_file_list,
            config_dict=config_dict,
            saved=saved,
            read_cmd_line=read_cmd_line,
            command_line=command_line,
        )
    world_size = check_distributed_args(nproc, world_size, group_offset)
    import torch
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size, "ip": ip, "port": port, "nproc": nproc, "offset": group_offset})
    kwargs = {
        "config_dict": config_dict,
        "queue": queue,
        "saved": saved,
        "read_cmd_line": read_cmd_line,
        "command_line": command_line,
        "num_threads": max(1, torch.get_num_threads() // nproc),
    }
    mp.spawn(run_recbole_compresses, args=(model, dataset, config_file_list, kwargs), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def run_recbole_compresses(rank, *args):
    """Entry point of one spawned process of :func:`run` (``rank`` is its local rank), as RecBole's
    ``run_recboles``."""
    import torch

    kwargs = dict(args[-1])
    num_threads = kwargs.pop("num_threads", None)
    if num_threads and not torch.cuda.is_available():
        torch.set_num_threads(num_threads)
    kwargs["config_dict"] = dict(kwargs.get("config_dict") or {})
    kwargs["config_dict"]["local_rank"] = rank
    run_recbole_compress(*args[:3], **kwargs)


def objective_function(config_dict=None, config_file_list=None, saved=True, callback_fn=None, evaluate_test=True):
    r"""Train and test one configuration and return its scores, as RecBole's ``objective_function``
    (used by ``recbole.trainer.HyperTuning`` and by the plugin's Ray Tune search).

    The model comes from ``config_dict['model']`` or the config files, the dataset likewise. ``sys.argv`` is not
    read (in a Ray worker it belongs to Ray). Unlike RecBole's, no ``tune.report`` is called here: the Ray Tune search
    passes ``callback_fn`` and so reports once per epoch.

    Args:
        callback_fn (callable): called after each validation with the trainer's report of the epoch, a dict of plain
            numbers (``epoch``, ``train_loss``, ``valid_score``, each validation metric, ``best_valid_score``; see
            :meth:`recbole_compress.trainer.Trainer.epoch_report`). It goes through ``Trainer.fit``'s
            ``callback_fn``, so every trainer built on RecBole's ``fit`` reports.
        evaluate_test (bool): evaluate the best model on the test set (the search leaves the test set alone and
            evaluates only its best trial).

    Returns:
        dict: ``model``, ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``, ``test_result``
        (None when ``evaluate_test`` is False), ``checkpoint``.
    """
    config = make_config(config_dict=config_dict, config_file_list=config_file_list, read_cmd_line=False)
    start_logging(config)
    run = build(config)
    fit_callback = None
    if callback_fn is not None:
        if not hasattr(run.trainer, "epoch_report"):
            raise TypeError(f"{type(run.trainer).__name__} has no epoch_report: it is not a recbole_compress trainer")

        def fit_callback(epoch_idx, valid_score):
            callback_fn(run.trainer.epoch_report(epoch_idx, valid_score))

    return fit_and_test(run, saved=saved, verbose=False, callback_fn=fit_callback, evaluate_test=evaluate_test)


def load_data_and_model(model_file):
    r"""Load the dataset, its split data loaders and the model saved in ``model_file`` (a plugin checkpoint).

    The checkpoint is read with ``torch.load(weights_only=True)``; its configuration is plain data, and its item-id
    fingerprint must match the rebuilt dataset's (:func:`recbole_compress.run.restore`).

    Returns:
        tuple: ``(config, model, dataset, train_data, valid_data, test_data)``, as RecBole's.
    """
    restored = restore(model_file)
    start_logging(restored.config)
    getLogger().info(restored.config)
    data = restored.data
    return restored.config, restored.model, data.dataset, data.train, data.valid, data.test
