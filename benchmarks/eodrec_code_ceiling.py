"""How much accuracy the frozen codes alone keep: the trained teacher evaluated with its item table replaced.

    PYTHONPATH=. python benchmarks/eodrec_code_ceiling.py --checkpoint <EODRec checkpoint> \
        [--teacher_checkpoint <teacher checkpoint>] [--mixup_eta 0.8] [--output F.json]

Evaluates the teacher (RecBole's full-ranking test, the run's own split) three times: with its own table ``X``,
with the student's composite table ``E`` (codes + codebooks of the checkpoint: an upper bound on what a student with
these codes can get from the teacher's backbone), and with the training-time mixup table ``eta*X + (1-eta)*E`` (what
the authors' code evaluates with, spec §8 A1). Also reports the relative reconstruction error of ``E``.
"""
import argparse

import torch
from recbole.trainer import Trainer

from recbole_compress.model.layers.codebook_embedding import CodebookEmbedding
from recbole_compress.profiling import report_json
from recbole_compress.quick_start import load_data_and_model
from recbole_compress.trainer import load_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an EODRec checkpoint (codes and codebooks)")
    parser.add_argument("--teacher_checkpoint", default=None, help="default: the one the student's config names")
    parser.add_argument("--mixup_eta", type=float, default=None, help="default: the student's mixup_eta")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    student = load_checkpoint(args.checkpoint)
    teacher_file = args.teacher_checkpoint or student["config"]["teacher_checkpoint"]
    eta = student["config"]["mixup_eta"] if args.mixup_eta is None else args.mixup_eta
    config, teacher, _, _, _, test_data = load_data_and_model(teacher_file)
    state = student["state_dict"]
    books = state["item_codebook.codebooks"]
    m, k, n = books.shape
    layer = CodebookEmbedding(state["item_codebook.codes"].shape[0], n, m, k)
    layer.load_state_dict({"codebooks": books, "codes": state["item_codebook.codes"]})
    with torch.no_grad():
        composite = layer.table()
        x = teacher.item_embedding.weight.detach().clone()
        if composite.shape != x.shape:
            raise SystemExit(f"the student's table {tuple(composite.shape)} does not match the teacher's "
                             f"{tuple(x.shape)}: give the teacher the student was distilled from")
        centred = x[1:] - x[1:].mean(0)
        error = float(((composite - x)[1:] ** 2).sum(-1).mean() / (centred ** 2).sum(-1).mean())

    trainer = Trainer(config, teacher)
    result = {"checkpoint": args.checkpoint, "teacher_checkpoint": teacher_file, "mixup_eta": eta,
              "relative_reconstruction_error": error, "code_statistics": layer.statistics()}
    tables = (("teacher_table", x), ("composite_table", composite), ("mixup_table", eta * x + (1 - eta) * composite))
    for name, table in tables:
        with torch.no_grad():
            teacher.item_embedding.weight.copy_(table)
        result[name] = {key: float(value) for key, value in trainer.evaluate(test_data, load_best_model=False).items()}
    report_json(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
