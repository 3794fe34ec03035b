"""Knowledge-distillation losses shared by teacher-student models.

- :func:`soft_label_kl`: soft-target distillation ``KL(p_teacher || p_student)`` over the whole catalogue
  (Hinton et al. 2015; EODRec Eq. 24). The direction matters: the teacher's distribution is the target, so the loss
  is large where the teacher is confident and the student is not.
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
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    per_row = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1) * (t * t)
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean()


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
