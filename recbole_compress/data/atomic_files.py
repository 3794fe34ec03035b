"""RecBole atomic files: checks that name the file, the column and the line, and the conversion of a user's CSV/TSV.

RecBole reads ``<data_path>/<dataset>/<dataset>.inter`` (tab-separated, header ``name:type``) and, on bad input,
fails deep inside pandas or its own code (``Some feat is empty``, ``KeyError: 'item_id'``, a float parse error
without a line number, ``[timestamp] is not exist in interaction``). :func:`inter_file_problems` finds those
problems before any loading, in words; :func:`convert` writes the atomic file from any CSV/TSV of (user, item,
timestamp[, more]) with the same care::

    python -m recbole_compress.data.atomic_files my_log.csv --dataset mine --output_dir datasets \\
        --user user --item product --time when

then ``python run_recbole_compress.py --model=SASRec --dataset=mine --data_path=datasets
--load_col="{'inter': ['user_id', 'item_id', 'timestamp']}"``.
"""
import argparse
import csv
import math
import os
import sys
from datetime import datetime

from recbole_compress.errors import DataError

FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")
PROBLEMS_SHOWN = 5


def read_header(path, separator="\t"):
    """``[(field, type), ...]`` of an atomic file's header line.

    Raises:
        DataError: an empty file, or a header cell that is not ``name:type`` with one of RecBole's types.
    """
    with open(path, encoding="utf-8") as f:
        head = f.readline().rstrip("\r\n")
    if not head:
        raise DataError(f"{path} is empty: an atomic file starts with a header line such as "
                        f"'user_id:token<TAB>item_id:token<TAB>timestamp:float'")
    fields = []
    for cell in head.split(separator):
        name, _, ftype = cell.partition(":")
        if not name or ftype not in FEATURE_TYPES:
            raise DataError(f"{path}, line 1: header cell {cell!r} must be name:type with a type among "
                            f"{', '.join(FEATURE_TYPES)} (columns are separated by tabs)")
        fields.append((name, ftype))
    return fields


def _float_problems(path, columns, separator):
    """Lines whose value in a float column does not parse (at most :data:`PROBLEMS_SHOWN`), and the row count."""
    problems, rows = [], 0
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=separator, quoting=csv.QUOTE_NONE)
        next(reader, None)
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            rows += 1
            for name, index in columns:
                value = row[index] if index < len(row) else ""
                try:
                    float(value) if value != "" else None
                except ValueError:
                    if len(problems) < PROBLEMS_SHOWN:
                        problems.append(f"{path}, line {number}: column {name!r} (float) holds {value!r}, not a number")
    return problems, rows


def inter_file_problems(path, config):
    """What keeps RecBole from using ``path`` as the run's interaction file, in words (empty list if nothing).

    Checks: the header; the user, item and (when the split orders by time) time columns exist and are loaded by
    ``load_col``; every value of a loaded float column parses; the file has rows.
    """
    separator = config["field_separator"] or "\t"
    try:
        header = read_header(path, separator)
    except DataError as e:
        return [str(e)]
    names = [name for name, _ in header]
    load_col = config["load_col"]
    loaded = names if load_col is None or (load_col.get("inter") == "*") else list(load_col.get("inter") or [])
    problems = []
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
        field = config[key]
        if field not in names:
            problems.append(f"{path} has no column {field!r} ({key}); its columns are {', '.join(names)}: rename the "
                            f"column in the header, or set {key} to the column's name")
        elif field not in loaded:
            problems.append(f"load_col={load_col!r} does not load {field!r} from {path}: add it to load_col['inter']")
    time_field = config["TIME_FIELD"]
    if (config["eval_args"] or {}).get("order") == "TO":
        if time_field not in names:
            problems.append(
                f"{path} has no column {time_field!r} (TIME_FIELD), which the time-ordered split (eval_args order: TO) "
                f"needs: add a column '{time_field}:float' (a Unix time, or any number increasing along each user's "
                f"history, e.g. its position), or split in file order with eval_args order: RO"
            )
        elif time_field not in loaded:
            problems.append(
                f"load_col={load_col!r} does not load {time_field!r}, which the time-ordered split needs: run with "
                f"--load_col=\"{{'inter': {[f for f in names if f in set(loaded) | {time_field}]!r}}}\""
            )
    floats = [(name, i) for i, (name, ftype) in enumerate(header) if ftype == "float" and name in loaded]
    bad, rows = _float_problems(path, floats, separator)
    problems += bad
    if rows == 0:
        problems.append(f"{path} has a header but no interactions")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# conversion of a user's CSV/TSV
