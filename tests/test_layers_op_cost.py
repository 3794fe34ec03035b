"""Cost table of the operations (params + MACs, normalised) and the cost-sensitive loss."""
import pytest
import torch

from recbole_compress.model.layers.gumbel_mixed_op import gumbel_softmax_sample
from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS, build_op
from recbole_compress.model.layers.op_cost import cost_loss, op_cost_table, op_params_macs

# the constants of the authors' code (models/nas/modules/operators.py)
RELEASED = [0.56531834, 0.56531834, 0.56531834, 2.12701275, 2.12701275, 2.12701275,
            0.48075444, 0.48075444, 0.48074893, 0.48074893]


def test_reference_table_reproduces_the_released_costs():
    torch.testing.assert_close(op_cost_table(), torch.tensor(RELEASED, dtype=torch.float64), atol=1e-7, rtol=0)
    assert float(op_cost_table().sum()) == pytest.approx(len(CANDIDATE_OPS))


def test_parameter_counts_match_the_modules():
    for name in CANDIDATE_OPS:
        params, _ = op_params_macs(name, 16, 10)
        assert params == sum(p.numel() for p in build_op(name, 16).parameters())


def _one_hot_edges(name, n_edges=6):
    w = torch.zeros(n_edges, len(CANDIDATE_OPS), dtype=torch.float64)
    w[:, CANDIDATE_OPS.index(name)] = 1.0
    return w


def test_cost_loss_grows_with_larger_operations():
    costs = op_cost_table()
    loss = {name: float(cost_loss(_one_hot_edges(name), costs)) for name in CANDIDATE_OPS}
    assert loss["std_cnn_5"] == loss["cau_cnn_5"] > loss["std_cnn_3"] == loss["dil_cnn_3"] > loss["max_pool"]
    assert loss["max_pool"] > loss["skip_connect"] == loss["none"]
    assert loss["cau_cnn_5"] == pytest.approx(6 * 2.12701275) and loss["none"] == pytest.approx(6 * 0.48074893)
    # per node lists (as the supernet passes them) sum the same
    nodes = [_one_hot_edges("std_cnn_5", j) for j in (1, 2, 3)]
    assert float(cost_loss(nodes, costs)) == pytest.approx(loss["std_cnn_5"])


def test_actual_size_costs_increase_with_kernel_and_width():
    small, wide = op_cost_table(channels=16, length=20), op_cost_table(channels=64, length=20)
    k3, k5 = CANDIDATE_OPS.index("std_cnn_3"), CANDIDATE_OPS.index("std_cnn_5")
    assert small[k5] > small[k3] > small[CANDIDATE_OPS.index("skip_connect")]
    assert wide[k5] > small[k5]


def test_minimising_the_cost_moves_mass_away_from_big_convolutions():
    torch.manual_seed(0)
    alpha = torch.nn.Parameter(0.01 * torch.randn(6, len(CANDIDATE_OPS)))
    before = torch.softmax(alpha.detach(), -1)
    optimizer = torch.optim.AdamW([alpha], lr=0.05)
    costs = op_cost_table()
    for _ in range(50):
        optimizer.zero_grad()
        (8.0 * cost_loss(gumbel_softmax_sample(alpha, 1.0), costs)).backward()
        optimizer.step()
    after = torch.softmax(alpha.detach(), -1)
    k5 = [CANDIDATE_OPS.index(n) for n in ("std_cnn_5", "dil_cnn_5", "cau_cnn_5")]
    cheap = [CANDIDATE_OPS.index(n) for n in ("max_pool", "avg_pool", "skip_connect", "none")]
    assert after[:, k5].sum() < before[:, k5].sum()
    assert after[:, cheap].sum() > before[:, cheap].sum()
