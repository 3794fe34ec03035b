"""Train one model (a teacher, or an EODRec student against a given teacher) with a wall-clock budget.

    PYTHONPATH=. python benchmarks/eodrec_train_budget.py --model EODRecTeacher --dataset tmall \
        --data_path <datasets> --max_minutes 40 --epochs 30 --output_dir <dir> [--resume <checkpoint>] \
        [--set key=value ...]

Epoch loop of the plugin trainer (train, validate, keep the best validation epoch), stopping at ``--epochs``, after
``stopping_step`` validations without improvement, or when another epoch would exceed ``--max_minutes``. The best
checkpoint is evaluated on the test split. ``--resume`` continues a checkpoint of this script (model and optimiser
state). One JSON line per epoch and a final one go to ``<output_dir>/log.jsonl``; ``--per_user`` also writes the
per-user test NDCG@10 of the best epoch (``per_user_ndcg.pt``) for paired bootstraps.

Used for EODRec's tmall teacher and the student ablations (docs/EODRec.md). The settings of the provisional probe
protocol (batch 256, learning rate 0.002, NDCG@10, stopping_step 3) are the defaults; ``--set`` overrides any key.
"""
import argparse
import json
import os
import time

import torch

TMALL_LIKE = {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": 20,
              "eval_batch_size": 1024}


def parse_value(text):
    from recbole_compress.config import Config

    return Config._convert_config_dict(None, {"v": text})["v"]


def build(args):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    from recbole_compress.quick_start import build_config
    from recbole_compress.utils import get_model, get_trainer

    cfg = {"train_batch_size": 256, "learning_rate": 0.002, "valid_metric": "NDCG@10", "stopping_step": 3,
           "epochs": args.epochs, "seed": args.seed, "show_progress": False,
           "checkpoint_dir": os.path.join(args.output_dir, "checkpoints")}
    if args.dataset != "ml-100k":
        cfg.update(TMALL_LIKE)
        cfg["data_path"] = args.data_path
    for item in args.set:
        key, value = item.split("=", 1)
        cfg[key] = parse_value(value)
    config = build_config(args.model, args.dataset, None, cfg, read_cmd_line=False)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return config, model, trainer, train_data, valid_data, test_data


def per_user_ndcg(model, test_data, k=10):
    """Per-user NDCG@10 of the full-ranking test (one positive per user, leave-one-out)."""
    model.eval()
    out = []
    with torch.no_grad():
        for batched in test_data:
            interaction, history_index, positive_u, positive_i = batched
            scores = model.full_sort_predict(interaction).view(-1, model.n_items)
            scores[:, 0] = -float("inf")
            if history_index is not None:
                scores[history_index] = -float("inf")
            target = scores[positive_u, positive_i]
            rank = (scores > target.unsqueeze(1)).sum(1)  # ties counted in the user's favour, as RecBole's topk
            out.append(torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros_like(target)))
    return torch.cat(out)


def write(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max_minutes", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--per_user", action="store_true")
    parser.add_argument("--label", default=None)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--set", action="append", default=[], help="key=value (any config key)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.output_dir, exist_ok=True)
    log = os.path.join(args.output_dir, "log.jsonl")
    start = time.perf_counter()
    config, model, trainer, train_data, valid_data, test_data = build(args)
    fit_trainer(args, trainer, model, train_data, valid_data, log, start)
    result = trainer.evaluate(test_data, load_best_model=True)
    record = {"label": args.label, "final": True, "test": {k: float(v) for k, v in result.items()},
              "best_valid_score": float(trainer.best_valid_score), "checkpoint": trainer.saved_model_file,
              "minutes": (time.perf_counter() - start) / 60, "argv": argv or __import__("sys").argv[1:]}
    report = getattr(model, "benchmark_report", None)
    if callable(report):
        from recbole_compress.trainer.checkpoint import _to_plain

        record["report"] = _to_plain(report())
    if args.per_user:
        scores = per_user_ndcg(model, test_data)
        torch.save(scores, os.path.join(args.output_dir, "per_user_ndcg.pt"))
        record["per_user_mean"] = float(scores.mean())
    write(log, record)
    print(json.dumps(record))
    return 0


def fit_trainer(args, trainer, model, train_data, valid_data, log, start):
    """RecBole's fit loop, with a time budget. Works for any plugin trainer (EODRec's stage logic runs in
    ``_train_epoch``; its teacher is prepared by ``prepare_teacher`` as in ``fit``)."""
    from recbole_compress.trainer.checkpoint import item_fingerprint

    if args.resume:
        trainer.resume_checkpoint(args.resume)
    trainer.item_fingerprint = item_fingerprint(train_data._dataset)
    if hasattr(trainer, "prepare_teacher"):
        trainer.prepare_teacher(train_data, valid_data)
    if trainer.start_epoch == 0 and args.resume is None:
        trainer.best_valid_score = -float("inf")
    longest = 0.0
    for epoch in range(trainer.start_epoch, trainer.epochs):
        t0 = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch)
        score, result = trainer._valid_epoch(valid_data)
        improved = bool(score > trainer.best_valid_score)
        if improved:
            trainer.best_valid_score, trainer.cur_step = score, 0
            trainer._save_checkpoint(epoch, verbose=False)
        else:
            trainer.cur_step += 1
        took = time.perf_counter() - t0
        longest = max(longest, took)
        loss = [float(x) for x in loss] if isinstance(loss, tuple) else float(loss)
        write(log, {"label": args.label, "epoch": epoch, "loss": loss, "valid": {k: float(v) for k, v in result.items()},
                    "improved": improved, "valid_score": float(score), "epoch_minutes": took / 60,
                    "stage": getattr(model, "stage", None)})
        elapsed = time.perf_counter() - start
        if trainer.cur_step >= trainer.stopping_step and getattr(model, "stage", "distill") == "distill":
            break
        if elapsed + longest > args.max_minutes * 60:
            break


if __name__ == "__main__":
    raise SystemExit(main())
