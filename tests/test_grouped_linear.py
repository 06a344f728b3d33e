"""mom_ops.grouped_linear (Triton; the interpreter on the CPU) against every memory's projection + select."""

import pytest
import torch

import mom_ops
from mom_ops.grouped_linear import grouped_linear
from tests.helpers import cu_from_lengths, rel_rms, triton_device


def _select_reference(x, weight, cu, batch_size):
    """y[r] = x[r] @ weight[m(r)]^T with m(r) from the memory-major cu_seqlens (the einsum path of MoMAttention)."""
    M = weight.shape[0]
    mem = (torch.searchsorted(cu, torch.arange(x.shape[0]), right=True) - 1).clamp(0, M * batch_size - 1)
    return torch.einsum("rd,rod->ro", x, weight[mem // batch_size])


@pytest.mark.parametrize("M, B, lengths, D, O", [(4, 3, None, 48, 80), (3, 2, [0, 70, 1, 0, 129, 0], 32, 64)])
def test_grouped_linear_matches_select_reference(M, B, lengths, D, O):
    device = triton_device()
    gen = torch.Generator().manual_seed(0)
    if lengths is None:
        plan = mom_ops.route(torch.randn(150, M, generator=gen), 2, batch_size=B)  # 50 tokens per sequence
        cu = plan.cu_seqlens.long()
    else:
        cu = cu_from_lengths(lengths).long()
    R = int(cu[-1])
    x = torch.randn(R, D, generator=gen, requires_grad=True)
    weight = torch.randn(M, O, D, generator=gen, requires_grad=True)
    dy = torch.randn(R, O, generator=gen)
    ref = _select_reference(x, weight, cu, B)
    gx_ref, gw_ref = torch.autograd.grad(ref, (x, weight), dy)
    xd, wd = x.detach().to(device).requires_grad_(True), weight.detach().to(device).requires_grad_(True)
    y = grouped_linear(xd, wd, cu.to(device), B)
    gx, gw = torch.autograd.grad(y, (xd, wd), dy.to(device))
    assert rel_rms(y, ref) < 1e-5 and rel_rms(gx, gx_ref) < 1e-5 and rel_rms(gw, gw_ref) < 1e-5


def test_grouped_linear_bad_input():
    with pytest.raises(ValueError, match="weight \\[M, out, D\\]"):
        grouped_linear(torch.randn(4, 3), torch.randn(2, 5, 4), torch.tensor([0, 2, 4]), 1)
    with pytest.raises(ValueError, match="cu_seqlens must have"):
        grouped_linear(torch.randn(4, 3), torch.randn(2, 5, 3), torch.tensor([0, 4]), 1)
