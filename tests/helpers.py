"""Shared test helpers: error metric, input makers, NaN poisoning."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in fp64 (fla's metric); inf when x has a NaN."""
    x, ref = x.double().cpu(), ref.double().cpu()
    if torch.isnan(x).any():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def random_cu_seqlens(total: int, n: int, generator: torch.Generator | None = None, empty: bool = True):
    """n sequences summing to total; with empty=True some cut points repeat (empty sequences)."""
    cuts = torch.randint(0, total + 1, (n - 1,), generator=generator).sort().values
    if empty and n > 2:
        cuts[1] = cuts[0]
    return torch.cat([torch.tensor([0]), cuts, torch.tensor([total])]).to(torch.int32)


def cu_from_lengths(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)


def gdn_inputs(B, T, H, K, V, HV=None, dtype=torch.float32, device="cpu", decay="normal", beta_range=(0.0, 1.0),
               h0=False, n_seqs=None, seed=0):
    """Random scan inputs in DESIGN.md §3's regimes. decay: 'normal' (logsigmoid(randn)), 'strong'
    (-U(0,16) * softplus(randn)), 'zero' (g = 0). Returns a dict of keyword arguments."""
    gen = torch.Generator().manual_seed(seed)
    HV = HV or H
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, HV, V, generator=gen)
    if decay == "normal":
        g = F.logsigmoid(torch.randn(B, T, HV, generator=gen))
    elif decay == "strong":
        g = -torch.rand(HV, generator=gen) * 16 * F.softplus(torch.randn(B, T, HV, generator=gen))
    else:
        g = torch.zeros(B, T, HV)
    lo, hi = beta_range
    beta = lo + (hi - lo) * torch.rand(B, T, HV, generator=gen)
    n = B if n_seqs is None else n_seqs
    out = dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), g=g.float(), beta=beta.to(dtype))
    if h0:
        out["initial_state"] = torch.randn(n, HV, K, V, generator=gen)
    return {name: t.to(device) for name, t in out.items()}


def hard_gdn_inputs(kind: str, seed: int = 0, T: int = 100, H: int = 1, HV: int = 2, K: int = 32, V: int = 16) -> dict:
    """Inputs the chunked forms got wrong (a helper's audit): "masked": g rows of -inf, finfo.min (masked_fill's
    usual value; twice in one chunk) and -1e9 (exp(G_i - G_j) = exp(-inf + inf) = NaN, or the chunk's other g absorbed
    into G); "correlated": SiLU keys sharing a component, slow decay, beta near 1 (the Triton T = (I + A)^-1 by
    doubling formed N^32, ~1e8 before cancelling: o off by 3-130x). fp32, batch 1, T >= 72."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, K, generator=gen)
    k = torch.randn(1, T, H, K, generator=gen)
    v = torch.randn(1, T, HV, V, generator=gen)
    g = F.logsigmoid(torch.randn(1, T, HV, generator=gen))
    beta = torch.rand(1, T, HV, generator=gen)
    if kind == "masked":
        g[0, 11, 0], g[0, 40, 1], g[0, 41, 1], g[0, 70, 0] = float("-inf"), *[torch.finfo(torch.float32).min] * 2, -1e9
    else:
        k = F.silu(k + 2 * torch.randn(K, generator=gen))
        q = F.silu(q)
        g = -0.02 * torch.rand(1, T, HV, generator=gen)
        beta = 0.9 + 0.1 * beta
    return dict(q=q, k=k, v=v, g=g, beta=beta)


def recurrence_grads(inp: dict, seed: int = 1):
    """The fp64 recurrence (l2norm in the kernel) on inp and its autograd for do, dht drawn from seed: o, ht, do, dht
    and every input's gradient, the reference of the hard_gdn_inputs tests."""
    from mom_ops.reference import recurrent_gated_delta_rule_ref

    leaves = {name: t.detach().double().requires_grad_(True) for name, t in inp.items()}
    o, ht = recurrent_gated_delta_rule_ref(**leaves, output_final_state=True, use_qk_l2norm_in_kernel=True)
    gen = torch.Generator().manual_seed(seed)
    do, dht = torch.randn(o.shape, generator=gen).double(), torch.randn(ht.shape, generator=gen).double()
    torch.autograd.backward((o, ht), (do, dht))
    return o.detach(), ht.detach(), do, dht, {name: t.grad for name, t in leaves.items()}


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN (floats) or a large sentinel (ints) to catch unwritten outputs."""
    return t.fill_(float("nan") if t.is_floating_point() else -(2**30))


DEVICES = ["cpu", "cuda"]


def device_param():
    """pytest params for the devices a test runs on; CUDA ones are marked gpu (skipped without a GPU)."""
    import pytest

    return [pytest.param(d, marks=[pytest.mark.gpu] if d == "cuda" else []) for d in DEVICES]


def triton_device() -> str:
    """Where the Triton references run: the GPU when there is one, else the CPU interpreter (TRITON_INTERPRET)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def need_kernel(op: str, device: str) -> None:
    """Skip when mom_ops has no kernel for op on device (a later issue owns it)."""
    import pytest

    key = "CUDA" if device == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mom_ops::{op}", key):
        pytest.skip(f"mom_ops::{op} has no {key} kernel in this build yet")
