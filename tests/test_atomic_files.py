"""Own data in one step: a CSV becomes RecBole atomic files; bad files are refused naming the file, column and line."""
import pytest

from recbole_compress.cli import main
from recbole_compress.data.atomic_files import convert, main as convert_main
from recbole_compress.errors import DataError
from recbole_compress.run import load_data, make_config

LOAD = "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}"


def _csv(tmp_path, text, name="log.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _log(n_users=12, n_items=9):
    lines = ["who,what,when,price"]
    for u in range(n_users):
        for k in range(6):  # written newest first: the converter orders by time
            lines.append(f"u{u},i{(u + 5 - k) % n_items},2024-03-{10 + 5 - k:02d}T08:00:00,{k + 0.5}")
    return "\n".join(lines) + "\n"


def test_a_csv_round_trips_into_recbole(tmp_path):
    source = _csv(tmp_path, _log())
    target = convert(source, "mine", str(tmp_path / "data"), user="who", item="what", time="when", extra=["price"])
    assert target == str(tmp_path / "data" / "mine" / "mine.inter")
    lines = open(target).read().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float\tprice:float"
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == 12 * 6
    u0 = [r for r in rows if r[0] == "u0"]
    assert [float(r[2]) for r in u0] == sorted(float(r[2]) for r in u0)  # time order within a user
    assert [r[1] for r in u0] == [f"i{(5 - k) % 9}" for k in range(5, -1, -1)]
    config = make_config("SASRec", "mine", config_dict={"data_path": str(tmp_path / "data"), "hidden_size": 8,
                                                        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}},
                         read_cmd_line=False)
    data = load_data(config)
    assert data.dataset.user_num == 12 + 1 and data.dataset.item_num == 9 + 1  # + the padding id


def test_a_bad_row_is_refused_with_its_line(tmp_path):
    bad = _csv(tmp_path, "user,item,time\nu1,i1,5\nu1,i2,yesterday\n")
    with pytest.raises(DataError, match=r"log.csv, line 3: column 'time' holds 'yesterday'"):
        convert(bad, "x", str(tmp_path / "out"), user="user", item="item", time="time")
    empty_item = _csv(tmp_path, "user,item,time\nu1,,5\n", "e.csv")
    with pytest.raises(DataError, match=r"e.csv, line 2: empty item"):
        convert(empty_item, "x", str(tmp_path / "out"), user="user", item="item", time="time")
    with pytest.raises(DataError, match="no column 'product'"):
        convert(bad, "x", str(tmp_path / "out"), user="user", item="product", time="time")
    assert convert_main([bad, "--dataset=x", f"--output_dir={tmp_path / 'out'}", "--user=user", "--item=item",
                         "--time=time"]) == 2


def _inter(tmp_path, text, name="own"):
    folder = tmp_path / "d" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(text)
    return str(tmp_path / "d")


def _refused(capsys, data_path, *extra, name="own"):
    assert main(["--model=SASRec", f"--dataset={name}", f"--data_path={data_path}", *extra]) == 2
    return capsys.readouterr().err


def test_bad_data_files_are_named_with_column_and_line(tmp_path, capsys):
    good_rows = "".join(f"u{u}\ti{(u + k) % 7}\t{k}\n" for u in range(5) for k in range(4))
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    # no timestamp loaded: the message says what to add
    err = _refused(capsys, _inter(tmp_path, header + good_rows))
    assert "does not load 'timestamp'" in err and "--load_col=" in err, err
    # no timestamp column at all
    err = _refused(capsys, _inter(tmp_path, "user_id:token\titem_id:token\n" + "u1\ti1\n", "nots"), name="nots")
    assert "has no column 'timestamp'" in err and "timestamp:float" in err, err
    # header only
    err = _refused(capsys, _inter(tmp_path, header, "head"), LOAD, name="head")
    assert "has a header but no interactions" in err, err
    # no item column
    err = _refused(capsys, _inter(tmp_path, "user_id:token\ttimestamp:float\nu1\t1\n", "noitem"), name="noitem")
    assert "has no column 'item_id'" in err, err
    # a timestamp that is not a number
    err = _refused(capsys, _inter(tmp_path, header + "u1\ti1\t1\nu1\ti2\tnoon\n", "txt"), LOAD, name="txt")
    assert "txt.inter, line 3: column 'timestamp' (float) holds 'noon'" in err, err
