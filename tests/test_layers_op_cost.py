"""Cost table of the operations (params + MACs, normalised) and the cost-sensitive loss."""
import pytest
import torch

from recbole_compress.model.layers.gumbel_mixed_op import gumbel_softmax_sample
from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS, build_op
from recbole_compress.model.layers.op_cost import (
    cost_loss,
    op_cost_fractions,
    op_cost_table,
    op_params_macs,
    relative_cost,
    relative_cost_loss,
)

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


def test_cost_fractions_are_linear_in_params_and_macs():
    for d, length in ((16, 10), (64, 50)):
        c = op_cost_fractions(channels=d, length=length)
        p5, m5 = op_params_macs("std_cnn_5", d, length)
        p3, m3 = op_params_macs("dil_cnn_3", d, length)
        assert float(c[CANDIDATE_OPS.index("cau_cnn_5")]) == 1.0
        assert float(c[CANDIDATE_OPS.index("std_cnn_3")]) == pytest.approx(0.5 * (p3 / p5 + m3 / m5))
        assert float(c[CANDIDATE_OPS.index("avg_pool")]) == pytest.approx(0.5 * d * length / m5)
        assert float(c[CANDIDATE_OPS.index("skip_connect")]) == float(c[CANDIDATE_OPS.index("none")]) == 0.0


def test_relative_cost_is_the_cells_place_between_cheapest_and_costliest():
    for costs in (op_cost_table(), op_cost_fractions(channels=16, length=10), op_cost_fractions(channels=64, length=50)):
        nodes = lambda name: [_one_hot_edges(name, j) for j in (1, 2, 3)]  # noqa: E731
        assert float(relative_cost(nodes("dil_cnn_5"), costs)) == pytest.approx(1.0)
        assert float(relative_cost(nodes("none"), costs)) == pytest.approx(0.0)
        half = [_one_hot_edges("std_cnn_5", 3), _one_hot_edges("skip_connect", 3)]  # 3 of 6 edges
        assert float(relative_cost(half, costs)) == pytest.approx(0.5)
    # the same genotype costs the same fraction at any width and length
    mixed = [torch.stack([_one_hot_edges(n, 1)[0] for n in names]) for names in
             (["std_cnn_3"], ["max_pool", "cau_cnn_5"], ["none", "std_cnn_3", "avg_pool"])]
    small = float(relative_cost(mixed, op_cost_fractions(channels=16, length=10)))
    wide = float(relative_cost(mixed, op_cost_fractions(channels=128, length=100)))
    assert small == pytest.approx(wide, abs=0.01)


def _search(task_scale, beta, steps=300):
    """A toy search on one edge: choosing std_cnn_5 lowers the task loss by 10% against every other op. Returns the
    op the architecture logits end on."""
    torch.manual_seed(0)
    alpha = torch.nn.Parameter(0.01 * torch.randn(1, len(CANDIDATE_OPS)))
    optimizer = torch.optim.AdamW([alpha], lr=0.05, weight_decay=0.0)
    per_op = torch.ones(len(CANDIDATE_OPS), dtype=torch.float64)
    per_op[CANDIDATE_OPS.index("std_cnn_5")] = 0.9
    costs = op_cost_fractions(channels=16, length=10)
    for _ in range(steps):
        optimizer.zero_grad()
        y = gumbel_softmax_sample(alpha, 1.0).double()
        task = task_scale * (y * per_op).sum()
        (task + relative_cost_loss(task, [y], costs, beta)).backward()
        optimizer.step()
    return CANDIDATE_OPS[int(alpha.argmax())]


@pytest.mark.parametrize("task_scale", [1.0, 300.0])
def test_relative_beta_trades_a_relative_task_gain_whatever_the_loss_scale(task_scale):
    """The kernel-5 conv (cost fraction 1) is worth it when it lowers the task loss by more than beta of it:
    here 10%, so it wins at beta 0.05 and loses at beta 0.3, for a task loss of 1 or of 300."""
    assert _search(task_scale, 0.05) == "std_cnn_5"
    assert _search(task_scale, 0.3) != "std_cnn_5"
