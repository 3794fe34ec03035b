"""Command line of ``run_recbole_compress.py``: RecBole's ``run_recbole.py`` options for plugin and RecBole models.

    python run_recbole_compress.py --model=LSAN
    python run_recbole_compress.py --model=SASRec,NextItNet --dataset=ml-100k --epochs=5
    python run_recbole_compress.py --model=CpRec --config_files="a.yaml b.yaml" --embedding_size=64
    python run_recbole_compress.py --model=SASRec --nproc=2                 # distributed (DDP), gloo on CPU
    python run_recbole_compress.py --model=LSAN --tune                      # Ray Tune search (recbole_compress.tune)

Every other ``--key=value`` is a configuration override, as in RecBole (it wins over config files). A key that no part
of the run reads is refused before training (RecBole would silently ignore it). Several comma-separated models run
one after another on the same split and end with one comparison table; a model that fails is reported with its
error and the others still run (the exit status is then non-zero).
"""
import argparse
import sys
import traceback

from recbole_compress.utils import ConfigError, get_model

RESULT_METRICS = ("ndcg@10", "hit@10", "mrr@10")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_recbole_compress.py",
        description="Train and evaluate plugin or RecBole models; other --key=value pairs override the config.",
    )
    parser.add_argument("--model", "-m", type=str, default="LSAN",
                        help="model name(s), comma-separated (plugin or RecBole, case-insensitive); default LSAN")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name; default ml-100k")
    parser.add_argument("--config_files", type=str, default=None, help="config files, separated by spaces")
    parser.add_argument("--saved", type=_bool, default=True, help="save and reload the best model (default True)")
    # RecBole's run_recbole.py options for distributed training (gloo on CPU, NCCL on GPUs)
    parser.add_argument("--nproc", type=int, default=1, help="the number of processes in this group (default 1)")
    parser.add_argument("--ip", type=str, default="localhost", help="the IP of the master node")
    parser.add_argument("--port", type=str, default="5678", help="the port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of processes (default: nproc)")
    parser.add_argument("--group_offset", type=int, default=0, help="the global rank offset of this group")
    parser.add_argument("--tune", action="store_true",
                        help="run a Ray Tune search instead (options: python -m recbole_compress.tune --help)")
    return parser


def _bool(value):
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


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


def check_override_keys(models, overrides):
    """Refuse override keys that no model of the run reads; warn for keys only some of them read."""
    from recbole_compress.utils import closest_keys, known_config_keys

    strict = str(overrides.get("strict_config_keys", "True")).lower() != "false"
    known = {m: known_config_keys(m) for m in models}
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if "--tune" in argv:  # the search has its own options (and --help)
        from recbole_compress import tune

        args, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
        ddp = [f"--{k}" for k in ("nproc", "world_size", "ip", "port", "group_offset")
               if getattr(args, k) != parser.get_default(k)]
        if ddp:
            print(f"error: {', '.join(ddp)} cannot be combined with --tune (each trial runs in one process)",
                  file=sys.stderr)
            return 2
        return tune.main([a for a in argv if a != "--tune"])
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_overrides(extra)
        models = [m.strip() for m in args.model.split(",") if m.strip()]
        if not models:
            raise ConfigError("--model is empty")
        models = [get_model(m).__name__ for m in models]
        config_files = args.config_files.strip().split(" ") if args.config_files else None
        check_override_keys(models, overrides)
        from recbole_compress.quick_start import build_config, check_distributed_args

        check_distributed_args(args.nproc, args.world_size, args.group_offset)

        for model in models:  # every configuration problem is found before the first model trains
            build_config(model, args.dataset, config_files, dict(overrides), read_cmd_line=False)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from recbole_compress.quick_start import run

    rows, failed = [], 0
    for model in models:
        row = {"model": model}
        try:
            result = run(
                model,
                args.dataset,
                config_file_list=config_files,
                config_dict=dict(overrides),
                saved=args.saved,
                nproc=args.nproc,
                world_size=args.world_size,
                ip=args.ip,
                port=args.port,
                group_offset=args.group_offset,
                read_cmd_line=False,
            )
            if result is None:  # another group of a multi-node run: rank 0 of the master group reports
                row["status"] = "ok (results on the master node)"
                rows.append(row)
                continue
            row.update({k: float(v) for k, v in (result["test_result"] or {}).items()})
            row["best_valid_score"] = float(result["best_valid_score"])
            row["checkpoint"] = result.get("checkpoint") or ""
            row["status"] = "ok"
        except KeyboardInterrupt:
            raise
        except Exception as e:
            failed += 1
            traceback.print_exc()
            row["status"] = f"failed: {type(e).__name__}: {e}"
        rows.append(row)

    metric_cols = [(m, "test " + m.upper()) for m in RESULT_METRICS if any(m in r for r in rows)]
    columns = [("model", "model")] + metric_cols + [("best_valid_score", "best valid"), ("status", "status")]
    print(f"\nResults on {args.dataset} (one split for all models):")
    print(format_table(rows, columns))
    return 1 if failed else 0
