"""The Triton fallbacks of GPUs the CUDA kernels do not run on (mom_ops/_other_gpus.py, csrc/common/other_gpus.h).

On the CPU each fallback runs in the Triton interpreter (fp32) on the same arguments as the op's CPU kernel, and
must give its outputs (and write its in-place arguments) the same. On an H100, MOM_OPS_TRITON_FALLBACK=1 sends the
CUDA ops through the fallbacks: the public functions and the layer then match the CUDA kernels."""

import pytest
import torch

import mom_ops
from mom_ops._other_gpus import FALLBACKS, TRITON_FALLBACKS
from tests.helpers import cu_from_lengths, gdn_inputs, rel_rms, triton_device

ops = torch.ops.mom_ops
pytestmark = pytest.mark.skipif(not TRITON_FALLBACKS, reason="Triton is not installed")


def _mom_ops_names():
    return sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("mom_ops::") and not n.endswith("_triton"))


def test_every_op_has_a_fallback_with_its_schema():
    assert TRITON_FALLBACKS == _mom_ops_names() == sorted(FALLBACKS)
    for op in TRITON_FALLBACKS:
        schema, fallback = getattr(ops, op).default._schema, getattr(ops, f"{op}_triton").default._schema
        assert str(fallback) == str(schema).replace(f"mom_ops::{op}(", f"mom_ops::{op}_triton(", 1)
    assert mom_ops.build_info()["triton_fallbacks"] == TRITON_FALLBACKS


def _same(out, ref, tol):
    outs, refs = (out, ref) if isinstance(ref, (tuple, list)) else ((out,), (ref,))
    assert len(outs) == len(refs)
    for i, (x, r) in enumerate(zip(outs, refs)):
        assert x.shape == r.shape and x.dtype == r.dtype, (i, x.shape, r.shape, x.dtype, r.dtype)
        if r.is_floating_point():
            assert rel_rms(x, r) <= tol if r.numel() else True, (i, rel_rms(x, r))
        else:
            assert torch.equal(x, r), i


# The scan's Triton dots are tf32 on a GPU (fp32 products only in the interpreter): ~1e-3 per product.
_TF32_TOL = 2e-2 if triton_device() == "cuda" else 0.0


def _run_fallback(op, args):
    """FALLBACKS[op] on args moved to where Triton runs (the GPU, else the interpreter), outputs back on the CPU."""
    moved = [a.to(triton_device()) if isinstance(a, torch.Tensor) else a for a in args]
    out = FALLBACKS[op](*moved)
    cpu = lambda t: t.cpu() if isinstance(t, torch.Tensor) else t  # noqa: E731
    return (tuple(map(cpu, out)) if isinstance(out, (tuple, list)) else cpu(out)), [cpu(a) for a in moved]


def _check(op, args, tol=1e-5, mutated=()):
    """The fallback against the CPU kernel on copies of args; `mutated`: indices of in-place arguments."""
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    ref = getattr(ops, op)(*copies)
    out, moved = _run_fallback(op, args)
    _same(out, ref, tol)
    for i in mutated:
        _same(moved[i], copies[i], tol)


def _routing(N=40, M=4, k=2, B=2, masked=(3, 17)):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(N, M, generator=gen)
    mask = torch.ones(N, dtype=torch.bool)
    mask[list(masked)] = False
    plan = mom_ops.route(logits, k, batch_size=B, mask=mask)
    return logits, mask, plan, gen


@pytest.mark.parametrize("varlen", [False, True])
def test_routing_fallbacks(varlen):
    logits, mask, plan, gen = _routing()
    N, k, D = logits.shape[0], plan.topk, 24
    cu = torch.tensor([0, 15, 40], dtype=torch.int32) if varlen else None
    _check("route", (logits, k, 2, cu, mask, 64))
    dst, src = plan.dst_row, plan.src_pair
    _check("route_backward", (torch.randn(N, k, generator=gen), plan.weights, plan.memory_ids, 4, torch.float32))
    _check("permute", (torch.randn(N, D, generator=gen), dst, src))
    y = torch.randn(N * k, D, generator=gen)
    for weights in (None, plan.weights):
        _check("unpermute", (y, dst, src, weights))
        for need in (False, True):
            _check("unpermute_backward", (torch.randn(N, D, generator=gen), y, dst, src, weights, need))


