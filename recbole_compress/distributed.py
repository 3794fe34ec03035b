"""Distributed (DDP) runs, as RecBole's ``recbole.quick_start.run``: ``nproc`` processes of one run on this machine
(gloo on CPU, NCCL on GPUs), or one group of a multi-node run.

    python run_recbole_compress.py --model=SASRec --nproc=2
"""
from recbole_compress.errors import ConfigError
from recbole_compress.quick_start import run_recbole_compress


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
