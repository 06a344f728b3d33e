"""MoMAttention (built from mom_ops ops) against the naive token-by-token layer: outputs, aux loss, gradients,
padded and packed inputs."""

import copy

import pytest
import torch

import mom_ops.nn
from mom_ops.nn import MoMAttention, MoMCache, segment_causal_conv
from mom_ops.reference import MoMConfig, mom_layer_ref
from tests.helpers import cu_from_lengths, device_param, need_kernel, rel_rms


def _layer(shared=True, seed=0):
    torch.manual_seed(seed)
    layer = MoMAttention(hidden_size=32, num_heads=2, head_dim=8, num_memories=4, topk=2, shared_memory=shared)
    with torch.no_grad():  # livelier weights than fla's small init, so every term matters in the comparison
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cfg = MoMConfig(hidden_size=32, num_heads=2, head_dim=8, num_memories=4, topk=2, shared_memory=shared)
    return layer, cfg


def test_segment_conv_matches_per_segment_loop():
    x, w = torch.randn(20, 3), torch.randn(3, 4)
    cu = cu_from_lengths([5, 0, 1, 12])  # rows 18, 19 belong to no segment
    y = segment_causal_conv(x, w, cu)
    expected = torch.zeros_like(x)
    for s in range(len(cu) - 1):
        seg = x[cu[s]:cu[s + 1]]
        padded = torch.cat([torch.zeros(3, 3), seg])
        for t in range(seg.shape[0]):
            expected[cu[s] + t] = torch.nn.functional.silu((padded[t:t + 4] * w.t()).sum(0))
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("shared", [True, False])
def test_layer_matches_reference_padded(shared):
    layer, cfg = _layer(shared)
    x = torch.randn(2, 21, 32)
    mask = torch.ones(2, 21, dtype=torch.bool)
    mask[1, :4] = False  # left padding
    mask[0, 19:] = False  # right padding
    out, aux = layer(x, attention_mask=mask)
    ref, aux_ref, _ = mom_layer_ref(layer.reference_params(), cfg, x, mask=mask)
    assert rel_rms(out[mask], ref[mask]) < 1e-4
    assert torch.allclose(aux, aux_ref, rtol=1e-5)


def test_layer_matches_reference_packed():
    layer, cfg = _layer(seed=1)
    lengths = [7, 1, 13]
    x = torch.randn(1, sum(lengths), 32)
    out, _ = layer(x, cu_seqlens=cu_from_lengths(lengths))
    cu = cu_from_lengths(lengths).tolist()
    for s in range(len(lengths)):
        ref, _, _ = mom_layer_ref(layer.reference_params(), cfg, x[:, cu[s]:cu[s + 1]])
        assert rel_rms(out[:, cu[s]:cu[s + 1]], ref) < 1e-4


def test_layer_gradients_match_reference():
    layer, cfg = _layer(seed=2)
    x = torch.randn(2, 9, 32, requires_grad=True)
    dy = torch.randn(2, 9, 32)
    out, aux = layer(x)
    ((out * dy).sum() + aux).backward()
    params = {name: t.detach().clone().requires_grad_(True) for name, t in layer.reference_params().items()}
    x_ref = x.detach().clone().requires_grad_(True)
    ref, aux_ref, _ = mom_layer_ref(params, cfg, x_ref)
    ((ref * dy).sum() + aux_ref).backward()
    assert rel_rms(x.grad, x_ref.grad) < 1e-4
    for name, t in layer.reference_params().items():
        assert rel_rms(t.grad, params[name].grad) < 1e-4, name


