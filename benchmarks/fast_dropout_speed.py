"""Training-step time of the plugin's models with FastDropout (their default) against the same model with torch's
``nn.Dropout``, timed interleaved in one process on one thread (docs/benchmarks/fast_dropout.md).

    PYTHONPATH=. python benchmarks/fast_dropout_speed.py [--dataset ml-100k] [--data_path <datasets folder>] \
        [--models EODRecTeacher,EODRec,LSAN,PKMACT,CpRec] [--repeats 5] [--output fast_dropout.json] \
        [--hidden_size 64] [--max_len 20]

Each model is built untrained with its YAML defaults at batch 256; the "torch" copy is a deep copy whose FastDropout
modules are turned back into ``nn.Dropout`` of the same ``p`` (same parameters, same batches, its own Adam). EODRec
is timed in its distillation stage (codes fitted briefly and frozen as fitted, trainable teacher), where a step runs the
student and the teacher.
"""
import argparse
import copy
import json

import torch
from torch import nn

from recbole_compress.model.layers.fast_dropout import FastDropout
from recbole_compress.profiling import interleaved_times
from recbole_compress.registry import get_model
from recbole_compress.run import build, make_config


def with_torch_dropout(model):
    """A deep copy of ``model`` (and of an attached EODRec teacher) with torch's dropout instead of FastDropout."""
    twin = copy.deepcopy(model)
    teacher = getattr(twin, "teacher", None)
    for module in (twin,) + ((teacher,) if isinstance(teacher, nn.Module) else ()):
        for parent in module.modules():
            for name, child in list(parent.named_children()):
                if type(child) is FastDropout:
                    setattr(parent, name, nn.Dropout(child.p, child.inplace).train(child.training))
    return twin


def trainable(model):
    params = list(model.parameters())
    teacher = getattr(model, "teacher", None)
    if isinstance(teacher, nn.Module) and getattr(model, "teacher_trainable", False):
        params += list(teacher.parameters())
    return [p for p in params if p.requires_grad]


def steps(model, batches):
    optimizer = torch.optim.Adam(trainable(model), lr=1e-3)

    def run():
        model.train()
        for batch in batches:
            optimizer.zero_grad()
            losses = model.calculate_loss(batch)
            (sum(losses) if isinstance(losses, tuple) else losses).backward()
            optimizer.step()
    return run


def build_model(name, dataset, cfg):
    if name != "EODRec":
        run = build(make_config(name, dataset, None, cfg, read_cmd_line=False))
        return run.model, run.data
    # an untrained teacher's codes collide massively, and repairing them searches long; a step's time does not
    # depend on which codes the items have, so they are kept as fitted
    run = build(make_config("EODRec", dataset, None, {**cfg, "code_fit_steps": 50, "code_collision_handling": "none"},
                            read_cmd_line=False))
    teacher = get_model("EODRecTeacher")(make_config("EODRecTeacher", dataset, None, cfg, read_cmd_line=False),
                                         run.data.train._dataset)
    student = run.model
    student.set_teacher(teacher)
    student.fit_codes()
    student.freeze_codes()
    teacher.requires_grad_(True)
    student.set_mixup_schedule(len(run.data.train))
    return student, run.data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", help="folder holding <dataset>/ (not needed for ml-100k)")
    parser.add_argument("--models", default="EODRecTeacher,EODRec,LSAN,PKMACT,CpRec")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="JSON file for the medians and ratios")
    parser.add_argument("--hidden_size", type=int, help="hidden_size of every model (default: each model's YAML)")
    parser.add_argument("--max_len", type=int, help="MAX_ITEM_LIST_LENGTH (default: RecBole's 50)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = {"state": "ERROR", "train_batch_size": 256, "show_progress": False}
    if args.data_path:  # the plans' datasets (ml-100k keeps RecBole's columns: LSAN reads its item classes)
        cfg.update(data_path=args.data_path, load_col={"inter": ["user_id", "item_id", "timestamp"]})
    for key, value in (("hidden_size", args.hidden_size), ("MAX_ITEM_LIST_LENGTH", args.max_len)):
        if value is not None:
            cfg[key] = value
    rows = {}
    print(f"{args.dataset}, batch 256, {args.batches} training steps per timing, one thread, medians of "
          f"{args.repeats}\n\n| model | FastDropout (ms/step) | torch's dropout (ms/step) | ratio |\n|---|---|---|---|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, data = build_model(name, args.dataset, cfg)
        batches = [b for _, b in zip(range(args.batches), data.train)]
        times = interleaved_times({"fast": steps(model, batches), "torch": steps(with_torch_dropout(model), batches)},
                                  repeats=args.repeats)
        fast, slow = (1000 * times[k] / args.batches for k in ("fast", "torch"))
        rows[name] = {"fast_ms_per_step": fast, "torch_ms_per_step": slow, "ratio": fast / slow}
        print(f"| {name} | {fast:.1f} | {slow:.1f} | {fast / slow:.3f} |", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"dataset": args.dataset, "batch": 256, "hidden_size": args.hidden_size, "max_len": args.max_len,
                       "repeats": args.repeats, "models": rows, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
