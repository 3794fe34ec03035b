"""The DAG cell: supernet (all candidates per edge) and derived (one op per edge, same parameter names)."""
import pytest
import torch

from recbole_compress.model.layers.gumbel_mixed_op import argmax_onehot
from recbole_compress.model.layers.nas_cell import NASCell, edge_index, num_edges, validate_genotype
from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS

GENOTYPE = [["cau_cnn_3"], ["skip_connect", "max_pool"], ["none", "std_cnn_5", "avg_pool"]]


def _alphas_for(genotype):
    alphas = []
    for node in genotype:
        a = torch.zeros(len(node), len(CANDIDATE_OPS))
        for i, name in enumerate(node):
            a[i, CANDIDATE_OPS.index(name)] = 1.0
        alphas.append(a)
    return alphas


def test_edges_and_order():
    assert num_edges(3) == 6 and [edge_index(i, j) for j in (1, 2, 3) for i in range(j)] == list(range(6))
    cell = NASCell(4, 3)
    assert len(cell.edges) == 6 and all(len(edge.ops) == len(CANDIDATE_OPS) for edge in cell.edges)


def test_derived_cell_has_the_supernets_names_and_outputs():
    torch.manual_seed(0)
    supernet = NASCell(5, 3)
    derived = NASCell(5, 3, GENOTYPE)
    names = set(derived.state_dict())
    assert names <= set(supernet.state_dict())
    assert {n.split(".")[3] for n in names if n.startswith("edges.")} == {"cau_cnn_3", "std_cnn_5"}
    derived.load_state_dict({k: v for k, v in supernet.state_dict().items() if k in names})
    supernet.eval(), derived.eval()
    x = torch.randn(2, 7, 5)
    weights = [argmax_onehot(a) for a in _alphas_for(GENOTYPE)]
    with torch.no_grad():
        torch.testing.assert_close(derived(x), supernet(x, weights))


def test_cell_output_is_residual_of_the_normalised_attention_sum():
    torch.manual_seed(0)
    cell = NASCell(4, 2, [["skip_connect"], ["none", "skip_connect"]])
    x = torch.randn(1, 3, 4)
    n1 = torch.relu(x)
    n2 = torch.relu(n1)
    a = torch.softmax(cell.node_attention, 0)
    expected = torch.relu(cell.layer_norm(a[0] * n1 + a[1] * n2)) + x
    torch.testing.assert_close(cell(x), expected)


def test_supernet_cell_needs_weights():
    with pytest.raises(ValueError, match="operation weights"):
        NASCell(4, 3)(torch.randn(1, 3, 4))


def test_genotype_validation_names_the_key_and_allowed_values():
    with pytest.raises(ValueError, match="adarec_arch must list"):
        validate_genotype([["skip_connect"]], 3)
    with pytest.raises(ValueError, match="allowed: std_cnn_3"):
        validate_genotype([["conv_7"], ["none", "none"], ["none"] * 3], 3)
    assert validate_genotype(GENOTYPE, 3) == GENOTYPE


@pytest.mark.parametrize("supernet", [False, True])
def test_valid_outputs_do_not_depend_on_the_padding(supernet):
    """The same sequences padded to 6 or to 11 positions with different garbage: the same cell output at every valid
    position (training mode: the BatchNorm statistics exclude padding), zeros at padded positions."""
    genotype = [["std_cnn_5"], ["max_pool", "dil_cnn_3"], ["avg_pool", "std_cnn_3", "dil_cnn_5"]]
    lengths = torch.tensor([2, 6, 4])
    x = torch.randn(3, 6, 5)
    outs = []
    for total, garbage in ((6, 30.0), (11, -7.0)):
        mask = torch.arange(total)[None, :] < lengths[:, None]
        padded = torch.full((3, total, 5), garbage)
        padded[:, :6][mask[:, :6]] = x[mask[:, :6]]
        torch.manual_seed(0)
        cell = NASCell(5, 3, None if supernet else genotype)
        weights = [torch.softmax(a * 3, -1) for a in _alphas_for(genotype)] if supernet else None
        out = cell(padded, weights, mask)
        assert not out[~mask].any()
        outs.append(out[:, :6][mask[:, :6]])
    torch.testing.assert_close(outs[0], outs[1])