@pytest.mark.parametrize("scratch_bytes", [None, 1])
def test_scan_fallbacks(scratch_bytes, monkeypatch):
    """(scratch_bytes=1: the recurrent backward one launch per sequence)"""
    if scratch_bytes is not None:
        import triton_ref.gdn

        monkeypatch.setattr(triton_ref.gdn, "SCRATCH_BYTES", scratch_bytes)
    lengths, HV, K, V = [1, 15, 0, 63, 65], 2, 32, 16
    inp = gdn_inputs(1, 150, 1, K, V, HV=HV, decay="strong", h0=True, n_seqs=len(lengths))
    q, k, v, g, beta, h0 = (inp[n] for n in ("q", "k", "v", "g", "beta", "initial_state"))
    cu = cu_from_lengths(lengths)
    for v_first in (False, True):
        state = h0.transpose(-1, -2).contiguous() if v_first else h0
        args = (q, k, v, g, beta, K**-0.5, state, True, True, v_first, cu, None)
        _check("chunk_gated_delta_rule_fwd", args, tol=max(2e-3, _TF32_TOL))  # (tf32 dots)
        out, _ = _run_fallback("chunk_gated_delta_rule_fwd_train", args)
        _same(out[:2], ops.chunk_gated_delta_rule_fwd(*args), tol=max(2e-3, _TF32_TOL))
        assert all(t.numel() == 0 for t in out[2:])  # saves nothing: its backward recomputes
        grad_o, grad_ht = torch.randn_like(v), torch.randn_like(state)
        _check("chunk_gated_delta_rule_bwd", (*args[:7], grad_o, grad_ht, True, v_first, cu, None),
               tol=max(1e-4, _TF32_TOL))
        _check("fused_recurrent_gated_delta_rule_fwd", args[:11], tol=1e-4)


def test_scan_fallbacks_on_strided_inputs():
    """A dense but permuted v (the CUDA entries return o contiguous) and a strided cu_seqlens."""
    inp = gdn_inputs(1, 100, 1, 16, 16, HV=2, h0=True, n_seqs=3)
    q, k, v, g, beta, h0 = (inp[n] for n in ("q", "k", "v", "g", "beta", "initial_state"))
    v = v.transpose(1, 2).contiguous().transpose(1, 2)
    cu = torch.stack([cu_from_lengths([30, 0, 60]), torch.full((4,), 99, dtype=torch.int32)], 1).reshape(-1)[::2]
    args = (q, k, v, g, beta, 0.25, h0, True, True, False, cu)
    _check("chunk_gated_delta_rule_fwd", (*args, None), tol=max(2e-3, _TF32_TOL))
    _check("fused_recurrent_gated_delta_rule_fwd", args, tol=1e-4)
    _check("chunk_gated_delta_rule_bwd", (*args[:7], torch.randn_like(v), torch.randn_like(h0), True, False, cu, None),
           tol=max(1e-4, _TF32_TOL))


def test_decode_fallback():
    gen = torch.Generator().manual_seed(1)
    N, J, H, HV, K, V, P = 5, 3, 2, 4, 8, 8, 20
    slots = torch.randperm(P, generator=gen)[: N * J].view(N, J).to(torch.int32)
    slots[1, 2] = -1
    args = (torch.randn(N, H, K, generator=gen), torch.randn(N, J, H, K, generator=gen),
            torch.randn(N, J, HV, V, generator=gen),
            torch.nn.functional.logsigmoid(torch.randn(N, J, HV, generator=gen)), torch.rand(N, J, HV, generator=gen),
            torch.rand(N, J, generator=gen), slots, torch.randn(P, HV, K, V, generator=gen), K**-0.5, True, False)
    _check("mom_decode_step", args, tol=1e-5, mutated=(7,))


