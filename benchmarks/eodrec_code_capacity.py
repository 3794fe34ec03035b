"""What codes of a given size can keep of a trained teacher, before any student is trained.

    PYTHONPATH=. python benchmarks/eodrec_code_capacity.py --teacher_checkpoint <teacher checkpoint> \
        [--sizes 4x32,4x64,2x256] [--codes encoder|residual] [--steps 2000] [--seed 2020] [--output F.json]

For every code size ``MxK``: fit a code encoder and codebooks to the teacher's item table as EODRec's stage one does
(the ``code_fit_*`` defaults of ``properties/model/EODRec.yaml``; ``--codes residual``: residual k-means instead), make
the codes unique (``code_collision_handling: repair``), refit the codebooks by least squares for those codes
(``codebook_refit``), then evaluate the teacher (RecBole's full-ranking test on the run's own split) with its item
table replaced by the composite table. This is the accuracy the teacher's own backbone gets from such codes, a cheap
guide to the code size (a distilled student can do better or worse). Also reports the relative reconstruction
error, the paper's compression ratio (Eq. 13) and how many items shared a code before the repair.
"""
import argparse
import json
import os

import torch
from recbole.trainer import Trainer

from recbole_compress.model.layers.code_assignment import fit_codebooks, resolve_collisions
from recbole_compress.model.layers.code_encoder import GumbelCodeEncoder, fit_codes
from recbole_compress.model.item_compression import CODE_FIT
from recbole_compress.model.layers.codebook_embedding import CodebookEmbedding, paper_compression_ratio
from recbole_compress.profiling import report_json
from recbole_compress.quick_start import load_data_and_model


def parse_sizes(text):
    """``"4x32,2x256"`` -> ``[(4, 32), (2, 256)]``."""
    sizes = []
    for part in text.split(","):
        m, _, k = part.strip().partition("x")
        if not (m.isdigit() and k.isdigit()) or int(m) < 1 or int(k) < 2:
            raise SystemExit(f"--sizes: {part!r} is not MxK with M >= 1 and K >= 2 (e.g. 4x32)")
        sizes.append((int(m), int(k)))
    return sizes


def encoder_codes(items, m, k, steps, seed, generator):
    """Stage one's codes: a Gumbel code encoder and codebooks fitted to ``items``; returns ``(codes, codebooks,
    statistics)``."""
    torch.manual_seed(seed)  # the encoder's and codebooks' initial values too: the same figures on every run
    layer = CodebookEmbedding(items.shape[0] + 1, items.shape[1], m, k)
    encoder = GumbelCodeEncoder(items.shape[1], m, k)
    fit = fit_codes(encoder, layer, items, steps, lr=CODE_FIT["lr"], tau=CODE_FIT["tau"],
                    tau_start=CODE_FIT["tau_start"], batch_size=CODE_FIT["batch_size"], generator=generator)
    with torch.no_grad():
        return encoder.codes(items), layer.codebooks.detach().clone(), {"fit_mse": [fit["first_mse"], fit["last_mse"]]}


def _kmeans(points, k, iterations, generator):
    """Lloyd's k-means from a k-means++ start."""
    centres = points[torch.randint(points.shape[0], (1,), generator=generator)]
    for _ in range(k - 1):
        weights = torch.cdist(points, centres).min(1).values ** 2
        chosen = torch.multinomial(weights + 1e-12, 1, generator=generator)
        centres = torch.cat([centres, points[chosen]])
    for _ in range(iterations):
        assignment = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres, torch.cdist(points, centres).argmin(1)


def residual_codes(items, m, k, seed, generator, iterations=25):
    """Residual k-means codes (a classic alternative to stage one's encoder): codebook ``j`` clusters what codebooks
    ``1..j-1`` leave unexplained; returns ``(codes, codebooks, statistics)``."""
    residual, books, codes = items.clone(), [], []
    for _ in range(m):
        centres, assignment = _kmeans(residual, k, iterations, generator)
        residual = residual - centres[assignment]
        books.append(centres)
        codes.append(assignment)
    return torch.stack(codes, 1), torch.stack(books), {"kmeans_iterations": iterations}


def composite_table(x, m, k, steps, seed, codes_from="encoder"):
    """Codes of size ``m x k`` fitted to ``x`` (padding row 0 kept at zero) by stage one's encoder or by residual
    k-means (``codes_from``), made unique, codebooks refitted; returns ``(table, statistics)``."""
    n, d = x.shape
    generator = torch.Generator().manual_seed(seed)
    if codes_from == "encoder":
        codes, books, stats = encoder_codes(x[1:], m, k, steps, seed, generator)
    else:
        codes, books, stats = residual_codes(x[1:], m, k, seed, generator)
    layer = CodebookEmbedding(n, d, m, k)
    with torch.no_grad():
        layer.set_codes(torch.cat([codes[:1] * 0, codes]))
        before = layer.statistics()
        repaired, info = resolve_collisions(codes, books, x[1:], generator=generator)
        layer.codebooks.copy_(fit_codebooks(repaired, x[1:], k))
        table = torch.cat([x[:1] * 0, layer.lookup(repaired)])
    centred = x[1:] - x[1:].mean(0)
    error = float(((table - x)[1:] ** 2).sum(-1).mean() / (centred ** 2).sum(-1).mean())
    stats.update(codes_from=codes_from, items_sharing_a_code_before_repair=before["items_sharing_a_code"],
                 moved=info["moved"], unresolved=info["unresolved"], relative_reconstruction_error=error)
    return table, stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher_checkpoint", required=True, help="a trained teacher (its item table is fitted)")
    parser.add_argument("--sizes", default="4x32,4x64,4x256,2x256,8x32", help="comma-separated MxK code sizes")
    parser.add_argument("--steps", type=int, default=CODE_FIT["steps"], help="code-fitting updates (code_fit_steps)")
    parser.add_argument("--codes", choices=["encoder", "residual"], default="encoder",
                        help="codes from stage one's encoder (EODRec) or from residual k-means")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)

    config, teacher, _, _, _, test_data = load_data_and_model(args.teacher_checkpoint)
    trainer = Trainer(config, teacher)
    x = teacher.item_embedding.weight.detach().clone()
    evaluate = lambda: {k: float(v) for k, v in trainer.evaluate(test_data, load_best_model=False).items()}  # noqa
    result = {"teacher_checkpoint": args.teacher_checkpoint, "steps": args.steps, "seed": args.seed,
              "codes": args.codes, "teacher": evaluate(), "sizes": {}}
    for m, k in sizes:
        table, stats = composite_table(x, m, k, args.steps, args.seed, args.codes)
        with torch.no_grad():
            teacher.item_embedding.weight.copy_(table)
        scores = evaluate()
        stats.update(paper_ratio=paper_compression_ratio(x.shape[0] - 1, x.shape[1], m, k), test=scores,
                     ndcg_ratio=scores["ndcg@10"] / result["teacher"]["ndcg@10"])
        result["sizes"][f"{m}x{k}"] = stats
        if args.output:  # after every size: a stopped probe keeps what it measured
            with open(args.output, "w") as f:
                json.dump(result, f, indent=2)
        print(f"{m}x{k}: paper ratio {stats['paper_ratio']:.1f}, error {stats['relative_reconstruction_error']:.3f}, "
              f"NDCG@10 {scores['ndcg@10']:.4f} ({stats['ndcg_ratio']:.3f}x the teacher)", flush=True)
    with torch.no_grad():
        teacher.item_embedding.weight.copy_(x)
    report_json(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