# ----------------------------------------------------------------------------------------------------------------

def _timestamp(value):
    """A number, or an ISO date/time (``2024-03-01``, ``2024-03-01T12:30:00``) as Unix seconds; None if neither."""
    try:
        number = float(value)
        return number if math.isfinite(number) else None
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        return None


def _is_number(value):
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _read_rows(path, separator, user, item, time, extra):
    """The rows of a CSV/TSV as (user, item, time, extra values), with an error naming the line for a bad row."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=separator)
        header = reader.fieldnames or []
        missing = [c for c in [user, item] + ([time] if time else []) + list(extra) if c not in header]
        if missing:
            raise DataError(f"{path}: no column {', '.join(map(repr, missing))}; its columns are "
                            f"{', '.join(header) or '(none)'} (separator {separator!r}; see --sep)")
        rows = []
        for number, row in enumerate(reader, start=2):
            u, i = (row[user] or "").strip(), (row[item] or "").strip()
            if not u or not i:
                raise DataError(f"{path}, line {number}: empty {'user' if not u else 'item'} (column "
                                f"{user if not u else item!r})")
            t = None
            if time:
                t = _timestamp(row[time] or "")
                if t is None:
                    raise DataError(f"{path}, line {number}: column {time!r} holds {row[time]!r}, neither a number "
                                    f"nor an ISO date/time such as 2024-03-01T12:30:00")
            rows.append((u, i, t, [(row[c] or "").strip() for c in extra]))
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return rows


def convert(path, dataset, output_dir, user="user_id", item="item_id", time="timestamp", extra=(), separator=None):
    """Write ``<output_dir>/<dataset>/<dataset>.inter`` from a CSV/TSV of interactions; returns its path.

    Rows are ordered by user, then time (file order without ``time``: the position becomes the timestamp). Extra
    columns become ``token`` features (``float`` if every value is a number).

    Raises:
        DataError: a missing column, an empty user or item, or a time that is not a number or ISO date (with the
            line number).
    """
    if separator is None:
        separator = "\t" if path.endswith((".tsv", ".inter")) else ","
    rows = _read_rows(path, separator, user, item, time, extra)
    order = sorted(range(len(rows)), key=lambda k: (rows[k][0], rows[k][2] if time else k, k))
    kinds = ["float" if all(_is_number(r[3][c]) for r in rows) else "token" for c in range(len(extra))]
    folder = os.path.join(output_dir, dataset)
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, f"{dataset}.inter")
    with open(target, "w", encoding="utf-8") as f:
        f.write("\t".join(["user_id:token", "item_id:token", "timestamp:float"]
                          + [f"{c}:{k}" for c, k in zip(extra, kinds)]) + "\n")
        position = {}
        for k in order:
            u, i, t, values = rows[k]
            if t is None:
                position[u] = position.get(u, 0) + 1
                t = position[u]
            cells = [u, i, repr(float(t))] + [v.replace("\t", " ") for v in values]
            f.write("\t".join(cells) + "\n")
    return target


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m recbole_compress.data.atomic_files",
                                description="Turn a CSV/TSV of (user, item, timestamp[, more]) into a RecBole .inter")
    p.add_argument("input", help="the CSV/TSV file (a header row naming the columns)")
    p.add_argument("--dataset", required=True, help="dataset name: writes <output_dir>/<dataset>/<dataset>.inter")
    p.add_argument("--output_dir", default="dataset", help="folder that becomes data_path (default dataset/)")
    p.add_argument("--user", default="user_id", help="the user column (default user_id)")
    p.add_argument("--item", default="item_id", help="the item column (default item_id)")
    p.add_argument("--time", default="timestamp",
                   help="the time column: numbers or ISO dates (default timestamp; '' = file order)")
    p.add_argument("--extra", default="", help="more columns to keep, comma-separated")
    p.add_argument("--sep", default=None, help="separator (default: tab for .tsv, else comma)")
    args = p.parse_args(argv)
    extra = [c.strip() for c in args.extra.split(",") if c.strip()]
    try:
        target = convert(args.input, args.dataset, args.output_dir, args.user, args.item, args.time or None, extra,
                         args.sep)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {target}\nrun: python run_recbole_compress.py --model=SASRec --dataset={args.dataset} "
          f"--data_path={args.output_dir} --load_col=\"{{'inter': ['user_id', 'item_id', 'timestamp']}}\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
