"""gdn_gating (g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b)) against the torch expression: values,
gradients, column-slice inputs and outputs, the softplus threshold, errors, determinism, the Triton reference."""

import pytest
import torch

import mom_ops
from mom_ops.gating import gdn_gating_backward
from mom_ops.reference import gdn_gating_ref
from tests.helpers import device_param, need_kernel, rel_rms


def _inputs(R, H, dtype, device, param_dtype=torch.float32, wide=0, seed=0):
    """a, b as column slices of one [R, 2H + wide] projection (b first, as in the layer), A_log, dt_bias; a few a
    values above softplus's threshold (20) and far below it."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(R, 2 * H + wide, generator=gen) * 3
    if R > 2:
        proj[0, H] = 25.0
        proj[1, H + H - 1] = -30.0
    proj = proj.to(device, dtype)
    A_log = torch.empty(H).uniform_(0, 2.7, generator=gen).to(device, param_dtype)
    dt_bias = (torch.randn(H, generator=gen) - 4).to(device, param_dtype)
    return proj[:, H:2 * H], proj[:, :H], A_log, dt_bias


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("R, H", [(1000, 4), (37, 1), (300, 300), (0, 4)])
@pytest.mark.parametrize("dtype, param_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                (torch.float16, torch.float32)])
def test_gdn_gating_matches_reference(device, R, H, dtype, param_dtype):
    need_kernel("gdn_gating_fwd", device)
    a, b, A_log, dt_bias = _inputs(R, H, dtype, device, param_dtype, wide=3)
    leaves = [t.detach().clone().requires_grad_(True) for t in (a, b, A_log, dt_bias)]
    refs = [t.detach().cpu().clone().requires_grad_(True) for t in (a, b, A_log, dt_bias)]
    g, beta = mom_ops.gdn_gating(*leaves)
    g_ref, beta_ref = gdn_gating_ref(*refs)
    assert g.dtype == torch.float32 and beta.dtype == dtype and g.shape == beta.shape == (R, H)
    assert rel_rms(g, g_ref) < 1e-6 and rel_rms(beta, beta_ref) < 1e-6
    gen = torch.Generator().manual_seed(1)
    dg, dbeta = torch.randn(R, H, generator=gen), torch.randn(R, H, generator=gen).to(dtype)
    torch.autograd.backward([g, beta], [dg.to(device), dbeta.to(device)])
    torch.autograd.backward([g_ref, beta_ref], [dg, dbeta])
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # 16-bit grad_a / grad_b; param sums of 16-bit-rounded terms
    for ours, ref in zip(leaves, refs):
        assert ours.grad.dtype == ours.dtype and rel_rms(ours.grad, ref.grad) < tol


@pytest.mark.parametrize("device", device_param() + ["triton"])
def test_gdn_gating_strided_parameters(device):
    """A_log and dt_bias as strided views (columns of one [H, 2] tensor): the CUDA kernels and the Triton reference
    read them densely once (wrong g and parameter gradients); now the same as contiguous copies."""
    from tests.helpers import triton_device
    from triton_ref import gating as tg

    run_on = triton_device() if device == "triton" else device
    if device != "triton":
        need_kernel("gdn_gating_fwd", device)
    a, b, A_log, dt_bias = _inputs(50, 6, torch.float32, run_on, wide=1)
    dg, dbeta = torch.randn(50, 6, device=run_on), torch.randn(50, 6, device=run_on)
    results = []
    for strided in (True, False):
        # the parameters as the columns of one [H, 2] leaf (views with stride 2), or as leaves of their own
        stacked = torch.stack([A_log, dt_bias], 1).requires_grad_(device != "triton")
        own = [t.detach().clone().requires_grad_(device != "triton") for t in (A_log, dt_bias)]
        params = (stacked[:, 0], stacked[:, 1]) if strided else tuple(own)
        assert params[0].stride() == ((2,) if strided else (1,))
        if device == "triton":
            g, beta = tg.gdn_gating(a, b, *params)
            grads = list(tg.gdn_gating_backward(dg, dbeta, a, b, *params))
        else:
            ab = [t.detach().clone().requires_grad_(True) for t in (a, b)]
            g, beta = mom_ops.gdn_gating(*ab, *params)
            torch.autograd.backward([g, beta], [dg, dbeta])
            grads = [ab[0].grad, ab[1].grad] + ([stacked.grad[:, 0], stacked.grad[:, 1]] if strided
                                                else [own[0].grad, own[1].grad])
        results.append([g, beta, *grads])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_triton_softplus_keeps_tiny_values():
    """softplus(a + dt_bias) far below 1 (a = -30: 9.4e-14) as torch and the CUDA kernel's log1p give it, not 0."""
    from tests.helpers import triton_device
    from triton_ref import gating as tg

    a = torch.tensor([[-30.0, -10.0, 0.0, 25.0]], device=triton_device())
    zeros = torch.zeros(4, device=a.device)
    g, _ = tg.gdn_gating(a, torch.zeros_like(a), zeros, zeros)
    want = -torch.nn.functional.softplus(a.double().cpu())
    # (fp32: the GPU's exp / log1p are a few ulps off, 1.2e-6 relative at a = -30 on the H200; 0 would be 1.0)
    assert rel_rms(g.cpu().double(), want) < 1e-5
    assert (g.cpu().double() / want - 1).abs().max() < 1e-5