@pytest.mark.parametrize("device", device_param())
def test_layer_fused_q_permute_matches(device, monkeypatch):
    """mom_ops.nn.FUSE_Q_PERMUTE (the q conv reading the token rows through the stream plan) gives the same output
    and gradients as the permuted copy, with padding (unused stream rows)."""
    need_kernel("segment_conv_bwd", device)
    if device == "cuda":
        need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    if device == "cuda":  # the CUDA scan: head_dim 64 and up, 16-bit
        layer, dtype = _gpu_layer_pair(seed=3)[1], torch.bfloat16
    else:
        layer, dtype = _layer(seed=3)[0], torch.float32
    hidden = layer.hidden_size
    x = torch.randn(2, 40, hidden).to(device, dtype)
    mask = torch.ones(2, 40, dtype=torch.bool, device=device)
    mask[0, :5] = False
    dy = torch.randn(2, 40, hidden).to(device, dtype)
    results = []
    for fused in (False, True):
        monkeypatch.setattr(mom_ops.nn, "FUSE_Q_PERMUTE", fused)
        layer.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        out, aux = layer(xg, attention_mask=mask)
        ((out * dy).sum() + aux).backward()
        results.append([out, xg.grad] + [p.grad for p in layer.parameters()])
    tol = 1e-6 if dtype == torch.float32 else 2e-3  # the same math in the same order: equal up to rounding noise
    for a, b in zip(*results):
        assert rel_rms(a, b) < tol


