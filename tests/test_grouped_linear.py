"""mom_ops.grouped_linear (Triton; the interpreter on the CPU) against every memory's projection + select."""

import pytest
import torch

import mom_ops
from mom_ops.grouped_linear import grouped_linear, grouped_mm_linear, grouped_mm_supported
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


def test_grouped_linear_fp64_gradients_are_fp64():
    """fp64 in, fp64 products and sums out: the weight gradient came back rounded to fp32 (rel 2e-8)."""
    device = triton_device()
    cu = torch.tensor([0, 0, 1, 1, 30, 66, 70], device=device)
    x = torch.randn(70, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    dy = torch.randn(70, 6, dtype=torch.float64, device=device)
    grads = torch.autograd.grad(grouped_linear(x, w, cu, 2), (x, w), dy)
    grads_ref = torch.autograd.grad(_select_reference(x, w, cu, 2), (x, w), dy)
    for got, ref in zip(grads, grads_ref):
        assert got.dtype == torch.float64 and rel_rms(got, ref) < 1e-12


def test_grouped_linear_bad_input():
    with pytest.raises(ValueError, match="weight \\[M, out, D\\]"):
        grouped_linear(torch.randn(4, 3), torch.randn(2, 5, 4), torch.tensor([0, 2, 4]), 1)
    with pytest.raises(ValueError, match="cu_seqlens must have"):
        grouped_linear(torch.randn(4, 3), torch.randn(2, 5, 3), torch.tensor([0, 4]), 1)
    with pytest.raises(ValueError, match="passes x's 4 rows"):  # the kernels would read and write past x and y
        grouped_linear(torch.randn(4, 3), torch.randn(2, 5, 3), torch.tensor([0, 2, 4096]), 1)
    with pytest.raises(ValueError, match="int32 / int64"):
        grouped_linear(torch.randn(4, 3), torch.randn(2, 5, 3), torch.tensor([0.0, 2, 4]), 1)
    with pytest.raises(TypeError, match="floating point"):
        grouped_linear(torch.ones(4, 3, dtype=torch.int32), torch.randn(2, 5, 3), torch.tensor([0, 2, 4]), 1)
    with pytest.raises(ValueError, match="passes x's 4 rows"):
        grouped_mm_linear(torch.randn(4, 8).bfloat16(), torch.randn(2, 8, 8), torch.tensor([0, 2, 9]), 1)


def test_grouped_linear_double_backward_raises():
    """The backward's Triton kernels have no derivative: a gradient of a gradient is an error, not a constant."""
    device = triton_device()
    cu = torch.tensor([0, 3, 5, 9], device=device)
    x = torch.randn(9, 16, device=device, requires_grad=True)
    w = torch.randn(3, 16, 16, device=device, requires_grad=True)
    with_mm = device == "cuda" or _cpu_grouped_mm()  # (torch without a CPU torch._grouped_mm: the Triton one alone)
    for f in (grouped_linear, grouped_mm_linear) if with_mm else (grouped_linear,):
        xi = x.bfloat16() if f is grouped_mm_linear else x
        gx, = torch.autograd.grad(f(xi, w, cu, 1).float().square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            gx.sum().backward()


@pytest.mark.gpu
@pytest.mark.parametrize("lengths, extra_rows, O", [([40, 0, 77, 3, 0, 129], 0, 80), ([0, 0, 5, 60, 31, 0], 9, 20)])
def test_grouped_mm_linear_matches_select_reference(lengths, extra_rows, O):
    """torch._grouped_mm path (bf16, sm90+): memories without rows, rows past the last segment (must come out 0),
    an output width that is not a multiple of 8."""
    if not grouped_mm_supported(torch.empty(0, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("torch._grouped_mm with bf16 needs an sm90+ GPU")
    M, B, D = 3, 2, 64
    gen = torch.Generator().manual_seed(1)
    cu = cu_from_lengths(lengths).long()
    R = int(cu[-1]) + extra_rows
    x = torch.randn(R, D, generator=gen).bfloat16().float()
    weight = (0.1 * torch.randn(M, O, D, generator=gen)).bfloat16().float()
    dy = torch.randn(R, O, generator=gen).bfloat16().float()
    x.requires_grad_(True)
    weight.requires_grad_(True)
    ref = _select_reference(x, weight, cu, B) * (torch.arange(R) < cu[-1])[:, None]
    gx_ref, gw_ref = torch.autograd.grad(ref, (x, weight), dy)
    xd = x.detach().to("cuda", torch.bfloat16).requires_grad_(True)
    wd = weight.detach().to("cuda", torch.bfloat16).requires_grad_(True)
    y = grouped_mm_linear(xd, wd, cu.cuda(), B)
    gx, gw = torch.autograd.grad(y, (xd, wd), dy.to("cuda", torch.bfloat16))
    assert (y[int(cu[-1]):] == 0).all() and torch.isfinite(gw).all()
    for got, want in ((y, ref), (gx, gx_ref), (gw, gw_ref)):
        assert rel_rms(got.float().cpu(), want) < 1e-2


def _cpu_grouped_mm() -> bool:
    """torch._grouped_mm runs bf16 on the CPU (recent torch versions have a fallback)."""
    try:
        torch._grouped_mm(torch.ones(8, 8, dtype=torch.bfloat16), torch.ones(1, 8, 8, dtype=torch.bfloat16),
                          offs=torch.tensor([8], dtype=torch.int32))
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_grouped_mm_linear_weight_blocks(device):
    """The weight as blocks of pieces (MoMAttention's routed [M, out_i, D] pieces, then the shared [out_i, D] ones)
    gives the same output and gradients as their concatenation, a memory without rows included (its gradient 0)."""
    if device == "cpu" and not _cpu_grouped_mm():
        pytest.skip("this torch has no CPU torch._grouped_mm")
    if device == "cuda" and not grouped_mm_supported(torch.empty(0, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("torch._grouped_mm with bf16 needs an sm90+ GPU")
    M, B, D = 3, 2, 64
    gen = torch.Generator().manual_seed(2)
    cu = cu_from_lengths([40, 0, 0, 0, 8, 129, 24, 0]).to(device)  # memory 1 has no rows; the shared one is last
    R = int(cu[-1]) + 8
    bf = lambda *shape: torch.randn(*shape, generator=gen).to(device, torch.bfloat16).requires_grad_(True)  # noqa
    x, k, v, sk, sv = bf(R, D), bf(M, 16, D), bf(M, 24, D), bf(16, D), bf(24, D)
    y = grouped_mm_linear(x, [[k, v], [sk, sv]], cu, B)
    dy = torch.randn(y.shape, generator=gen).to(device, torch.bfloat16)
    grads = torch.autograd.grad(y, (x, k, v, sk, sv), dy)
    w = torch.cat([torch.cat([k, v], 1), torch.cat([sk, sv])[None]]).detach().requires_grad_(True)
    x2 = x.detach().requires_grad_(True)
    y2 = grouped_mm_linear(x2, w, cu, B)
    gx2, gw = torch.autograd.grad(y2, (x2, w), dy)
    assert torch.equal(y, y2) and torch.equal(grads[0], gx2)
    for got, want in zip(grads[1:], (gw[:M, :16], gw[:M, 16:], gw[M, :16], gw[M, 16:])):
        assert got.shape == want.shape and torch.equal(got, want)
    assert (gw[1] == 0).all() and (y[int(cu[-1]):] == 0).all()
    with pytest.raises(ValueError, match="same width"):
        grouped_mm_linear(x, [[k, v], [sk]], cu, B)


def test_zero_empty_groups_kernel():
    """The Triton kernel behind the grouped GEMM's weight gradient: exactly the groups without rows become 0 (the last
    group, scratch, and the groups with rows keep their values)."""
    from mom_ops.grouped_linear import _zero_empty_groups_kernel

    device = triton_device()
    ends = torch.tensor([0, 5, 5, 9, 9, 9], dtype=torch.int32, device=device)  # groups 0, 2, 4 (and 5) are empty
    dw = torch.randn(6, 3, 1500, device=device).to(torch.bfloat16)
    want = dw.clone()
    want[[0, 2, 4]] = 0
    _zero_empty_groups_kernel[(5, 2)](dw, ends, 3 * 1500, BLOCK=4096)
    assert torch.equal(dw, want)
