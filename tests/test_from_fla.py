"""MoMAttention.from_fla: fla's MomAttention weights in our layer (skipped where fla is not installed)."""

import importlib.util
import os

import pytest
import torch

import mom_ops
from mom_ops.nn import MoMAttention
from tests.helpers import need_kernel, rel_rms

fla_mom = pytest.importorskip("fla.layers.mom", reason="fla is not installed")


@pytest.fixture
def fla_sorts_stably(monkeypatch):
    """fla 0.6's transform() orders the routed tokens by (batch, memory) with an unstable argsort, one of its known
    bugs: the tokens of a memory come out of time order (on the CPU at any size; on CUDA for small inputs) and its
    scan and convs then run them in that order (out rel 0.7-1.4 against ours before this fixture). The comparisons
    make that sort stable: the order fla means."""
    argsort = torch.Tensor.argsort

    def stable_argsort(self, dim=-1, descending=False, stable=False):
        return argsort(self, dim=dim, descending=descending, stable=True)

    monkeypatch.setattr(torch.Tensor, "argsort", stable_argsort)


@pytest.fixture
def fla_in_the_interpreter(monkeypatch):
    """fla's Triton kernels on CPU tensors: they run only in Triton's interpreter, whose autotuner has no benchmarker
    (every config is timed alike, so the first runs)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("fla's Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (a machine without a GPU)")
    from triton.runtime import autotuner

    monkeypatch.setattr(autotuner.Autotuner, "do_bench",
                        property(lambda self: lambda fn, quantiles=None, **kw: [1.0, 1.0, 1.0]))


def _fla_layer(**kw):
    torch.manual_seed(0)
    cfg = dict(hidden_size=64, head_dim=16, num_heads=2, expand_v=1, num_memories=4, topk=2, shared_mem=True,
               norm_eps=1e-6)
    cfg.update(kw)
    return fla_mom.MomAttention(**cfg).eval()


def test_from_fla_copies_every_weight():
    fla_layer = _fla_layer()
    ours = MoMAttention.from_fla(fla_layer)
    theirs = dict(fla_layer.named_parameters())
    mine = ours.reference_params()
    assert torch.equal(mine["k_proj"][2], theirs["k_proj.2.weight"])
    assert torch.equal(mine["a_proj"][3], theirs["a_proj.3.weight"])
    assert torch.equal(mine["v_conv"], theirs["v_conv1d.weight"][:, 0])
    assert torch.equal(mine["shared_b"], theirs["shared_b.weight"])
    assert sum(t.numel() for t in mine.values()) == sum(t.numel() for t in theirs.values())
    assert ours.norm_eps == fla_layer.o_norm.eps


def test_from_fla_keeps_fp32_decay_parameters_of_a_16_bit_layer():
    fla_layer = _fla_layer().to(torch.bfloat16)
    fla_layer.A_log.data, fla_layer.dt_bias.data = fla_layer.A_log.data.float() + 1e-3, fla_layer.dt_bias.data.float()
    ours = MoMAttention.from_fla(fla_layer)
    assert ours.q_proj.weight.dtype == torch.bfloat16 and ours.A_log.dtype == ours.dt_bias.dtype == torch.float32
    assert torch.equal(ours.A_log, fla_layer.A_log)


def test_from_fla_rejects_unsupported_configs():
    with pytest.raises(ValueError, match="single_kv_proj"):
        MoMAttention.from_fla(_fla_layer(single_kv_proj=True))


@pytest.mark.parametrize("cfg", [dict(num_memories=4, topk=2, shared_mem=True),
                                 dict(num_memories=2, topk=1, shared_mem=False)])
def test_from_fla_matches_fla_forward_on_the_cpu(cfg, fla_sorts_stably, fla_in_the_interpreter):
    """Eval mode, no gradients, T <= 64: fla's own fused_recurrent kernel (interpreted) against our layer, fp32."""
    fla_layer = _fla_layer(**cfg)
    ours = MoMAttention.from_fla(fla_layer).eval()
    x = torch.randn(2, 40, 64)
    with torch.no_grad():
        out_fla, out = fla_layer(x)[0], ours(x)[0]
    assert rel_rms(out, out_fla) < 1e-5


