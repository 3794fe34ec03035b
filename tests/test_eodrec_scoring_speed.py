"""benchmarks/eodrec_scoring_speed.py: it times only the scorers that are exact for the student's composition."""
import importlib.util
import os

import torch

from recbole_compress.model.layers.codebook_embedding import SCORE_METHODS, CodebookEmbedding

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "eodrec_scoring_speed.py")
spec = importlib.util.spec_from_file_location("eodrec_scoring_speed", SCRIPT)
scoring_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scoring_speed)


def test_every_timed_scorer_runs_and_is_exact_for_both_compositions():
    query = torch.randn(3, 8)
    for composition, expected in (("sum", SCORE_METHODS), ("pair_product", ("auto", "pair", "dense", "rebuild"))):
        layer = CodebookEmbedding(300, 8, 4, 4, composition=composition).eval()
        layer.set_codes(torch.randint(0, 4, (300, 4), generator=torch.Generator().manual_seed(0)))
        if layer.pair_factors is not None:
            with torch.no_grad():
                layer.pair_factors.normal_()
        methods = scoring_speed.exact_methods(layer)
        assert tuple(methods) == tuple(expected)
        with torch.no_grad():
            for method in methods:
                torch.testing.assert_close(layer.full_scores(query, method), query @ layer.table().t(),
                                           rtol=1e-5, atol=1e-5)
