"""NextItNet residual blocks with CpRec's sharing schemes: counts, identity of shared weights, causality, fidelity."""
import copy

import pytest
import torch
from recbole.model.sequential_recommender.nextitnet import ResidualBlock_b

from recbole_compress.model.layers.nextitnet_blocks import (
    SHARING_SCHEMES,
    NextItNetResidualStack,
    conv_set_index,
    middle_parameters,
)
from recbole_compress.utils import ConfigError

# the spec's worked values: d = 64, k = 3, dilations [1, 4] x 2 (R = 4)
EXPECTED_R4 = {"none": 99_840, "cross_layer": 13_376, "cross_block": 25_728, "adjacent_layer": 50_432,
               "adjacent_block": 50_432}


@pytest.mark.parametrize("scheme", SHARING_SCHEMES)
def test_parameter_counts_are_the_closed_form(scheme):
    stack = NextItNetResidualStack(64, 3, [1, 4] * 2, scheme)
    assert sum(p.numel() for p in stack.parameters()) == EXPECTED_R4[scheme] == middle_parameters(scheme, 4, 64, 3)


def test_odd_number_of_blocks_and_paper_scale():
    assert sum(p.numel() for p in NextItNetResidualStack(64, 3, [1, 4, 1, 4, 1], "adjacent_block").parameters()) == 75_392
    assert sum(p.numel() for p in NextItNetResidualStack(64, 3, [1, 4, 1, 4, 1], "adjacent_layer").parameters()) == 63_040
    # d = 512, R = 4 and 16 (the paper's Table 4 middle-layer sizes)
    assert [middle_parameters(s, 4, 512, 3) for s in SHARING_SCHEMES] == [6_303_744, 795_136, 1_582_080, 3_155_968, 3_155_968]
    assert middle_parameters("none", 16, 512, 3) == 25_214_976 and middle_parameters("cross_layer", 16, 512, 3) == 819_712


@pytest.mark.parametrize("scheme", SHARING_SCHEMES)
def test_shared_weights_are_the_same_tensor_objects(scheme):
    R = 5
    stack = NextItNetResidualStack(8, 3, [1, 2, 4, 1, 2], scheme)
    for r in range(R):
        for l in range(2):
            for r2 in range(R):
                for l2 in range(2):
                    same = conv_set_index(scheme, r, l) == conv_set_index(scheme, r2, l2)
                    assert (stack.conv(r, l).weight is stack.conv(r2, l2).weight) == same
                    assert (stack.conv(r, l).bias is stack.conv(r2, l2).bias) == same
    expected_pairs = {
        "none": [],
        "cross_layer": [((0, 0), (4, 1)), ((1, 0), (2, 1))],
        "cross_block": [((0, 0), (3, 0)), ((0, 1), (4, 1))],
        "adjacent_layer": [((2, 0), (2, 1))],
        "adjacent_block": [((0, 0), (1, 0)), ((2, 1), (3, 1))],
    }[scheme]
    for a, b in expected_pairs:
        assert stack.conv(*a).weight is stack.conv(*b).weight
    # layer norms are never shared
    lns = [stack.layer_norm(r, l) for r in range(R) for l in range(2)]
    assert len({id(m.weight) for m in lns}) == 2 * R


def test_shared_gradient_is_the_sum_of_the_per_use_gradients():
    torch.manual_seed(0)
    shared = NextItNetResidualStack(8, 3, [1, 4, 1, 4], "adjacent_block")
    unshared = NextItNetResidualStack(8, 3, [1, 4, 1, 4], "none")
    with torch.no_grad():
        for r in range(4):
            for l in range(2):
                unshared.conv(r, l).weight.copy_(shared.conv(r, l).weight)
                unshared.conv(r, l).bias.copy_(shared.conv(r, l).bias)
    x = torch.randn(3, 12, 8)
    assert torch.allclose(shared(x), unshared(x), atol=1e-6)
    shared(x).pow(2).sum().backward()
    unshared(x).pow(2).sum().backward()
    for r in (0, 2):
        for l in range(2):
            total = unshared.conv(r, l).weight.grad + unshared.conv(r + 1, l).weight.grad
            assert torch.allclose(shared.conv(r, l).weight.grad, total, atol=1e-5)


@pytest.mark.parametrize("scheme", SHARING_SCHEMES)
def test_causality_and_receptive_field(scheme):
    torch.manual_seed(0)
    stack = NextItNetResidualStack(8, 3, [1, 2], scheme)  # receptive field 1 + 2 * 3 * (1 + 2) = 19
    assert stack.receptive_field() == 19
    x = torch.randn(2, 30, 8)
    t = 25
    y = stack(x)
    x2 = x.clone()
    x2[:, t + 1:] = torch.randn(2, 30 - t - 1, 8)
    assert torch.allclose(stack(x2)[:, : t + 1], y[:, : t + 1], atol=1e-6)
    # the furthest input that reaches position t is t - 18
    far = x.clone()
    far[:, t - 19] += 10.0
    assert torch.allclose(stack(far)[:, t], y[:, t], atol=1e-6)
    near = x.clone()
    near[:, t - 18] += 10.0
    assert not torch.allclose(stack(near)[:, t], y[:, t], atol=1e-4)


def test_unshared_stack_equals_recboles_residual_block_b():
    torch.manual_seed(0)
    stack = NextItNetResidualStack(8, 3, [1, 4], "none")
    with torch.no_grad():
        for conv in stack.convs:
            conv.bias.normal_()
    blocks = [ResidualBlock_b(8, 8, kernel_size=3, dilation=d) for d in (1, 4)]
    with torch.no_grad():
        for r, block in enumerate(blocks):
            block.conv1.weight.copy_(stack.conv(r, 0).weight.unsqueeze(2))
            block.conv1.bias.copy_(stack.conv(r, 0).bias)
            block.conv2.weight.copy_(stack.conv(r, 1).weight.unsqueeze(2))
            block.conv2.bias.copy_(stack.conv(r, 1).bias)
    x = torch.randn(2, 20, 8)
    assert torch.allclose(stack(x), blocks[1](blocks[0](x)), atol=1e-5)


def test_unknown_scheme_is_refused_with_the_allowed_values():
    with pytest.raises(ConfigError, match="sharing_scheme.*adjacent_block"):
        NextItNetResidualStack(8, 3, [1], "adjacent")
