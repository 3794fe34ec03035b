"""Many-to-many layer mapping by Earth Mover's Distance (BERT-EMD, used by AdaRec's hidden-layer distillation).

Chen et al. (AdaRec, WANT@NeurIPS 2023, §3.3.3, Eqs. 5-12) after Li et al. (BERT-EMD, EMNLP 2020). The ``N`` teacher
layers and ``K`` student layers are two distributions with masses ``w_T`` and ``w_S``; ``D[i, j]`` is the cost of
transferring teacher layer ``i`` to student layer ``j``. The flow ``F`` minimises ``sum F * D`` subject to
``F >= 0``, row sums ``<= w_T``, column sums ``<= w_S`` and total flow ``min(sum w_T, sum w_S)``; the loss is
``EMD = sum(F * D) / sum(F)``. With normalised masses this is balanced optimal transport, solved exactly by POT's
network simplex (:func:`ot.emd`); unequal totals use :func:`ot.partial.partial_wasserstein` with the mass set to the
smaller total, as Eq. 10 asks.

``F`` is solved on the detached ``D`` and held constant, so the gradient of the loss with respect to ``D`` is ``F``
(divided by the total flow), which is the (sub)gradient of the optimal cost (envelope theorem).

The masses are not learned by gradient: after every training step they are re-weighted by BERT-EMD's rule (for each
side, ``c_j`` = cost carried by layer ``j``, ``r_j = c_j / w_j``, ``w~_j = sum_k r_k / r_j`` (0 when ``r_j = 0``),
``w <- softmax(w~ / T)``), so layers that transfer cheaply get more mass. They are buffers: saved in checkpoints,
untouched in eval mode.
"""
import ot
import torch
from torch import nn


def emd_flow(teacher_weights, student_weights, distances):
    """The optimal flow ``[N, K]`` (float64, no gradient) between the two layer distributions."""
    a = teacher_weights.detach().to(torch.float64).cpu()
    b = student_weights.detach().to(torch.float64).cpu()
    d = distances.detach().to(torch.float64).cpu()
    if d.shape != (a.numel(), b.numel()):
        raise ValueError(f"distances must be [{a.numel()}, {b.numel()}], got {tuple(d.shape)}")
    if torch.any(a < 0) or torch.any(b < 0):
        raise ValueError("layer weights must be non-negative")
    total_a, total_b = float(a.sum()), float(b.sum())
    if abs(total_a - total_b) <= 1e-9 * max(total_a, total_b, 1.0):
        b = b * (total_a / total_b)  # exact balance for the simplex's marginal check
        return ot.emd(a, b, d)
    from ot.partial import partial_wasserstein

    return partial_wasserstein(a, b, d, m=min(total_a, total_b))


def updated_layer_weights(costs, weights, temperature):
    """BERT-EMD's weight update for one side: ``costs[j]`` is the cost layer ``j`` carried, ``weights`` its mass."""
    ratio = torch.where(weights > 0, costs / weights.clamp_min(1e-30), torch.zeros_like(costs))
    total = ratio.sum()
    inverse = torch.where(ratio > 0, total / ratio.clamp_min(1e-30), torch.zeros_like(ratio))
    return torch.softmax(inverse / temperature, dim=0)


class EMDLayerMapper(nn.Module):
    """EMD loss between ``n_teacher`` and ``n_student`` layers, with BERT-EMD's layer-weight update.

    Args:
        n_teacher (int): teacher layers ``N``.
        n_student (int): student layers ``K``.
        weight_temperature (float): ``T`` of the weight update (BERT-EMD and AdaRec: 10).
        update_weights (bool): re-weight the layers after every training-mode call.

    Call with ``distances`` ``[N, K]`` (differentiable); returns ``(loss, flow)``.
    """

    def __init__(self, n_teacher, n_student, weight_temperature=10.0, update_weights=True):
        super().__init__()
        if n_teacher < 1 or n_student < 1:
            raise ValueError(f"need at least one layer on each side, got {n_teacher} and {n_student}")
        if weight_temperature <= 0:
            raise ValueError(f"weight_temperature must be > 0, got {weight_temperature}")
        self.n_teacher, self.n_student = int(n_teacher), int(n_student)
        self.weight_temperature = float(weight_temperature)
        self.update_weights = bool(update_weights)
        self.register_buffer("teacher_weights", torch.full((self.n_teacher,), 1.0 / self.n_teacher))
        self.register_buffer("student_weights", torch.full((self.n_student,), 1.0 / self.n_student))

    def forward(self, distances):
        flow = emd_flow(self.teacher_weights, self.student_weights, distances)
        flow_t = flow.to(device=distances.device, dtype=distances.dtype)
        loss = (flow_t * distances).sum() / flow_t.sum()
        if self.training and self.update_weights:
            self.update(distances.detach(), flow_t)
        return loss, flow_t

    @torch.no_grad()
    def update(self, distances, flow):
        """Re-weight both sides from the flow and the distances (BERT-EMD's rule)."""
        work = (flow * distances).to(self.teacher_weights.dtype)
        self.teacher_weights.copy_(updated_layer_weights(work.sum(1), self.teacher_weights, self.weight_temperature))
        self.student_weights.copy_(updated_layer_weights(work.sum(0), self.student_weights, self.weight_temperature))

    def extra_repr(self):
        return f"n_teacher={self.n_teacher}, n_student={self.n_student}, weight_temperature={self.weight_temperature}"
