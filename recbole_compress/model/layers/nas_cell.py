"""A searchable cell: a DAG of sequence operations, as a supernet (all candidates per edge) or a derived cell.

AdaRec (Chen et al., WANT@NeurIPS 2023, §3.2, Eq. 2; the structure as the authors' code builds it). A cell has one
input node ``n_0`` (the previous cell's output) and ``M`` intermediate nodes; every pair ``i < j`` is an edge, so a cell
has ``M(M+1)/2`` edges, ordered ``(0->1), (0->2), (1->2), (0->3), (1->3), (2->3), ...``::

    n_j = sum_{i<j} edge_{i,j}( ReLU(n_i) )                    j = 1..M
    out = ReLU( LayerNorm( sum_j softmax(a)_j * n_j ) ) + n_0  (a: M learned "attention" logits per cell)

With a ``mask`` of valid positions (right-padded sequences) every node and the output are zero at padded positions,
and the operations read them as absent (:mod:`recbole_compress.model.layers.nas_ops`), so the output at a valid
position does not depend on the padding after it (the cell's input is expected to be zero there too).

A *genotype* names one operation per edge, nested by node: ``[[op_01], [op_02, op_12], [op_03, op_13, op_23]]``.
A supernet cell (``genotype=None``) holds all candidates on every edge and takes the operation weights of each node,
``weights[j-1]`` of shape ``[j, n_ops]``; a derived cell holds only the chosen operation per edge, under the same
module names as in the supernet (``edges.<e>.ops.<op name>...``), so a supernet's weights load into it by name.
"""
import torch
import torch.nn.functional as F
from torch import nn

from recbole_compress.model.layers.gumbel_mixed_op import GumbelMixedOp
from recbole_compress.model.layers.nas_ops import CANDIDATE_OPS, build_op


def edge_index(i, j):
    """Position of edge ``i -> j`` (``0 <= i < j``) in a cell's flat edge list."""
    return j * (j - 1) // 2 + i


def num_edges(num_nodes):
    return num_nodes * (num_nodes + 1) // 2


def validate_genotype(genotype, num_nodes, op_names=CANDIDATE_OPS, key="adarec_arch"):
    """``genotype`` as a list of lists of names, checked against ``num_nodes`` and ``op_names``.

    Raises:
        ValueError: naming ``key``, the expected shape and the allowed operation names.
    """
    shape = [j for j in range(1, num_nodes + 1)]
    if not isinstance(genotype, (list, tuple)) or len(genotype) != num_nodes or any(
        not isinstance(node, (list, tuple)) or len(node) != j for node, j in zip(genotype, shape)
    ):
        raise ValueError(
            f"{key} must list, for each of the {num_nodes} nodes (num_nodes), one operation per incoming edge "
            f"(lists of lengths {shape}), e.g. {[['skip_connect'] * j for j in shape]}; got {genotype!r}"
        )
    for node in genotype:
        for name in node:
            if name not in op_names:
                raise ValueError(f"{key}: unknown operation {name!r}; allowed: {', '.join(op_names)}")
    return [list(node) for node in genotype]


class NASCell(nn.Module):
    """One cell of ``num_nodes`` intermediate nodes over ``[B, L, channels]`` sequences.

    Args:
        channels (int): width ``d``.
        num_nodes (int): intermediate nodes ``M``.
        genotype (list or None): one operation name per edge (nested by node), or None for a supernet cell holding
            every name in ``op_names`` on every edge.
        op_names (sequence of str): the candidate operations (order of the weights' last dimension).
        dilation (int): dilation of the dilated and causal convolutions.
        pool_kernel (int): kernel of the pooling operations.
        layer_norm_eps (float): epsilon of the output LayerNorm.
    """

    def __init__(self, channels, num_nodes, genotype=None, op_names=CANDIDATE_OPS, dilation=2, pool_kernel=3,
                 layer_norm_eps=1e-8):
        super().__init__()
        self.num_nodes = int(num_nodes)
        self.op_names = list(op_names)
        if genotype is not None:
            genotype = validate_genotype(genotype, self.num_nodes, self.op_names)
        self.genotype = genotype
        edges = []
        for j in range(1, self.num_nodes + 1):
            for i in range(j):
                names = self.op_names if genotype is None else [genotype[j - 1][i]]
                edges.append(GumbelMixedOp({n: build_op(n, channels, dilation, pool_kernel) for n in names}))
        self.edges = nn.ModuleList(edges)
        self.node_attention = nn.Parameter(0.01 * torch.randn(self.num_nodes))
        self.layer_norm = nn.LayerNorm(channels, eps=layer_norm_eps)

    @property
    def is_supernet(self):
        return self.genotype is None

    def forward(self, x, weights=None, mask=None):
        """``x`` ``[B, L, d]``; ``weights`` (supernet only): list of ``[j, n_ops]`` tensors, one per node ``j``;
        ``mask`` ``[B, L]``: valid positions (optional)."""
        if self.is_supernet and weights is None:
            raise ValueError("a supernet cell needs the operation weights of each node")
        nodes = [x]
        for j in range(1, self.num_nodes + 1):
            total = None
            for i in range(j):
                edge = self.edges[edge_index(i, j)]
                out = edge(F.relu(nodes[i]), None if weights is None else weights[j - 1][i], mask)
                total = out if total is None else total + out
            nodes.append(total)
        attention = torch.softmax(self.node_attention, dim=0)
        mixed = sum(attention[j - 1] * nodes[j] for j in range(1, self.num_nodes + 1))
        out = F.relu(self.layer_norm(mixed)) + x
        return out if mask is None else out * mask.unsqueeze(-1).to(out.dtype)
