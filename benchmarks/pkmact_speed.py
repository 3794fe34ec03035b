"""PKM-ACT's training-step and full-ranking time against SASRec (RecBole's), before and after its last block was
restricted to the scored position (2026-12-02), timed interleaved in one process on one thread (docs/PKMACT.md).

    PYTHONPATH=. python benchmarks/pkmact_speed.py [--dataset ml-100k] [--data_path <datasets folder>] \
        [--max_len 50] [--repeats 5]

Both models are built untrained with their defaults (PKM-ACT's backbone keys are SASRec's), batch 256. "every row":
PKM-ACT's forward as it was, the last block over every position and then the last valid one read (restored here by
patching; the test ``test_the_scored_output_is_the_full_encoding_at_the_last_position`` shows both give the same
values and gradients).
"""
import argparse

import torch

from recbole_compress.model.sequential_recommender.pkmact import PKMACT
from recbole_compress.profiling import interleaved_times
from recbole_compress.run import build, make_config
from recbole_compress.utils import get_model

LAST_ROW = PKMACT.forward


def every_row(self, item_seq, item_seq_len):
    """The forward pass as it was: every row of the last block, then the last valid one."""
    return self.gather_indexes(self.encode(item_seq, item_seq_len), item_seq_len - 1)


def step(model, optimizer, batches, forward=None):
    def run():
        PKMACT.forward = forward or LAST_ROW
        model.train()
        for batch in batches:
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
        PKMACT.forward = LAST_ROW
    return run


def ranking(model, users, forward=None):
    def run():
        PKMACT.forward = forward or LAST_ROW
        model.eval()
        with torch.no_grad():
            model.full_sort_predict(users)
        PKMACT.forward = LAST_ROW
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", help="folder holding <dataset>/ (not needed for ml-100k)")
    parser.add_argument("--max_len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH (the plans: 50 ml-100k, 200 lastfm)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = {"MAX_ITEM_LIST_LENGTH": args.max_len, "state": "ERROR", "train_batch_size": 256, "show_progress": False,
           "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}
    if args.data_path:
        cfg["data_path"] = args.data_path
    run = build(make_config("PKMACT", args.dataset, None, cfg, read_cmd_line=False))
    sasrec = get_model("SASRec")(make_config("SASRec", args.dataset, None, cfg, read_cmd_line=False),
                                 run.data.train._dataset)
    pkmact = run.model
    opt_p, opt_s = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (pkmact, sasrec))
    batches = [b for _, b in zip(range(4), run.data.train)]
    users = next(iter(run.data.test))[0][:256]
    times = interleaved_times({
        "PKMACT step": step(pkmact, opt_p, batches),
        "PKMACT step, every row": step(pkmact, opt_p, batches, every_row),
        "SASRec step": step(sasrec, opt_s, batches),
        "PKMACT ranking": ranking(pkmact, users),
        "PKMACT ranking, every row": ranking(pkmact, users, every_row),
        "SASRec ranking": ranking(sasrec, users),
    }, repeats=args.repeats)
    ms = {k: 1000 * v for k, v in times.items()}
    print(f"{args.dataset}, MAX_ITEM_LIST_LENGTH {args.max_len}, batch 256, one thread, medians of {args.repeats}")
    for what in ("step", "ranking"):
        now, before, base = ms[f"PKMACT {what}"], ms[f"PKMACT {what}, every row"], ms[f"SASRec {what}"]
        print(f"{what}: PKMACT {now:.1f} ms (every row {before:.1f} ms, x {now / before:.3f}); SASRec {base:.1f} ms; "
              f"PKMACT / SASRec {now / base:.3f} (every row {before / base:.3f})")


if __name__ == "__main__":
    main()
