"""Command line of ``run_recbole_compress.py``: RecBole's ``run_recbole.py`` options for plugin and RecBole models.

    python run_recbole_compress.py --model=LSAN
    python run_recbole_compress.py --model=SASRec,NextItNet --dataset=ml-100k --epochs=5
    python run_recbole_compress.py --model=CpRec --config_files="a.yaml b.yaml" --embedding_size=64
    python run_recbole_compress.py --model=SASRec --nproc=2                 # distributed (DDP), gloo on CPU
    python run_recbole_compress.py --model=LSAN --tune                      # Ray Tune search (recbole_compress.tune)

Every other ``--key=value`` is a configuration override, as in RecBole (it wins over config files). Every model of
the run is checked before the first one trains: key names (a key no part of the run reads is refused), values,
files and checkpoints, and the rules that need the data; a problem is one message on stderr and exit code 2.
Several comma-separated models run one after another on the same split and end with one comparison table; a model
that fails is reported with its error and the others still run (the exit status is then 1).
"""
import argparse
import os
import shlex
import signal
import sys
import traceback

from recbole_compress.commandline import (
    announce_budget,
    check_override_keys,
    common_keys_help,
    cpu_budget,
    format_table,
    parse_bool,
    parse_overrides,
    quiet_known_noise,
    report_error,
)
from recbole_compress.errors import CheckpointError, ConfigError, DataError
from recbole_compress.registry import get_model

RESULT_METRICS = ("ndcg@10", "hit@10", "mrr@10")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_recbole_compress.py",
        description="Train and evaluate plugin or RecBole models; other --key=value pairs override the config.",
        epilog=common_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", "-m", type=str, default="LSAN",
                        help="model name(s), comma-separated (plugin or RecBole, case-insensitive); default LSAN")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name; default ml-100k")
    parser.add_argument("--config_files", type=str, default=None, help="config files, separated by spaces")
    parser.add_argument("--saved", type=parse_bool, default=True, help="save and reload the best model (default True)")
    # RecBole's run_recbole.py options for distributed training (gloo on CPU, NCCL on GPUs)
    parser.add_argument("--nproc", type=int, default=1, help="the number of processes in this group (default 1)")
    parser.add_argument("--ip", type=str, default="localhost", help="the IP of the master node")
    parser.add_argument("--port", type=str, default="5678", help="the port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of processes (default: nproc)")
    parser.add_argument("--group_offset", type=int, default=0, help="the global rank offset of this group")
    parser.add_argument("--tune", action="store_true",
                        help="run a Ray Tune search instead (options: python -m recbole_compress.tune --help)")
    return parser


def check_run(args, overrides):
    """Every check before any model trains; returns ``(models, config_files, overrides of each model)``: in a
    multi-model run each model gets the overrides it reads.

    Raises:
        ConfigError: the first model's problems (key names, values, files, checkpoints, data rules).
    """
    from recbole_compress.preflight import check_data_rules_early
    from recbole_compress.distributed import check_distributed_args
    from recbole_compress.run import make_config

    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if not models:
        raise ConfigError("--model is empty")
    models = [get_model(m).__name__ for m in models]
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    budget = cpu_budget(overrides)
    if budget:
        config_files = [budget[0]] + (config_files or [])
    strict = str(overrides.get("strict_config_keys", "True")).lower() != "false"
    known = check_override_keys(models, overrides, strict=strict)
    check_distributed_args(args.nproc, args.world_size, args.group_offset)
    own = {}
    for model in models:
        own[model] = {k: v for k, v in overrides.items() if k in known[model] or len(models) == 1}
        config = make_config(model, args.dataset, config_files, command_line=own[model])
        check_data_rules_early(config)
    if budget:
        announce_budget(budget)
    return models, config_files, own


