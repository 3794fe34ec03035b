"""benchmarks/protocol_curves.py: the share of a curve's best score early stopping would keep, by RecBole's rule."""
import importlib.util
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "protocol_curves.py")
spec = importlib.util.spec_from_file_location("protocol_curves", SCRIPT)
curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(curves)


def _records(scores):
    return [{"epoch": i, "valid_ndcg": s} for i, s in enumerate(scores)]


def test_stopping_step_5_waits_for_a_sixth_validation_as_recbole_does():
    # RecBole stops when MORE than stopping_step validations in a row bring no improvement: after a best at epoch 0,
    # five worse validations do not stop it, so the best at epoch 6 is kept; a sixth worse one would have stopped it.
    assert curves.kept_by_patience(_records([0.04] + [0.03] * 5 + [0.05]), 5) == 1.0
    assert curves.kept_by_patience(_records([0.04] + [0.03] * 6 + [0.05]), 5) == pytest.approx(0.8)


def test_an_equal_score_counts_as_an_improvement():
    # RecBole resets the count on value >= best: a tie at epoch 3 restarts the wait, so the best at epoch 6 is kept
    assert curves.kept_by_patience(_records([0.04, 0.03, 0.03, 0.04, 0.03, 0.03, 0.05]), 2) == 1.0
    assert curves.kept_by_patience(_records([0.04, 0.03, 0.03, 0.03, 0.03, 0.03, 0.05]), 2) == pytest.approx(0.8)