def test_layer_bad_input():
    layer, _ = _layer()
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(2, 5, 31))
    with pytest.raises(ValueError, match="packed input"):
        layer(torch.randn(2, 5, 32), cu_seqlens=cu_from_lengths([5, 5]))
    with pytest.raises(ValueError, match="topk must be"):
        MoMAttention(hidden_size=32, num_heads=2, head_dim=8, num_memories=2, topk=3)
    with pytest.raises(ValueError, match="x is torch.bfloat16"):  # (a matmul's dtype error before)
        layer(torch.randn(2, 5, 32, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="cache must be a MoMCache"):
        layer(torch.randn(2, 1, 32), cache=(None,))
    with pytest.raises(ValueError, match="batch_size must be"):
        MoMCache.empty(layer, -1, "cpu")


def test_cache_of_another_layer_with_the_same_shapes_is_refused():
    """M = 5 memories without a shared one have as many pool rows as M = 4 with it: the shapes cannot tell."""
    x = torch.randn(2, 6, 32)
    five = MoMAttention(hidden_size=32, num_heads=2, head_dim=8, num_memories=5, topk=2, shared_memory=False)
    four, _ = _layer()
    with torch.no_grad():
        _, _, cache = five(x, use_cache=True)
        with pytest.raises(ValueError, match="cache.num_memories is 5"):
            four(x[:, :1], cache=cache)


def test_overflowed_router_logits_keep_the_shared_memory_and_the_routed_weights():
    """+inf router logits (an overflowed gate) tie with the +inf the shared memory's column is routed by: the
    stream plan clamps them, so prefill still puts the shared memory first with weight 1, as the decode step and the
    reference do (prefill read 0.30 relative error here before)."""
    layer, cfg = _layer(seed=11)
    with torch.no_grad():
        layer.gate.weight[:3] = 1e38  # memories 0, 1, 2 get +inf logits
    x = torch.rand(1, 1, 32) + 0.1
    ref, _, _ = mom_layer_ref(layer.reference_params(), cfg, x)
    with torch.no_grad():
        prefill, _ = layer(x)
        decode, _ = layer(x, cache=MoMCache.empty(layer, 1, "cpu"))
    assert rel_rms(prefill, ref) < 1e-5 and rel_rms(decode, ref) < 1e-5


@pytest.mark.parametrize("fuse_q", [False, True])
def test_layer_compiles_fullgraph(fuse_q, monkeypatch):
    """Dynamo traces the whole layer (fake kernels, autograd registrations) without graph breaks, with the q conv
    through the plan too."""
    monkeypatch.setattr(mom_ops.nn, "FUSE_Q_PERMUTE", fuse_q)
    layer, _ = _layer(seed=3)
    x = torch.randn(2, 9, 32, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out, aux = compiled(x)
    (out.sum() + aux).backward()
    ref, aux_ref = layer(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(aux, aux_ref)


def test_prefill_then_decode_matches_reference():
    layer, cfg = _layer(seed=4)
    x = torch.randn(2, 12, 32)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :3] = False  # left padding in the prompt
    ref, _, _ = mom_layer_ref(layer.reference_params(), cfg, x, mask=mask)
    with torch.no_grad():
        out, _, cache = layer(x[:, :8], attention_mask=mask[:, :8], use_cache=True)
        assert rel_rms(out[mask[:, :8]], ref[:, :8][mask[:, :8]]) < 1e-4
        for t in range(8, 12):  # decode: one token per sequence, routing changes every step
            step, _, cache = layer(x[:, t:t + 1], cache=cache, use_cache=True)
            assert rel_rms(step[:, 0], ref[:, t]) < 1e-4, t
    assert cache.seen_tokens.tolist() == [12, 9]


@pytest.mark.parametrize("shared", [True, False])
def test_chunked_prefill_matches_one_prefill(shared):
    """A second prefill continues from the cache (states and conv histories), including memories that got no
    token in the first part."""
    layer, cfg = _layer(shared, seed=5)
    x = torch.randn(2, 14, 32)
    with torch.no_grad():
        full, _, cache_full = layer(x, use_cache=True)
        a, _, cache = layer(x[:, :2], use_cache=True)  # 2 tokens: most memories see nothing yet
        b, _, cache = layer(x[:, 2:], cache=cache, use_cache=True)
    assert rel_rms(torch.cat([a, b], 1), full) < 1e-4
    assert rel_rms(cache.states, cache_full.states) < 1e-4
    assert torch.equal(cache.seen_tokens, cache_full.seen_tokens)


@pytest.mark.parametrize("steps", [5, 1])
def test_backward_through_a_call_with_a_cache(steps):
    """Training from a cache (chunked prefill, truncated BPTT): the cache's states and conv histories are constants
    (autograd saved views of the cache rows that the call then overwrote: the backward failed), the gradients those of
    the reference started from the same cache; a one-token call takes the differentiable path while autograd records
    it (the decode step ran under no_grad: the output had no graph)."""
    layer, cfg = _layer(seed=6)
    x = torch.randn(2, 7 + steps, 32)
    dy = torch.randn(2, steps, 32)
    with torch.no_grad():
        _, _, cache = layer(x[:, :7], use_cache=True)
        _, _, caches_ref = mom_layer_ref(layer.reference_params(), cfg, x[:, :7])
    x2 = x[:, 7:].clone().requires_grad_(True)
    out, aux, cache = layer(x2, cache=cache, use_cache=True)
    ((out * dy).sum() + aux).backward()
    params = {name: t.detach().clone().requires_grad_(True) for name, t in layer.reference_params().items()}
    x2_ref = x2.detach().clone().requires_grad_(True)
    ref, aux_ref, _ = mom_layer_ref(params, cfg, x2_ref, caches=caches_ref)
    ((ref * dy).sum() + aux_ref).backward()
    assert rel_rms(out, ref) < 1e-4
    assert rel_rms(x2.grad, x2_ref.grad) < 1e-4
    for name, t in layer.reference_params().items():
        assert rel_rms(t.grad, params[name].grad) < 1e-4, name
    assert cache.seen_tokens.tolist() == [7 + steps] * 2


@pytest.mark.parametrize("shared", [True, False])
def test_cache_index_select_reorders_sequences(shared):
    """MoMCache.index_select (a beam search's reorder, dropping finished sequences): decoding from the picked cache
    equals decoding from a prefill of the picked prompts."""
    layer, _ = _layer(shared, seed=10)
    x = torch.randn(3, 9, 32)
    index = torch.tensor([2, 0, 0])
    with torch.no_grad():
        _, _, cache = layer(x[:, :7], use_cache=True)
        _, _, expected = layer(x[index, :7], use_cache=True)
        picked = cache.index_select(index)
        for t in (7, 8):
            got, _, picked = layer(x[index, t:t + 1], cache=picked, use_cache=True)
            want, _, expected = layer(x[index, t:t + 1], cache=expected, use_cache=True)
            torch.testing.assert_close(got, want)
    assert picked.seen_tokens.tolist() == [9, 9, 9]
    assert cache.index_select(torch.tensor([], dtype=torch.int64)).states.shape[0] == 0
    with pytest.raises(ValueError, match="outside"):
        cache.index_select(torch.tensor([3]))
    with pytest.raises(ValueError, match="1-D int"):
        cache.index_select(torch.tensor([0.0]))


@pytest.mark.parametrize("shared", [True, False])
def test_masked_decode_step_matches_the_prefill_path(shared):
    """A one-token call with attention_mask takes the one-launch decode step (it took the multi-launch prefill path):
    a masked sequence (0: no token this step; its x may hold NaN) gets output 0 and keeps its cache rows and
    seen_tokens; the others equal the prefill path's (the same call while autograd records). A mask of the past and
    the new tokens (HF generate's [B, past + 1]) is read by its last column, as fla's layer does."""
    layer, _ = _layer(shared, seed=11)
    x = torch.randn(3, 9, 32)
    x[1, 7] = float("nan")
    mask = torch.tensor([[1], [0], [1]])
    with torch.no_grad():
        _, _, cache = layer(x[:, :7], use_cache=True)
    ref_cache = copy.deepcopy(cache)
    calls = []
    step = layer._decode_step
    layer._decode_step = lambda *a: calls.append(1) or step(*a)
    with torch.no_grad():
        got, aux, cache = layer(x[:, 7:8], attention_mask=mask, cache=cache, use_cache=True)
    del layer._decode_step
    assert calls, "the masked one-token call did not take the decode step"
    xr = x[:, 7:8].clone().requires_grad_(True)  # autograd records: the prefill path
    want, aux_want, ref_cache = layer(xr, attention_mask=mask, cache=ref_cache, use_cache=True)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aux, aux_want.detach(), rtol=1e-5, atol=1e-7)
    assert torch.all(got[1] == 0)
    for name in ("states", "conv_q", "conv_k", "conv_v", "seen_tokens"):
        torch.testing.assert_close(getattr(cache, name), getattr(ref_cache, name), rtol=1e-5, atol=1e-6)
    assert cache.seen_tokens.tolist() == [8, 7, 8]
    with torch.no_grad():  # HF's full-length mask, then the next token
        full_mask = torch.cat([torch.ones(3, 8, dtype=torch.long), torch.ones(3, 1, dtype=torch.long)], 1)
        full_mask[1, 7] = 0
        got2, _, cache = layer(x[:, 8:9], attention_mask=full_mask, cache=cache, use_cache=True)
        want2, _, ref_cache = layer(x[:, 8:9], cache=ref_cache, use_cache=True)
    torch.testing.assert_close(got2, want2)
    assert cache.seen_tokens.tolist() == [9, 8, 9]


def test_decode_step_edge_dtypes_and_empty_batches():
    """A float64 layer's decode step (route's fp64 weights were refused by the step); a bf16 conv history rounds what
    it stores, not the new token (the step rounded it, the prefill path did not); a batch of no sequences (every one
    finished) returns an empty output instead of route's error."""
    layer, _ = _layer(seed=12)
    x = torch.randn(2, 4, 32)
    with torch.no_grad():
        layer64 = copy.deepcopy(layer).double()
        _, _, cache = layer64(x[:, :3].double(), use_cache=True)
        got, _, _ = layer64(x[:, 3:].double(), cache=cache, use_cache=True)
        assert got.dtype == torch.float64 and torch.isfinite(got).all()
        _, _, c16 = layer(x[:, :3], cache=MoMCache.empty(layer, 2, "cpu", torch.bfloat16), use_cache=True)
        ref16 = copy.deepcopy(c16)
        step, _, c16 = layer(x[:, 3:], cache=c16, use_cache=True)
    prefill_path, _, ref16 = layer(x[:, 3:].clone().requires_grad_(True), cache=ref16, use_cache=True)
    torch.testing.assert_close(step, prefill_path.detach(), rtol=1e-5, atol=1e-6)
    for T in (1, 3):
        empty = torch.randn(0, T, 32)
        out, aux, cache0 = layer(empty, cache=MoMCache.empty(layer, 0, "cpu"), use_cache=True)
        assert out.shape == (0, T, 32) and aux.item() == 0 and cache0.seen_tokens.numel() == 0
    empty = torch.randn(0, 3, 32, requires_grad=True)
    out, aux = layer(empty)
    (out.sum() + aux).backward()
    assert empty.grad.shape == empty.shape
    layer.zero_grad(set_to_none=True)  # x needing no gradient: the backward still runs, every parameter gets zeros
    out, aux = layer(torch.randn(0, 3, 32))
    (out.sum() + aux).backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in layer.parameters())


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_matches_and_refuses_a_cache(reentrant):
    """Activation checkpointing without a cache gives the plain run's gradients; with a cache its recompute would start
    from the states the first forward left there and advance them again (gradients off by up to 6x, seen_tokens
    doubled, no error): refused by name."""
    from torch.utils.checkpoint import checkpoint

    layer, _ = _layer(seed=7)
    x = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :2] = False
    grads = []
    for ckpt in (False, True):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out, aux = checkpoint(layer, xi, mask, use_reentrant=reentrant) if ckpt else layer(xi, mask)
        ((out * out).sum() + aux).backward()
        grads.append([xi.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    cache = MoMCache.empty(layer, 2, "cpu")
    xi = x.clone().requires_grad_(True)
    out, aux = checkpoint(lambda t: layer(t, cache=cache), xi, use_reentrant=reentrant)
    with pytest.raises(RuntimeError, match="cache while a backward runs"):
        out.sum().backward()


def test_meta_device_init_then_reset_or_load():
    """FSDP-style initialisation: built on the meta device, then to_empty. reset_parameters (the layer's, or each
    child's own in FSDP1's order: the Linear children kept nn.Linear's kaiming init) gives fresh-layer statistics,
    and the token projection's zero pad rows (a non-persistent buffer, garbage after to_empty: NaN input gradients)
    are zeroed by reset_parameters and by load_state_dict."""
    kw = dict(hidden_size=256, num_heads=2, head_dim=32, num_memories=4, topk=2)
    torch.manual_seed(0)
    fresh = MoMAttention(**kw)
    with torch.device("meta"):
        layer = MoMAttention(**kw)
    layer.to_empty(device="cpu")
    assert layer._token_pad_rows.numel() > 0  # the case needs pad rows (q | g | gate columns not a multiple of 8)
    for module in layer.modules():  # FSDP1: every module's own reset_parameters
        if module is not layer and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for name in ("gate", "q_proj", "g_proj", "o_proj", "shared_k", "shared_v", "shared_b", "shared_a"):
        got, want = getattr(layer, name).weight.std(), getattr(fresh, name).weight.std()
        assert abs(got / want - 1) < 0.15, (name, got.item(), want.item())
    with torch.device("meta"):  # load_state_dict(assign=True) straight from the meta device: the pad rows too
        assigned = MoMAttention(**kw)
    assigned.load_state_dict(fresh.state_dict(), assign=True)
    assert not assigned._token_pad_rows.is_meta and torch.all(assigned._token_pad_rows == 0)
    torch.testing.assert_close(assigned(torch.ones(1, 2, 256))[0], fresh(torch.ones(1, 2, 256))[0])
    for restore in ("reset", "load"):
        layer._token_pad_rows.fill_(float("nan"))
        if restore == "reset":
            layer.reset_parameters()
        else:
            layer.load_state_dict(fresh.state_dict())
        assert torch.all(layer._token_pad_rows == 0), restore
        x = torch.randn(2, 5, 256, requires_grad=True)
        out, aux = layer(x)
        (out.sum() + aux).backward()
        assert torch.isfinite(x.grad).all(), restore


def test_compiled_layer_takes_any_batch_size_without_recompiling():
    """route's batch_size is a SymInt in its schema: with an int, dynamo fixed B, recompiled for every batch size and
    packed sequence count, and stopped (fullgraph) at its recompile limit."""
    from torch._dynamo.testing import CompileCounterWithBackend

    layer, _ = _layer(seed=8)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    with torch.no_grad():
        for B in (2, 3, 5):
            x = torch.randn(B, 6, 32)
            torch.testing.assert_close(compiled(x)[0], layer(x)[0])
            frames.append(counter.frame_count)
        for S in (2, 3, 4):
            x, cu = torch.randn(1, 12, 32), torch.linspace(0, 12, S + 1).long()
            torch.testing.assert_close(compiled(x, cu_seqlens=cu)[0], layer(x, cu_seqlens=cu)[0])
            frames.append(counter.frame_count)
    assert frames[0] == frames[2] and frames[3] == frames[5], frames


def test_double_layer_aux_loss_is_double():
    """layer.double(): the aux loss was computed in fp32 (gradcheck failed on it); in the logits' dtype now (fp32 for
    16-bit layers)."""
    layer, _ = _layer(seed=9)
    layer = layer.double()
    x = torch.randn(2, 4, 32, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 0] = False
    for m in (None, mask):
        out, aux = layer(x, attention_mask=m)
        assert out.dtype == aux.dtype == torch.float64
        assert torch.autograd.gradcheck(lambda t: layer(t, attention_mask=m)[1], (x,))
    _, aux16 = _layer(seed=9)[0].bfloat16()(x.detach().bfloat16())
    assert aux16.dtype == torch.float32

# ---- GPU: the layer on the CUDA kernels (bf16) against the same layer on the CPU kernels (fp32) ----
# bf16 router logits can swap two nearly equal memories for a few tokens, so these compare per token: the
# median error must be small and all but a few percent of the tokens close.


def _per_token_rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.float().cpu().flatten(0, -2), b.float().cpu().flatten(0, -2)
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-6)


def _assert_tokens_close(got, ref, median=2e-2, bulk=6e-2, share=0.95):
    err = _per_token_rel(got, ref)
    assert err.median() < median, f"median per-token error {err.median():.3g}"
    assert (err < bulk).float().mean() >= share, f"only {(err < bulk).float().mean():.3f} of tokens within {bulk}"


def _gpu_layer_pair(seed):
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    torch.manual_seed(seed)
    layer = MoMAttention(hidden_size=128, num_heads=2, head_dim=64, num_memories=4, topk=2, shared_memory=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
            p.copy_(p.bfloat16().float())  # both layers hold the same (bf16-representable) weights
    return layer, copy.deepcopy(layer).to(device="cuda", dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [True, False])
def test_gpu_layer_forward_backward_matches_cpu(padded):
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    layer, layer_gpu = _gpu_layer_pair(seed=6)
    x = torch.randn(2, 150, 128).bfloat16().float()
    mask = torch.ones(2, 150, dtype=torch.bool)
    if padded:
        mask[1, :17] = False  # left padding
    dy = torch.randn(2, 150, 128).bfloat16().float()
    x_cpu, x_gpu = x.clone().requires_grad_(True), x.to("cuda", torch.bfloat16).requires_grad_(True)
    out, _ = layer(x_cpu, attention_mask=mask if padded else None)
    out_gpu, _ = layer_gpu(x_gpu, attention_mask=mask.cuda() if padded else None)
    (out * dy).sum().backward()
    (out_gpu * dy.to("cuda", torch.bfloat16)).sum().backward()
    _assert_tokens_close(out_gpu[mask.cuda()], out[mask])
    _assert_tokens_close(x_gpu.grad[mask.cuda()], x_cpu.grad[mask])
    # Weight gradients (the routed projections' come from the grouped GEMM's backward on sm90+).
    for (name, p), p_gpu in zip(layer.named_parameters(), layer_gpu.parameters()):
        assert torch.isfinite(p_gpu.grad).all(), name
        assert rel_rms(p_gpu.grad.float().cpu(), p.grad) < 3e-2, (name, rel_rms(p_gpu.grad.float().cpu(), p.grad))


@pytest.mark.gpu
def test_gpu_prefill_then_decode_matches_full_forward():
    layer, layer_gpu = _gpu_layer_pair(seed=7)
    x = torch.randn(3, 40, 128).to("cuda", torch.bfloat16)
    with torch.no_grad():
        full, _ = layer_gpu(x)
        out, _, cache = layer_gpu(x[:, :33], use_cache=True)
        steps = [out]
        for t in range(33, 40):
            step, _, cache = layer_gpu(x[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(step)
    _assert_tokens_close(torch.cat(steps, 1), full)


@pytest.mark.gpu
def test_gpu_masked_decode_step():
    """The decode step with a mask on the GPU (negative slots skipped by mom_decode_step): valid sequences get what the
    unmasked step gives them, masked ones output 0 and keep their cache rows (states, conv histories) and count."""
    _, layer_gpu = _gpu_layer_pair(seed=8)
    x = torch.randn(4, 21, 128, device="cuda", dtype=torch.bfloat16)
    mask = torch.tensor([[1], [0], [1], [0]], device="cuda")
    valid = mask[:, 0] == 1
    with torch.no_grad():
        _, _, cache = layer_gpu(x[:, :20], use_cache=True)
        before, plain = copy.deepcopy(cache), copy.deepcopy(cache)
        step, _, cache = layer_gpu(x[:, 20:], attention_mask=mask, cache=cache, use_cache=True)
        want, _, plain = layer_gpu(x[:, 20:], cache=plain, use_cache=True)
    torch.testing.assert_close(step[valid], want[valid])
    assert torch.all(step[~valid] == 0)
    assert (cache.seen_tokens - before.seen_tokens).tolist() == [1, 0, 1, 0]
    row_valid = valid[torch.arange(cache.states.shape[0], device="cuda") % 4]  # pool row p = m * B + b
    for name in ("states", "conv_q", "conv_k", "conv_v"):
        got, old, unmasked = (getattr(c, name) for c in (cache, before, plain))
        assert torch.equal(got[~row_valid], old[~row_valid]), name
        torch.testing.assert_close(got[row_valid], unmasked[row_valid], msg=name)


@pytest.mark.gpu
def test_gpu_layer_has_no_host_sync():
    """Forward and backward of a padded batch under torch.cuda.set_sync_debug_mode("error") (issue #8)."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    _, layer_gpu = _gpu_layer_pair(seed=8)
    x = torch.randn(2, 70, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = torch.ones(2, 70, device="cuda", dtype=torch.bool)
    mask[1, 50:] = False
    out, aux = layer_gpu(x, attention_mask=mask)  # warm-up: kernels compile and load outside the check
    (out.float().sum() + aux).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, aux = layer_gpu(x, attention_mask=mask)
        (out.float().sum() + aux).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_gpu_decode_step_replays_in_a_cuda_graph():
    """One decode step captured in a CUDA graph and replayed equals the same step run eagerly (issue #8)."""
    _, layer_gpu = _gpu_layer_pair(seed=9)
    x = torch.randn(3, 20, 128, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        _, _, cache = layer_gpu(x[:, :16], use_cache=True)
        eager_cache, graph_cache = copy.deepcopy(cache), copy.deepcopy(cache)
        static_x = x[:, 16:17].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
            layer_gpu(static_x, cache=copy.deepcopy(cache))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out, _ = layer_gpu(static_x, cache=graph_cache)
        for t in range(16, 20):  # replay step by step on new tokens; eager on its own cache copy
            static_x.copy_(x[:, t:t + 1])
            graph.replay()
            eager_out, _ = layer_gpu(x[:, t:t + 1], cache=eager_cache)
            torch.cuda.synchronize()
            assert torch.equal(static_out, eager_out)
        assert torch.equal(graph_cache.states, eager_cache.states)
        assert torch.equal(graph_cache.seen_tokens, eager_cache.seen_tokens)


@pytest.mark.gpu
def test_gpu_layer_compiles_fullgraph():
    """The CUDA path (grouped GEMM, one scanned stream) traces without graph breaks and matches eager, with
    gradients."""
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    _, layer_gpu = _gpu_layer_pair(seed=9)
    x = torch.randn(2, 70, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out, aux = torch.compile(layer_gpu, fullgraph=True, backend="aot_eager")(x)
    (out.float().sum() + aux).backward()
    grad = x.grad.clone()
    x.grad = None
    ref, aux_ref = layer_gpu(x)
    (ref.float().sum() + aux_ref).backward()
    assert rel_rms(out.float(), ref.float()) < 1e-2 and rel_rms(grad.float(), x.grad.float()) < 1e-2
