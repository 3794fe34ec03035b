"""EMD many-to-many layer mapping (POT) with BERT-EMD's layer-weight update."""
import pytest
import torch

from recbole_compress.model.layers.emd_mapper import EMDLayerMapper, emd_flow, updated_layer_weights


def test_flow_marginals_are_the_layer_weights():
    torch.manual_seed(0)
    d = torch.rand(8, 4, dtype=torch.float64, requires_grad=True)
    mapper = EMDLayerMapper(8, 4, update_weights=False)
    mapper.teacher_weights.copy_(torch.softmax(torch.randn(8), 0))
    mapper.student_weights.copy_(torch.softmax(torch.randn(4), 0))
    loss, flow = mapper(d)
    assert torch.all(flow >= 0)
    torch.testing.assert_close(flow.sum(1), mapper.teacher_weights.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(flow.sum(0), mapper.student_weights.double(), atol=1e-6, rtol=0)
    assert float(flow.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(float((flow * d.detach()).sum() / flow.sum()), abs=1e-12)
    # the gradient of the loss with respect to the distances is the flow (held constant)
    (grad,) = torch.autograd.grad(loss, d)
    torch.testing.assert_close(grad, flow / flow.sum())


def test_equal_layer_counts_and_cheap_diagonal_give_the_one_to_one_mapping():
    d = torch.empty(4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            d[i, j] = 0.1 * (i + 1) if i == j else 10 + abs(i - j)
    loss, flow = EMDLayerMapper(4, 4, update_weights=False)(d)
    torch.testing.assert_close(flow, torch.eye(4, dtype=torch.float64) / 4)
    assert float(loss) == pytest.approx(0.25)


def test_two_teacher_layers_per_student_layer():
    d = torch.ones(8, 4, dtype=torch.float64)
    for j in range(4):
        d[2 * j, j] = d[2 * j + 1, j] = 0.0
    loss, flow = EMDLayerMapper(8, 4, update_weights=False)(d)
    assert float(loss) == pytest.approx(0.0)
    for j in range(4):
        column = flow[:, j]
        assert float(column.sum()) == pytest.approx(0.25)
        assert set(torch.nonzero(column).flatten().tolist()) == {2 * j, 2 * j + 1}


def test_unequal_masses_transport_the_smaller_total():
    torch.manual_seed(1)
    a = torch.tensor([0.3, 0.3, 0.2], dtype=torch.float64)  # total 0.8
    b = torch.tensor([0.5, 0.5], dtype=torch.float64)        # total 1.0
    flow = emd_flow(a, b, torch.rand(3, 2, dtype=torch.float64))
    assert float(flow.sum()) == pytest.approx(0.8)
    assert torch.all(flow.sum(1) <= a + 1e-9) and torch.all(flow.sum(0) <= b + 1e-9)


def test_weight_update_rule_by_hand():
    w = updated_layer_weights(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]), 10.0)
    # r = [2, 6], w~ = [8/2, 8/6], softmax(w~ / 10)
    torch.testing.assert_close(w, torch.softmax(torch.tensor([0.4, 8 / 60]), 0))
    torch.testing.assert_close(w, torch.tensor([0.5663, 0.4337]), atol=1e-4, rtol=0)
    # r = [0, 3, 6]: a layer that carried no cost gets w~ = 0 (the authors' behaviour), the others 9/3 and 9/6
    w0 = updated_layer_weights(torch.tensor([0.0, 1.0, 2.0]), torch.full((3,), 1 / 3), 10.0)
    torch.testing.assert_close(w0, torch.softmax(torch.tensor([0.0, 0.3, 0.15]), 0))


def test_weights_update_in_training_only_and_persist_in_the_state_dict():
    torch.manual_seed(0)
    mapper = EMDLayerMapper(3, 2)
    d = torch.rand(3, 2)
    mapper.eval()
    mapper(d)
    torch.testing.assert_close(mapper.student_weights, torch.full((2,), 0.5))
    mapper.train()
    mapper(d)
    assert not torch.allclose(mapper.student_weights, torch.full((2,), 0.5))
    assert float(mapper.teacher_weights.sum()) == pytest.approx(1.0) and float(mapper.student_weights.sum()) == pytest.approx(1.0)
    # the layer that transfers more cheaply gets more weight
    d2 = torch.tensor([[0.1, 1.0], [0.1, 1.0], [0.1, 1.0]])
    fresh = EMDLayerMapper(3, 2)
    fresh(d2)
    assert fresh.student_weights[0] > fresh.student_weights[1]
    other = EMDLayerMapper(3, 2)
    other.load_state_dict(mapper.state_dict())
    torch.testing.assert_close(other.student_weights, mapper.student_weights)
    torch.testing.assert_close(other.teacher_weights, mapper.teacher_weights)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\[3, 2\]"):
        EMDLayerMapper(3, 2)(torch.rand(2, 3))