@pytest.mark.parametrize("device", device_param())
def test_gdn_gating_no_rows_with_expanded_gradients(device):
    """Zero rows and sum's backward: the incoming [0, H] gradients are expanded (strides 0), which is fine."""
    a = torch.zeros(0, 3, device=device, requires_grad=True)
    g, beta = mom_ops.gdn_gating(a, torch.zeros(0, 3, device=device), torch.zeros(3, device=device),
                                 torch.zeros(3, device=device))
    (g.sum() + beta.float().sum()).backward()
    assert a.grad.shape == (0, 3)


def test_gdn_gating_gradcheck():
    a, b, A_log, dt_bias = _inputs(12, 3, torch.float64, "cpu", torch.float64)
    args = tuple(t.detach().clone().requires_grad_(True) for t in (a, b, A_log, dt_bias))
    assert torch.autograd.gradcheck(mom_ops.gdn_gating, args)


def test_gdn_gating_opcheck():
    a, b, A_log, dt_bias = _inputs(20, 4, torch.float32, "cpu", wide=2)
    torch.library.opcheck(torch.ops.mom_ops.gdn_gating_fwd.default,
                          tuple(t.detach().clone().requires_grad_(True) for t in (a, b, A_log, dt_bias)))
    grads = (torch.randn(20, 4), torch.randn(20, 4), a, b, A_log, dt_bias, torch.empty(20, 4), torch.empty(20, 4))
    torch.library.opcheck(torch.ops.mom_ops.gdn_gating_bwd.default, grads)


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gdn_gating_bwd_into_column_slices(device, dtype):
    """The backward writes grad_a and grad_b into column slices of one wider buffer and nothing beside them; the
    parameter gradients are those of the plain autograd path, and two runs are bitwise equal."""
    need_kernel("gdn_gating_bwd", device)
    R, H = 777, 4
    a, b, A_log, dt_bias = _inputs(R, H, dtype, device, wide=5)
    gen = torch.Generator().manual_seed(3)
    dg, dbeta = torch.randn(R, H, generator=gen).to(device), torch.randn(R, H, generator=gen).to(device, dtype)
    leaves = [t.detach().clone().requires_grad_(True) for t in (a, b, A_log, dt_bias)]
    torch.autograd.backward(list(mom_ops.gdn_gating(*leaves)), [dg, dbeta])
    for _ in range(2):
        wide = torch.full((R, 2 * H + 3), float("nan"), device=device, dtype=dtype)
        dA, ddt = gdn_gating_backward(dg, dbeta, a, b, A_log, dt_bias, wide[:, 1 + H:1 + 2 * H], wide[:, 1:1 + H])
        assert torch.equal(wide[:, 1 + H:1 + 2 * H], leaves[0].grad) and torch.equal(wide[:, 1:1 + H], leaves[1].grad)
        assert torch.equal(dA, leaves[2].grad) and torch.equal(ddt, leaves[3].grad)
        assert torch.isnan(wide[:, 0]).all() and torch.isnan(wide[:, 1 + 2 * H:]).all()


@pytest.mark.gpu
def test_gpu_gdn_gating_is_the_layer_expression():
    """On the GPU, bf16 projections and parameters: the op gives the torch expression the layer used before it (the
    same fp32 math), to fp32 rounding in g and exactly in beta."""
    need_kernel("gdn_gating_fwd", "cuda")
    import torch.nn.functional as F

    a, b, A_log, dt_bias = _inputs(49152, 4, torch.bfloat16, "cuda", torch.bfloat16, wide=2048)
    g, beta = mom_ops.gdn_gating(a, b, A_log, dt_bias)
    g_expr = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    beta_expr = torch.sigmoid(b.float()).to(b.dtype)
    assert rel_rms(g, g_expr) < 1e-6 and torch.equal(beta, beta_expr)


