"""LSAN's training-step and full-ranking time against SASRec (RecBole's), and what each of LSAN's speed changes of
2026-12-01 gave, timed interleaved in one process on one thread (docs/LSAN.md#speed-2026-12-01).

    PYTHONPATH=. python benchmarks/lsan_speed.py --data_path <datasets folder> [--dataset beauty] [--rounds 6] \
        [--lsan n_layers=2 ...]

Both models are built untrained on the dataset with LSAN's defaults and no context (SASRec at RecBole's defaults),
batch 256, sequences of 20. "Changes": LSAN's step with its convolution heads as a grouped ``F.conv1d``, its
multiplicative merge as ``prod`` and its last layer over every row (the code before the change, restored here by
patching), then with each change in turn. The first round is a warm-up; medians of the rest.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import yaml

import recbole_compress.model.layers.compositional_embedding as compositional
import recbole_compress.model.layers.temporal_context as temporal
import recbole_compress.model.sequential_recommender.lsan as lsan_module
from recbole_compress.model.layers.twin_attention import DepthwiseConvHeads, TwinAttentionEncoder, rows_at
from recbole_compress.run import build, make_config
from recbole_compress.utils import get_model

SHIFTED, PRODUCTS, ROWS = DepthwiseConvHeads.forward, compositional.elementwise_product, TwinAttentionEncoder.forward


def conv1d_heads(self, x, index=None):
    """The convolution heads as they were: one grouped convolution, every row."""
    b, t, d = x.shape
    weight = self.weight.permute(1, 0, 2).reshape(d * self.n_heads, 1, self.kernel_size)
    y = F.conv1d(F.pad(x.transpose(1, 2), self.padding), weight, groups=d)
    return y.view(b, d, self.n_heads, t).permute(0, 3, 2, 1).reshape(b, t, self.n_heads * d)


def prod_merge(vectors):
    return vectors.prod(dim=-2)


def every_row(self, x, positions, attention_mask, mask, index=None):
    """The encoder as it was: every row of the last layer, then the rows the loss reads."""
    return rows_at(ROWS(self, x, positions, attention_mask, mask), index)


VARIANTS = {
    "before (conv1d, prod, every row)": (conv1d_heads, prod_merge, every_row),
    "shifted multiply-adds": (SHIFTED, prod_merge, every_row),
    "+ products": (SHIFTED, PRODUCTS, every_row),
    "+ last layer at the last position (now)": (SHIFTED, PRODUCTS, ROWS),
}


def use(variant):
    conv, merge, encoder = VARIANTS[variant]
    DepthwiseConvHeads.forward, TwinAttentionEncoder.forward = conv, encoder
    for module in (compositional, temporal, lsan_module):
        module.elementwise_product = merge


def step_seconds(model, optimizer, batches):
    model.train()
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(batches)


def ranking_seconds(model, users):
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model.full_sort_predict(users)
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--lsan", nargs="*", default=[], help="LSAN settings over its defaults, e.g. n_layers=2")
    args = parser.parse_args()
    lsan_settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.lsan)}
    torch.set_num_threads(1)
    cfg = {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": 20,
           "data_path": args.data_path, "state": "ERROR", "train_batch_size": 256, "show_progress": False}
    run = build(make_config("LSAN", args.dataset, None, dict(cfg, use_context=False, **lsan_settings),
                            read_cmd_line=False))
    sasrec = get_model("SASRec")(make_config("SASRec", args.dataset, None, cfg, read_cmd_line=False),
                                 run.data.train._dataset)
    models = {"LSAN": run.model, "SASRec": sasrec}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
    batches = [b for _, b in zip(range(8), run.data.train)]
    users = next(iter(run.data.test))[0][:256]
    times = {key: [] for key in ["SASRec step", "LSAN step", "SASRec ranking", "LSAN ranking", *VARIANTS]}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[f"{name} step"].append(step_seconds(model, optimizers[name], batches))
            times[f"{name} ranking"].append(ranking_seconds(model, users))
        for variant in VARIANTS:
            use(variant)
            times[variant].append(step_seconds(run.model, optimizers["LSAN"], batches))
        use("+ last layer at the last position (now)")
    med = {key: 1000 * statistics.median(values[1:]) for key, values in times.items()}
    for what in ("step", "ranking"):
        print(f"{what}: LSAN {med['LSAN ' + what]:.1f} ms, SASRec {med['SASRec ' + what]:.1f} ms, "
              f"LSAN / SASRec {med['LSAN ' + what] / med['SASRec ' + what]:.3f}")
    first = med["before (conv1d, prod, every row)"]
    for variant in VARIANTS:
        print(f"LSAN step, {variant}: {med[variant]:.1f} ms, x before {med[variant] / first:.3f}")


if __name__ == "__main__":
    main()