def test_gating_fallbacks():
    gen = torch.Generator().manual_seed(2)
    R, H = 50, 6
    a, b = torch.randn(R, H, generator=gen) * 4, torch.randn(R, H, generator=gen)
    A_log, dt_bias = torch.randn(H, generator=gen), torch.randn(H, generator=gen)
    _check("gdn_gating_fwd", (a, b, A_log, dt_bias))
    grads = (torch.randn(R, H, generator=gen), torch.randn(R, H, generator=gen))
    _check("gdn_gating_bwd", (*grads, a, b, A_log, dt_bias, torch.zeros(R, H), torch.zeros(R, H)), mutated=(6, 7))


@pytest.mark.parametrize("variant", ["plain", "shared_norm_gate"])
def test_readout_fallbacks(variant):
    logits, mask, plan, gen = _routing()
    N, k, H, V = logits.shape[0], plan.topk, 2, 16
    o = torch.randn(N * k, H, V, generator=gen)
    extra = (None, None, None)
    if variant != "plain":
        extra = (torch.randn(N, H, V, generator=gen), torch.rand(V, generator=gen) + 0.5,
                 torch.randn(N, H, V, generator=gen))
    args = (o, plan.dst_row, plan.src_pair, plan.weights, *extra, 1e-6)
    _check("memory_mix_fwd", args)
    _check("memory_mix_bwd", (torch.randn(N, H, V, generator=gen), *args))


@pytest.mark.parametrize("history", [False, True])
def test_conv_fallbacks(history):
    gen = torch.Generator().manual_seed(3)
    C, W, cu = 12, 4, cu_from_lengths([5, 0, 30, 1])
    R, S = int(cu[-1]) + 3, cu.numel() - 1  # (rows past the last segment)
    x, weight = torch.randn(R, C, generator=gen), torch.randn(C, W, generator=gen)
    hist = torch.randn(S, W - 1, C, generator=gen) if history else None
    for act in (False, True):
        _check("segment_conv_fwd", (x, weight, cu, hist, act))
        grad_y = torch.randn(R, C, generator=gen)
        _check("segment_conv_bwd", (grad_y, x, weight, cu, hist, act))
        _check("segment_conv_bwd_into", (grad_y, x, weight, cu, hist, act, torch.zeros(R, C)), mutated=(6,))
    # through a routing plan's maps: x [N, C], the conv on permute(x)
    logits, mask, plan, _ = _routing()
    xt = torch.randn(logits.shape[0], C, generator=gen)
    hist = torch.randn(plan.cu_seqlens.numel() - 1, W - 1, C, generator=gen) if history else None
    maps = (plan.dst_row, plan.src_pair)
    _check("segment_conv_fwd", (xt, weight, plan.cu_seqlens, hist, True, *maps))
    grad_y = torch.randn(plan.src_pair.shape[0], C, generator=gen)
    _check("segment_conv_bwd", (grad_y, xt, weight, plan.cu_seqlens, hist, True, *maps))
    # no rows at all (the history's gradient is zeros)
    empty = cu_from_lengths([0, 0])
    hist = torch.randn(2, W - 1, C, generator=gen) if history else None
    _check("segment_conv_fwd", (x[:0], weight, empty, hist, True))
    _check("segment_conv_bwd", (x[:0], x[:0], weight, empty, hist, True))


def test_readout_fallbacks_without_value_columns():
    logits, mask, plan, gen = _routing()
    N, k = logits.shape[0], plan.topk
    args = (torch.randn(N * k, 2, 0), plan.dst_row, plan.src_pair, plan.weights, None, None, None, 1e-6)
    _check("memory_mix_fwd", args)
    _check("memory_mix_bwd", (torch.randn(N, 2, 0), *args))


# ---- on the GPU: the CUDA entries hand over to the fallbacks


