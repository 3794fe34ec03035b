"""Full-catalogue scoring speed of a trained EODRec student against its teacher's dense scoring.

    PYTHONPATH=. python benchmarks/eodrec_scoring_speed.py --checkpoint <EODRec checkpoint> \
        [--teacher_checkpoint <teacher checkpoint>] [--batch_users 256] [--batches 4] [--repeats 7] [--output F.json]

Everything is timed in one process, interleaved, on the same test users (the first ``--batches`` batches of
``--batch_users`` test sessions):

- *scoring only*: from the session representations of the batch, the teacher's dense ``theta @ X.T`` against each
  exact codebook scorer of :class:`CodebookEmbedding` (``pair``, ``embedding_bag``, ``gather``, ``sparse``, ``dense`` = the
  cached composite table, ``rebuild`` = the composite table rebuilt on every call; a ``code_composition:
  pair_product`` student: ``auto``, ``pair``, ``dense``, ``rebuild``, the scorers exact for it);
- *end to end*: ``full_sort_predict`` of the teacher against the student's with each scorer (backbone included).

Ratios are the teacher's time divided by the student's (above 1: the student is faster). Each scorer's largest
absolute difference from the dense product is reported too (they are exact up to float summation order).
"""
import argparse
import sys

import torch

from recbole_compress.model.layers.codebook_embedding import PAIR_PRODUCT_SCORE_METHODS, SCORE_METHODS
from recbole_compress.profiling import interleaved_times, report_json


def load(checkpoint_path, teacher_path=None):
    """The student and its teacher, both rebuilt by the run layer on the student's own split."""
    from recbole_compress.run import restore

    student = restore(checkpoint_path)
    teacher = restore(teacher_path or student.config["teacher_checkpoint"], data=student.data, reseed=False)
    student.model.set_teacher(teacher.model)
    student.model.eval()
    teacher.model.eval()
    return student.model, teacher.model, student.data.test


def user_batches(test_data, n_users, n_batches):
    batches = []
    for batched in test_data:
        interaction = batched[0]
        for start in range(0, len(interaction), n_users):
            batches.append(interaction[start:start + n_users])
            if len(batches) >= n_batches:
                return batches
    return batches


def exact_methods(layer):
    """The scorers that are exact for this layer's composition (a ``pair_product`` layer refuses the others)."""
    return SCORE_METHODS if layer.pair_factors is None else PAIR_PRODUCT_SCORE_METHODS


def _scoring_times(model, teacher, batches, repeats):
    """Scoring alone (the final product from the sequence vectors), each formulation against the teacher's dense
    product, interleaved; and each formulation's largest difference from the dense composite product."""
    seq, seq_len = model.ITEM_SEQ, model.ITEM_SEQ_LEN
    with torch.no_grad():
        theta_s = [model.forward(b[seq], b[seq_len]) for b in batches]
        theta_t = [teacher.forward(b[seq], b[seq_len]) for b in batches]
    x = teacher.item_embedding.weight.detach()
    layer = model.item_codebook

    def dense_teacher():
        with torch.no_grad():
            for t in theta_t:
                t @ x.t()

    def scorer(method):
        def run():
            with torch.no_grad():
                for t in theta_s:
                    layer.full_scores(t, method)
        return run

    exactness = {}
    with torch.no_grad():
        reference = [t @ layer.table().t() for t in theta_s]
        for method in exact_methods(layer):
            exactness[method] = max(float((layer.full_scores(t, method) - r).abs().max())
                                    for t, r in zip(theta_s, reference))
    fns = {"teacher_dense": dense_teacher}
    fns.update({f"student_{m}": scorer(m) for m in exact_methods(layer)})
    return interleaved_times(fns, repeats=repeats, warmup=1), exactness


def _end_to_end_times(model, teacher, batches, repeats):
    """``full_sort_predict`` of the teacher and of the student with each formulation, interleaved."""
    def predict(m, method=None):
        def run():
            if method is not None:
                m.score_method = method
            with torch.no_grad():
                for b in batches:
                    m.full_sort_predict(b)
        return run

    fns = {"teacher_full_sort_predict": predict(teacher)}
    fns.update({f"student_{m}": predict(model, m) for m in exact_methods(model.item_codebook)})
    return interleaved_times(fns, repeats=repeats, warmup=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--teacher_checkpoint", default=None)
    parser.add_argument("--batch_users", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    model, teacher, test_data = load(args.checkpoint, args.teacher_checkpoint)
    batches = user_batches(test_data, args.batch_users, args.batches)
    scoring, exactness = _scoring_times(model, teacher, batches, args.repeats)
    end_to_end = _end_to_end_times(model, teacher, batches, args.repeats)
    n = len(batches)
    result = {
        "checkpoint": args.checkpoint,
        "n_items": int(model.n_items),
        "hidden_size": int(model.hidden_size),
        "M": int(model.num_codebooks),
        "K": int(model.codebook_size),
        "batches": n,
        "batch_users": args.batch_users,
        "threads": torch.get_num_threads(),
        "scoring_ms_per_batch": {k: 1000 * v / n for k, v in scoring.items()},
        "scoring_speedup_vs_teacher": {k: scoring["teacher_dense"] / v for k, v in scoring.items()},
        "end_to_end_ms_per_batch": {k: 1000 * v / n for k, v in end_to_end.items()},
        "end_to_end_speedup_vs_teacher": {k: end_to_end["teacher_full_sort_predict"] / v for k, v in end_to_end.items()},
        "max_abs_diff_vs_dense": exactness,
    }
    report_json(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
