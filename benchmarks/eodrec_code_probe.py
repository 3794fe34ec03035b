"""What EODRec's code assignment keeps of a trained teacher's item table, without training a student.

    PYTHONPATH=. python benchmarks/eodrec_code_probe.py --teacher_checkpoint <EODRecTeacher checkpoint> \
        [--num_codebooks 4 --codebook_size 32 --steps 2000 --seed 2020 --evaluate] [--output F.json]

Fits the code encoder and codebooks to the teacher's table exactly as EODRec's code fitting does
(:func:`recbole_compress.model.layers.code_encoder.fit_codes` with the ``code_fit_*`` defaults), then reports for the
encoder's argmax codes, for the codes after :func:`~recbole_compress.model.layers.code_assignment.resolve_collisions`,
and for each of those with least-squares codebooks
(:func:`~recbole_compress.model.layers.code_assignment.fit_codebooks`):

- the code statistics (items sharing a code, largest group) and the relative reconstruction error of the table;
- among the test users, the share whose target shares its code with another item of their history (an exact tie);
- with ``--evaluate``, the teacher's test NDCG@10 with its table replaced by each composite table (no training).
"""
import argparse
import json
import time

import torch

from recbole_compress.model.layers.code_assignment import fit_codebooks, reconstruction_errors, resolve_collisions
from recbole_compress.model.layers.code_encoder import GumbelCodeEncoder, fit_codes
from recbole_compress.model.layers.codebook_embedding import CodebookEmbedding, code_statistics
from recbole_compress.profiling import report_json
from recbole_compress.quick_start import load_data_and_model


def tied_targets(codes, test_data):
    """Share of test users whose target's code tuple is also the code of another item in their history."""
    keys = codes.long() @ (codes.max().long() + 1) ** torch.arange(codes.shape[1])
    tied, total = 0, 0
    for interaction, _, _, _ in test_data:
        seq, target = interaction["item_id_list"], interaction["item_id"]
        same = (keys[seq] == keys[target].unsqueeze(1)) & (seq != target.unsqueeze(1)) & (seq != 0)
        tied += int(same.any(1).sum())
        total += len(target)
    return tied / max(1, total)


def evaluate_with_table(trainer, teacher, table, test_data):
    original = teacher.item_embedding.weight.detach().clone()
    with torch.no_grad():
        teacher.item_embedding.weight.copy_(table)
    result = trainer.evaluate(test_data, load_best_model=False)
    with torch.no_grad():
        teacher.item_embedding.weight.copy_(original)
    return float(result["ndcg@10"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher_checkpoint", required=True)
    parser.add_argument("--num_codebooks", type=int, default=4)
    parser.add_argument("--codebook_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--tau", type=float, default=0.3)
    parser.add_argument("--tau_start", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config, teacher, _, _, _, test_data = load_data_and_model(args.teacher_checkpoint)
    teacher.eval()
    x = teacher.item_embedding.weight.detach().clone()
    n, width = x.shape
    m, k = args.num_codebooks, args.codebook_size
    torch.manual_seed(args.seed)
    encoder, books = GumbelCodeEncoder(width, m, k), CodebookEmbedding(n, width, m, k)
    start = time.perf_counter()
    summary = fit_codes(encoder, books, x[1:], args.steps, args.lr, args.tau, tau_start=args.tau_start,
                        batch_size=args.batch_size, generator=torch.Generator().manual_seed(args.seed))
    result = {"teacher_checkpoint": args.teacher_checkpoint, "args": vars(args), "fit": summary,
              "fit_seconds": time.perf_counter() - start}
    codes = encoder.codes(x)
    start = time.perf_counter()
    repaired, info = resolve_collisions(codes[1:], books.codebooks, x[1:])
    result["repair"] = dict(info, seconds=time.perf_counter() - start)
    repaired = torch.cat([codes[:1], repaired])
    variance = float(((x[1:] - x[1:].mean(0)) ** 2).sum(-1).mean())
    trainer = None
    if args.evaluate:
        from recbole.trainer import Trainer

        trainer = Trainer(config, teacher)
        result["teacher_ndcg@10"] = evaluate_with_table(trainer, teacher, x, test_data)
    for name, c in (("encoder", codes), ("repaired", repaired)):
        for refit in (False, True):
            cb = fit_codebooks(c[1:], x[1:], k) if refit else books.codebooks.detach()
            table = CodebookEmbedding(n, width, m, k)
            with torch.no_grad():
                table.codebooks.copy_(cb)
            table.set_codes(c)
            row = {"code_statistics": code_statistics(c, k), "tied_test_targets": tied_targets(c, test_data),
                   "relative_error": float(reconstruction_errors(c[1:], cb, x[1:]).mean()) / variance}
            row["share_items_sharing"] = row["code_statistics"]["items_sharing_a_code"] / (n - 1)
            if trainer is not None:
                row["teacher_ndcg@10_on_composite"] = evaluate_with_table(trainer, teacher, table.table().detach(),
                                                                          test_data)
            result[f"{name}{'_lstsq' if refit else ''}"] = row
            if args.output:  # partial results while the evaluations run
                with open(args.output, "w") as f:
                    json.dump(result, f, indent=2)
    report_json(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