@pytest.mark.gpu
@pytest.mark.parametrize("K", [128, 256])
def test_gpu_scan_through_the_fallback_matches_the_kernels(K, monkeypatch):
    inp = gdn_inputs(1, 300, 2, K, 128, HV=4, dtype=torch.bfloat16, device="cuda", h0=True, n_seqs=3)
    cu = cu_from_lengths([100, 0, 190]).cuda()  # (10 rows past the end)
    leaves = {n: t.clone().requires_grad_(True) for n, t in inp.items()}

    def run():
        x = {n: t.detach().clone().requires_grad_(True) for n, t in leaves.items()}
        o, ht = mom_ops.chunk_gated_delta_rule(**x, cu_seqlens=cu, output_final_state=True,
                                               use_qk_l2norm_in_kernel=True)
        (o.float().square().sum() + ht.square().sum()).backward()
        return [o, ht] + [x[n].grad for n in ("q", "k", "v", "g", "beta", "initial_state")]

    kernels = run()
    monkeypatch.setenv("MOM_OPS_TRITON_FALLBACK", "1")
    fallback = run()
    for i, (x, r) in enumerate(zip(fallback, kernels)):
        assert rel_rms(x, r) < 2e-2, (i, rel_rms(x, r))  # both against each other: the kernels' 16-bit class


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, K, V", [(torch.float32, 128, 128), (torch.float32, 256, 64), (torch.bfloat16, 96, 64),
                                          (torch.float16, 64, 48)])
def test_gpu_scan_inputs_the_kernels_do_not_take_run_on_the_fallback(dtype, K, V):
    """fp32 inputs and head dims the kernels do not take (fla's op takes them) run on the fallback, forward and
    backward, against the CPU op on the same (rounded) inputs in fp32. The fallback's dots are tf32 for fp32 inputs
    (as fla's): o and ht within 2e-3, the gradients, whose chunk products compound, within 1e-2 (H200: dk 8.9e-3 at
    K = V = 128, 3.8e-3 at K = 256)."""
    inp = gdn_inputs(1, 200, 2, K, V, dtype=dtype, h0=True, n_seqs=2)
    cu = cu_from_lengths([80, 120])

    def run(device):
        x = {n: (t.to(device) if t.dtype != dtype else t.to(device, dtype if device == "cuda" else torch.float32))
             .requires_grad_(True) for n, t in inp.items()}
        o, ht = mom_ops.chunk_gated_delta_rule(**x, cu_seqlens=cu.to(device), output_final_state=True,
                                               use_qk_l2norm_in_kernel=True)
        (o.float().square().sum() + ht.square().sum()).backward()
        return [o, ht] + [x[n].grad for n in ("q", "k", "v", "g", "beta", "initial_state")]

    for i, (x, r) in enumerate(zip(run("cuda"), run("cpu"))):
        assert rel_rms(x, r) < (2e-3 if dtype == torch.float32 and i < 2 else 1e-2), (i, rel_rms(x, r))


@pytest.mark.gpu
def test_gpu_layer_through_the_fallbacks_matches_the_kernels(monkeypatch):
    from mom_ops.nn import MoMAttention

    torch.manual_seed(0)
    layer = MoMAttention(256, 2, 128, num_memories=4, topk=2).cuda().to(torch.bfloat16)
    x = torch.randn(2, 200, 256, device="cuda", dtype=torch.bfloat16)

    def run():
        layer.zero_grad()
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        y = out[0] if isinstance(out, tuple) else out
        y.float().square().mean().backward()
        return [y, xi.grad] + [p.grad for p in layer.parameters() if p.grad is not None]

    kernels = run()
    monkeypatch.setenv("MOM_OPS_TRITON_FALLBACK", "1")
    fallback = run()
    assert len(fallback) == len(kernels)
    for i, (a, b) in enumerate(zip(fallback, kernels)):
        assert rel_rms(a, b) < 3e-2, (i, rel_rms(a, b))


@pytest.mark.gpu
def test_gpu_kernels_run_here():
    from mom_ops._other_gpus import kernels_run_on

    assert kernels_run_on(torch.device("cuda")) == (torch.cuda.get_device_capability() == (9, 0))