def run_one(model, args, config_files, overrides):
    """Train and test one model; its row of the results table."""
    from recbole_compress.distributed import run

    row = {"model": model}
    result = run(
        model, args.dataset, config_file_list=config_files, command_line=dict(overrides), saved=args.saved,
        nproc=args.nproc, world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
        read_cmd_line=False,
    )
    if result is None:  # another group of a multi-node run: rank 0 of the master group reports
        row["status"] = "ok (results on the master node)"
        return row
    row.update({k: float(v) for k, v in (result["test_result"] or {}).items()})
    row["best_valid_score"] = float(result["best_valid_score"])
    row["valid_metric"] = result.get("valid_metric", "")
    row["checkpoint"] = result.get("checkpoint") or ""
    row["params"] = f"{result['params']:,}"
    if result.get("counterpart_size"):
        name, params = result["counterpart_size"]
        row["vs"] = f"{name}: {params:,}"
        row["ratio"] = f"{result['params'] / params:.3f}x"
    row["status"] = "ok"
    return row


def print_table(rows, dataset):
    metric_cols = [(m, "test " + m.upper()) for m in RESULT_METRICS if any(m in r for r in rows)]
    valid = next((r["valid_metric"] for r in rows if r.get("valid_metric")), "")
    columns = [("model", "model")] + metric_cols + [("best_valid_score", f"best valid {valid}".strip()),
                                                    ("params", "params")]
    if any(r.get("vs") for r in rows):
        columns += [("vs", "its counterpart's size (same settings)"), ("ratio", "× params")]
    columns.append(("status", "status"))
    print(f"\nResults on {dataset} (one split for all models):")
    print(format_table(rows, columns))


def resume_command(argv, resume, model=None):
    """The command that continues an interrupted run with the keys of ``resume`` (``{"resume": file}`` or the phases'
    ``{"<prefix>resume": file}``), its other arguments unchanged."""
    kept = [a for a in argv if not (a.startswith("--") and a[2:].split("=")[0].endswith("resume"))]
    if model is not None:
        kept = [a for a in kept if not a.startswith(("--model=", "-m="))] + [f"--model={model}"]
    given = [f"--{key}={path}" for key, path in resume.items()]
    return " ".join(shlex.quote(a) for a in ["python", "run_recbole_compress.py", *kept, *given])


def _interrupted(error, argv, rows, dataset):
    """Report an interrupted run: where its last complete epoch (or its phases') is saved and the command that
    resumes it."""
    if rows:
        print_table(rows, dataset)
    print(f"\n{error.model} was interrupted.", file=sys.stderr)
    if error.last_file:
        print(f"Its last complete epoch is saved in {error.last_file} (best epoch so far: {error.best_file}).\n"
              f"Continue it with:\n    {resume_command(argv, error.resume, error.model)}", file=sys.stderr)
    elif error.resume:
        phases = ", ".join(f"{key[:-len('resume')].rstrip('_')} in {path}" for key, path in error.resume.items())
        print(f"It was interrupted in a phase before its own training; the phases' last epochs are saved ({phases}).\n"
              f"Continue it with:\n    {resume_command(argv, error.resume, error.model)}", file=sys.stderr)
    else:
        print("No epoch had completed: nothing to resume.", file=sys.stderr)
    return 130


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quiet_known_noise()
    parser = build_parser()
    if "--tune" in argv:  # the search has its own options (and --help)
        from recbole_compress import tune

        args, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
        ddp = [f"--{k}" for k in ("nproc", "world_size", "ip", "port", "group_offset")
               if getattr(args, k) != parser.get_default(k)]
        if ddp:
            return report_error(f"{', '.join(ddp)} cannot be combined with --tune (each trial runs in one process)")
        return tune.main([a for a in argv if a != "--tune"])
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(extra)
        models, config_files, own = check_run(args, overrides)
    except (ConfigError, CheckpointError) as e:
        return report_error(e)

    from recbole_compress.run import RunInterrupted

    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    rows, code = [], 0
    for model in models:
        try:
            rows.append(run_one(model, args, config_files, own[model]))
        except RunInterrupted as e:
            return _interrupted(e, argv, rows, args.dataset)
        except KeyboardInterrupt:
            print(f"\ninterrupted before {model} started training: nothing to resume", file=sys.stderr)
            return 130
        except (ConfigError, CheckpointError, DataError) as e:  # found once the data is loaded: no traceback
            code = max(code, report_error(e))
            rows.append({"model": model, "status": f"failed: {e}"})
        except Exception as e:
            code = max(code, 1)
            traceback.print_exc()
            rows.append({"model": model, "status": f"failed: {type(e).__name__}: {e}"})
    print_table(rows, args.dataset)
    return code