def test_from_fla_matches_fla_gradients_on_the_cpu(monkeypatch, fla_sorts_stably, fla_in_the_interpreter):
    """With gradients fla takes its chunked scan, whose Triton kernels fail in the interpreter: fla's layer runs here
    on our scan op (same signature), so this checks everything around the scan (routing, projections, convs, shared
    memory, readout, norm) and every parameter's gradient, fp32."""
    def our_scan(q, k, v, g, beta, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False,
                 state_v_first=False, cu_seqlens=None, **unused):
        return mom_ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state,
                                              output_final_state=output_final_state,
                                              use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                              state_v_first=state_v_first, cu_seqlens=cu_seqlens)

    monkeypatch.setattr(fla_mom, "chunk_gated_delta_rule", our_scan)
    fla_layer = _fla_layer()
    ours = MoMAttention.from_fla(fla_layer).eval()
    x, dy = torch.randn(2, 40, 64), torch.randn(2, 40, 64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    out_fla, out = fla_layer(xs[0])[0], ours(xs[1])[0]
    out_fla.backward(dy)
    out.backward(dy)
    assert rel_rms(out, out_fla) < 1e-5 and rel_rms(xs[1].grad, xs[0].grad) < 1e-5
    # fla's gradients under our names: a layer holding them as its weights, through from_fla's own mapping
    with torch.no_grad():
        for p in fla_layer.parameters():
            p.copy_(p.grad)
    grads_fla = MoMAttention.from_fla(fla_layer).reference_params()
    for name, p in ours.reference_params().items():
        assert rel_rms(p.grad, grads_fla[name]) < 1e-5, name


def test_from_fla_prefill_then_decode_matches_fla_with_its_cache_on_the_cpu(fla_sorts_stably, fla_in_the_interpreter):
    """A 20-token prefill into a cache, then one-token decode steps (routing changes every token): ours against fla's
    layer with its own cache (fla's fused_recurrent kernels, interpreted), fp32."""
    from fla.models.cache_utils import Cache

    fla_layer = _fla_layer(layer_idx=0)
    ours = MoMAttention.from_fla(fla_layer).eval()
    x = torch.randn(2, 24, 64)
    fla_cache = Cache()
    with torch.no_grad():
        out_fla = fla_layer(x[:, :20], past_key_values=fla_cache, use_cache=True)[0]
        out, _, cache = ours(x[:, :20], use_cache=True)
        assert rel_rms(out, out_fla) < 1e-5
        for t in range(20, 24):
            step_fla = fla_layer(x[:, t:t + 1], past_key_values=fla_cache, use_cache=True)[0]
            step, _, cache = ours(x[:, t:t + 1], cache=cache, use_cache=True)
            assert rel_rms(step, step_fla) < 1e-5, t


@pytest.mark.gpu
def test_gpu_from_fla_matches_fla_forward(fla_sorts_stably):
    """Outputs only (fla's forward runs on Hopper without tilelang): both layers in bf16, the reference our layer in
    fp32 on the CPU with the same weights; ours no further from it than fla (x1.5 + 1e-3)."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    fla_layer = _fla_layer(hidden_size=256, head_dim=64, num_heads=4).cuda()
    ref_layer = MoMAttention.from_fla(fla_layer).eval().cpu()
    fla_layer = fla_layer.to(torch.bfloat16)
    ours = MoMAttention.from_fla(fla_layer).eval()
    x = torch.randn(2, 300, 256)
    with torch.no_grad():
        ref = ref_layer(x)[0]
        x16 = x.to("cuda", torch.bfloat16)
        err_fla, err = (rel_rms(layer(x16)[0].float().cpu(), ref) for layer in (fla_layer, ours))
    print(f"vs fp32 reference: out fla {err_fla:.2e} ours {err:.2e}")
    assert err_fla < 3e-2 and err < 1.5 * err_fla + 1e-3


@pytest.mark.gpu
def test_gpu_from_fla_matches_fla_in_eval_mode(fla_sorts_stably):
    """fla is correct in eval mode (per-segment conv). Both layers run in bf16 (our CUDA scan takes bf16/fp16);
    the reference is our layer in fp32 on the CPU with the same weights. fla's distance to it shows the two
    layers compute the same function; ours must be no further from it than fla (x1.5 + 1e-3 of slack)."""
    need_kernel("chunk_gated_delta_rule_fwd", "cuda")
    need_kernel("chunk_gated_delta_rule_bwd", "cuda")
    if torch.cuda.get_device_capability() >= (9, 0) and importlib.util.find_spec("tilelang") is None:
        # fla 0.6's gated backward raises for Triton 3.4-3.7.0 on Hopper without tilelang (its issue #640; seen
        # in the bench). On the H100 this test also did not finish in the 10-minute device run (cause not isolated)
        pytest.skip("fla's backward needs tilelang on Hopper with this Triton (fla issue #640)")
    fla_layer = _fla_layer(hidden_size=256, head_dim=64, num_heads=4).cuda()
    ref_layer = MoMAttention.from_fla(fla_layer).eval().cpu()
    fla_layer = fla_layer.to(torch.bfloat16)
    ours = MoMAttention.from_fla(fla_layer).eval()
    x = torch.randn(2, 300, 256)
    dy = torch.randn(2, 300, 256)
    xs = [x.clone().requires_grad_(True)] + [x.to("cuda", torch.bfloat16).requires_grad_(True) for _ in range(2)]
    outs = [ref_layer(xs[0])[0], fla_layer(xs[1])[0], ours(xs[2])[0]]
    for out in outs:
        out.backward(dy.to(out.device, out.dtype))
    err_out = [rel_rms(o.float().cpu(), outs[0]) for o in outs[1:]]
    err_dx = [rel_rms(t.grad.float().cpu(), xs[0].grad) for t in xs[1:]]
    print(f"vs fp32 reference: out fla {err_out[0]:.2e} ours {err_out[1]:.2e}; dx fla {err_dx[0]:.2e} ours {err_dx[1]:.2e}")
    assert err_out[0] < 3e-2 and err_dx[0] < 5e-2  # fla computes the same function
    assert err_out[1] < 1.5 * err_out[0] + 1e-3
    assert err_dx[1] < 1.5 * err_dx[0] + 1e-3
