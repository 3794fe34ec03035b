"""Knowledge-distillation losses shared by teacher-student models.

- :func:`soft_label_kl`: soft-target distillation ``KL(p_teacher || p_student)`` over the whole catalogue
  (Hinton et al. 2015; EODRec Eq. 24). The direction matters: the teacher's distribution is the target, so the loss
  is large where the teacher is confident and the student is not.
- :func:`kl_from_log_probs`: the same from log-probabilities a model has already computed.
- :func:`info_nce`: InfoNCE between paired representations (EODRec Eq. 22): row ``r`` of ``anchor`` must pick row
  ``r`` of ``positive`` among all rows (in-batch negatives), with cosine similarity over a temperature.
"""
import torch
import torch.nn.functional as F

KL_REDUCTIONS = ("batchmean", "sum", "none")


def soft_label_kl(student_logits, teacher_logits, temperature=1.0, reduction="batchmean"):
    r"""``KL(softmax(t / T) || softmax(s / T)) * T^2`` per row, reduced.

    Args:
        student_logits, teacher_logits: ``B x n`` scores over the same items.
        temperature (float): ``T``; the ``T^2`` factor keeps gradient magnitudes comparable across temperatures
            (with ``T = 1``, as in EODRec, it is 1).
        reduction: ``batchmean`` (mean over rows), ``sum`` (over rows, the authors' code) or ``none`` (``B``).

    The gradient with respect to the student logits is ``(p_student - p_teacher) * T`` per row; it also flows into
    the teacher's logits (bidirectional distillation) unless they are detached.
    """
    t = float(temperature)
    kl = kl_from_log_probs(_log_probs(student_logits, t), _log_probs(teacher_logits, t), reduction)
    return kl if t == 1.0 else kl * (t * t)


def kl_from_log_probs(log_p_student, log_p_teacher, reduction="batchmean"):
    r"""``KL(p_teacher || p_student)`` per row from log-probabilities, reduced as in :func:`soft_label_kl`. A model
    that already has both log-softmaxes (for its cross-entropy losses, at ``T = 1``) saves computing them again: over
    a whole catalogue they are most of a distillation step's time."""
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    per_row = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean()


def _log_probs(logits, temperature):
    return F.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def info_nce(anchor, positive, temperature=0.2):
    r"""Mean over rows of ``-log( exp(cos(a_r, p_r)/tau) / sum_j exp(cos(a_r, p_j)/tau) )``.

    The positive is included in the denominator; the other rows of ``positive`` are the negatives. Fewer than two
    rows give 0 (no negative exists), without NaN.
    """
    if anchor.shape[0] < 2:
        return anchor.sum() * 0.0 + positive.sum() * 0.0
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    logits = a @ p.t() / temperature
    target = torch.arange(anchor.shape[0], device=anchor.device)
    return F.cross_entropy(logits, target)