def test_gdn_gating_bad_input():
    a, b, A_log, dt_bias = _inputs(10, 4, torch.float32, "cpu")
    with pytest.raises(ValueError, match="a must be"):
        mom_ops.gdn_gating(a[0], b, A_log, dt_bias)
    with pytest.raises(ValueError, match="b must have shape"):
        mom_ops.gdn_gating(a, b[:, :3], A_log, dt_bias)
    with pytest.raises(ValueError, match="b must have the dtype of a"):
        mom_ops.gdn_gating(a, b.double(), A_log, dt_bias)
    with pytest.raises(ValueError, match="A_log must have shape"):
        mom_ops.gdn_gating(a, b, A_log[:3], dt_bias)
    with pytest.raises(ValueError, match="dt_bias must have the dtype of A_log"):
        mom_ops.gdn_gating(a, b, A_log, dt_bias.double())
    with pytest.raises(ValueError, match="a must be a floating-point tensor"):
        mom_ops.gdn_gating(a.int(), b.int(), A_log, dt_bias)
    with pytest.raises(ValueError, match="a must have dense heads"):
        mom_ops.gdn_gating(torch.randn(4, 10).t(), b, A_log, dt_bias)
    dg, dbeta = torch.randn(10, 4), torch.randn(10, 4)
    bwd = torch.ops.mom_ops.gdn_gating_bwd
    with pytest.raises(ValueError, match="grad_g must have dtype"):
        bwd(dg.double(), dbeta, a, b, A_log, dt_bias, torch.empty(10, 4), torch.empty(10, 4))
    with pytest.raises(ValueError, match="grad_a must have shape"):
        bwd(dg, dbeta, a, b, A_log, dt_bias, torch.empty(10, 5), torch.empty(10, 4))
    with pytest.raises(ValueError, match="grad_b must have the dtype of a"):
        bwd(dg, dbeta, a, b, A_log, dt_bias, torch.empty(10, 4), torch.empty(10, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="grad_a must not share memory with grad_g"):
        bwd(dg, dbeta, a, b, A_log, dt_bias, dg, torch.empty(10, 4))
    out = torch.empty(10, 4)
    with pytest.raises(ValueError, match="grad_a must not share memory with grad_b"):
        bwd(dg, dbeta, a, b, A_log, dt_bias, out, out)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="A_log must be on"):
            mom_ops.gdn_gating(a.cuda(), b.cuda(), A_log, dt_bias.cuda())


def test_triton_gdn_gating_matches_reference():
    """The Triton reference (CPU interpreter in CI, the GPU on the device), fwd and bwd, on column slices."""
    from tests.helpers import triton_device
    from triton_ref import gating as tg

    device = triton_device()
    a, b, A_log, dt_bias = _inputs(70, 20, torch.float32, device, wide=3)
    refs = [t.detach().cpu().clone().requires_grad_(True) for t in (a, b, A_log, dt_bias)]
    g_ref, beta_ref = gdn_gating_ref(*refs)
    g, beta = tg.gdn_gating(a, b, A_log, dt_bias)
    assert rel_rms(g, g_ref) < 1e-6 and rel_rms(beta, beta_ref) < 1e-6
    dg, dbeta = torch.randn(70, 20), torch.randn(70, 20)
    torch.autograd.backward([g_ref, beta_ref], [dg, dbeta])
    grads = tg.gdn_gating_backward(dg.to(device), dbeta.to(device), a, b, A_log, dt_bias)
    for got, ref in zip(grads, refs):
        assert rel_rms(got, ref.grad) < 1e-5


@pytest.mark.parametrize("device", device_param())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scan_inputs_matches_separate_ops(device, dtype):
    """The layer's scan_inputs (k, v convs and the gates from one projection, one gradient) gives segment_conv of the
    k and v columns and gdn_gating of the b and a columns: the same values and bitwise the same gradients as
    autograd through the separate ops on split columns."""
    need_kernel("gdn_gating_bwd", device)
    need_kernel("segment_conv_bwd", device)
    from mom_ops.scan_inputs import scan_inputs
    from tests.helpers import cu_from_lengths

    gen = torch.Generator().manual_seed(4)
    H, K, V, W = 2, 16, 24, 4
    cu = cu_from_lengths([5, 0, 40, 1, 17]).to(device)
    R = int(cu[-1]) + 3
    leaves = [torch.randn(R, H * (K + V) + 2 * H, generator=gen), torch.randn(H * K, W, generator=gen) / 2,
              torch.randn(H * V, W, generator=gen) / 2, torch.rand(H, generator=gen), torch.randn(H, generator=gen),
              torch.randn(5, W - 1, H * K, generator=gen), torch.randn(5, W - 1, H * V, generator=gen)]
    leaves = [t.to(device, dtype if i in (0, 5, 6) else torch.float32) for i, t in enumerate(leaves)]
    ours = [t.clone().requires_grad_(True) for t in leaves]
    theirs = [t.clone().requires_grad_(True) for t in leaves]
    got = scan_inputs(ours[0], cu, ours[1], ours[2], ours[3], ours[4], ours[5], ours[6])
    k, v, b, a = theirs[0].split([H * K, H * V, H, H], 1)
    want = [mom_ops.segment_conv(k, theirs[1], cu, theirs[5]), mom_ops.segment_conv(v, theirs[2], cu, theirs[6]),
            *mom_ops.gdn_gating(a, b, theirs[3], theirs[4])]
    for x, y in zip(got, want):
        assert torch.equal(x, y)
    dys = [torch.randn(t.shape, generator=gen).to(device, t.dtype) for t in want]
    torch.autograd.backward(got, dys)
    torch.autograd.backward(want, dys)
    for x, y in zip(ours, theirs):
        assert torch.equal(x.grad, y.grad)
    with pytest.raises(ValueError, match="proj must have"):
        scan_inputs(leaves[0][:, 1:], cu, *leaves[1:])
