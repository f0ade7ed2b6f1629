"""PyTorch pieces shared by the benchmarks (torch is optional: imported on
first use, ``pip install -e '.[bench]'``)."""

from __future__ import annotations


def torch_modules():
  """PyTorch pieces, imported on first use (torch is optional)."""
  import torch  # pylint: disable=g-import-not-at-top

  class ReLU(torch.autograd.Function):
    """``max(x, 0)``, keeping ``x`` and the kink value ``s`` for the
    backward pass of the two rules below."""

    @staticmethod
    def forward(ctx, x, s):
      ctx.save_for_backward(x)
      ctx.s = s
      return x.clamp(min=0)

  class ReLUAssign(ReLU):
    """relu.py's ReLUAlphaFunction: the cotangent, 0 where x < 0, and the
    kink value itself (not times the cotangent) where x == 0."""

    @staticmethod
    def backward(ctx, g):
      (x,) = ctx.saved_tensors
      gi = g.clone()
      gi[x < 0] = 0
      gi[x == 0] = ctx.s
      return gi, None

  class ReLUMultiply(ReLU):
    """ReLU'(0) = s times the cotangent (jaxkink's default rule)."""

    @staticmethod
    def backward(ctx, g):
      (x,) = ctx.saved_tensors
      return g * ((x > 0).to(g.dtype) + ctx.s * (x == 0).to(g.dtype)), None

  return torch, ReLUAssign, ReLUMultiply
