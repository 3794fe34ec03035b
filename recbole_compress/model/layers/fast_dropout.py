"""Dropout whose random mask is cheap to draw on the CPU.

torch's CPU dropout draws its keep-mask with ``bernoulli_``, several times the cost of a uniform draw; in a
transformer step on the CPU those masks are a large share of the time (docs/benchmarks/fast_dropout.md). Here the
mask is ``U(0, 1) >= p`` (one uniform draw per element from torch's generator, so ``torch.manual_seed`` makes it
reproducible), scaled by ``1 / (1 - p)`` in place and multiplied in: the same distribution of outputs as
:class:`torch.nn.Dropout` (every element kept with probability ``1 - p``, independently, and scaled), and the same
gradient (the mask times the input's gradient). On other devices, where torch's kernel is fused, it is torch's.

- :class:`FastDropout`: a drop-in :class:`torch.nn.Dropout`.
- :func:`use_fast_dropout`: replace the ``nn.Dropout`` modules of a module built elsewhere (e.g. RecBole's
  ``TransformerEncoder``) by :class:`FastDropout` of the same probability; no parameter or state changes.
"""
import torch
from torch import nn


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with a uniform-draw mask on the CPU (see the module docstring)."""

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or not x.is_floating_point():
            return super().forward(x)
        if self.p == 1.0:
            return x.mul_(0.0) if self.inplace else x * 0.0
        scaled_mask = torch.rand(x.shape, dtype=x.dtype, device=x.device).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x.mul_(scaled_mask) if self.inplace else x * scaled_mask


def use_fast_dropout(module):
    """Replace every :class:`torch.nn.Dropout` (exactly that class) inside ``module`` by a :class:`FastDropout` with
    the same ``p``, ``inplace`` and training mode; returns ``module``."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
    return module
