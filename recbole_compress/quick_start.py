"""recbole_compress.quick_start: RecBole's quick-start functions for plugin and RecBole models alike.

RecBole's ``run_recbole``, ``objective_function`` and ``load_data_and_model`` look models up inside RecBole only and
reload checkpoints with a pickled Config that torch >= 2.6 refuses. These mirror their signatures and return values
and use the plugin's Config, model/trainer look-up and weights-only checkpoints.
"""
import sys
from logging import getLogger

from recbole.utils import get_environment, set_color

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
    result["params"] = count_parameters(run.model, inference=True)
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
