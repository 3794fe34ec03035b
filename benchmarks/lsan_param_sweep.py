"""Parameter counts of LSAN for m = 1..5 against RecBole's SASRec, at Beauty's catalogue size (V = 12,101).

Counts depend only on V, D, T (50) and the number of categories, so a generated dataset with V items stands in for
Beauty; nothing is trained. Reproduces the spec's reconstruction (D = 128, context table excluded: 1,059,014 at m=2,
800,966 at m=3) and gives the D = 64 figures of the benchmark.

    PYTHONPATH=. python benchmarks/lsan_param_sweep.py [--num_items 12101]
"""
import argparse
import os
import tempfile

from recbole.data import create_dataset, data_preparation

from recbole_compress.config import Config
from recbole_compress.utils import get_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_items", type=int, default=12101)
    parser.add_argument("--num_categories", type=int, default=5)
    args = parser.parse_args()
    v, c = args.num_items, args.num_categories
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "sweep"))
    with open(os.path.join(root, "sweep", "sweep.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for i in range(1, v + 1):
            for t in range(3):
                f.write(f"{i}\t{(i + t - 1) % v + 1}\t{1600000000 + 3600 * t}\n")
    with open(os.path.join(root, "sweep", "sweep.item"), "w") as f:
        f.write("item_id:token\tcategories:token\n" + "".join(f"{i}\tc{i % c}\n" for i in range(1, v + 1)))
    base = {"data_path": root, "state": "ERROR",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "categories"]}}
    config = Config(model="LSAN", dataset="sweep", config_dict=dict(base), read_cmd_line=False)
    train = data_preparation(config, create_dataset(config))[0]._dataset

    def count(model):
        return sum(p.numel() for p in model.parameters())

    print(f"V = {v}. Ratios against SASRec with RecBole's defaults (2 layers, inner 256) / with inner = D.")
    print("| D | m | SASRec | LSAN, no context | ratio | LSAN with context (context table excluded) | ratio | item tables ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for d in (64, 128):
        sas = {}
        for inner in (256, d):
            cfg = Config(model="SASRec", dataset="sweep", config_dict=dict(base, hidden_size=d, inner_size=inner),
                         read_cmd_line=False)
            sas[inner] = count(get_model("SASRec")(cfg, train))
        for m in range(1, 6):
            row = []
            for ctx in (False, True):
                cfg = Config(model="LSAN", dataset="sweep", read_cmd_line=False,
                             config_dict=dict(base, hidden_size=d, compression_rate=m, use_context=ctx,
                                              context_mode="factorized"))
                report = get_model("LSAN")(cfg, train).benchmark_report()
                row.append(report["params_without_context_table"])
            print(f"| {d} | {m} | {sas[256]:,} | {row[0]:,} | {row[0] / sas[256]:.3f} / {row[0] / sas[d]:.3f} | "
                  f"{row[1]:,} | {row[1] / sas[256]:.3f} / {row[1] / sas[d]:.3f} | {report['item_table_ratio']:.3f} |")


if __name__ == "__main__":
    main()
