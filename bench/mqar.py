"""Multi-query associative recall (MQAR) with mom_ops: MoM vs a single gated-delta memory vs softmax attention.

A sequence lists P key-value token pairs, then queries keys from it; the model must produce each queried key's
value (Zoology / "simple linear attention" setting; our own generator). Each model is a small LM: embedding,
`layers` blocks of (RMSNorm, mixer, residual, RMSNorm, MLP, residual), RMSNorm, LM head. Mixers:
  mom   mom_ops.nn.MoMAttention (M memories, top-k, shared memory)
  gdn   one gated-delta memory through mom_ops.chunk_gated_delta_rule, heads chosen so its state equals MoM's
        activated state ((topk + shared) memories)
  attn  causal scaled_dot_product_attention

    python -m bench.mqar            # the full study on a GPU (writes bench/results/mqar.json and a PNG)
    python -m bench.mqar --tiny     # a CPU-sized run
    python -m bench.mqar --settings 256x16 --seed 1 --out /tmp/mqar_seed1.json --plot ''   # one setting, seed 1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import mom_ops
from mom_ops.nn import MoMAttention, init_decay_, init_short_conv_, segment_causal_conv


@dataclass
class MQARConfig:
    vocab: int = 8192
    seq_len: int = 256
    num_pairs: int = 16
    train_examples: int = 20000
    eval_examples: int = 1000
    d_model: int = 128
    layers: int = 2
    heads: int = 2
    head_dim: int = 64
    memories: int = 4
    topk: int = 2
    steps: int = 1000
    batch: int = 128
    lr: float = 3e-3
    seed: int = 0
    mixers: list = field(default_factory=lambda: ["mom", "gdn", "attn"])


def make_mqar(n: int, seq_len: int, num_pairs: int, vocab: int, generator: torch.Generator):
    """n examples -> (tokens [n, seq_len], labels [n, seq_len] with -100 where nothing is asked).
    Keys come from the lower half of the vocabulary, values from the upper half; after the 2P pair tokens, the
    keys are queried again in random order at random later positions (label = the key's value at the position
    of the query)."""
    half = vocab // 2
    tokens = torch.randint(1, half, (n, seq_len), generator=generator)  # filler: random keys-vocab noise
    labels = torch.full((n, seq_len), -100)
    for i in range(n):
        keys = torch.randperm(half - 1, generator=generator)[:num_pairs] + 1
        values = torch.randint(half, vocab, (num_pairs,), generator=generator)
        tokens[i, 0 : 2 * num_pairs : 2] = keys
        tokens[i, 1 : 2 * num_pairs : 2] = values
        slots = torch.randperm(seq_len - 2 * num_pairs, generator=generator)[:num_pairs].sort().values + 2 * num_pairs
        order = torch.randperm(num_pairs, generator=generator)
        tokens[i, slots] = keys[order]
        labels[i, slots] = values[order]
    return tokens, labels


class GatedDeltaNet(nn.Module):
    """One gated-delta memory (the gdn baseline): q, k, v, beta, a projections, causal conv, mom_ops scan."""

    def __init__(self, d_model: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(d_model, 3 * inner, bias=False)
        self.ba = nn.Linear(d_model, 2 * heads, bias=False)
        self.conv = nn.Parameter(torch.empty(3 * inner, 4))
        self.A_log, self.dt_bias = nn.Parameter(torch.empty(heads)), nn.Parameter(torch.empty(heads))
        self.out = nn.Linear(inner, d_model, bias=False)
        # The same initialisation as MoMAttention's, so that neither model is tuned more than the other.
        for lin in (self.qkv, self.ba, self.out):
            nn.init.xavier_uniform_(lin.weight, gain=2**-2.5)
        init_short_conv_(self.conv)
        init_decay_(self.A_log, self.dt_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        cu = torch.arange(0, (B + 1) * T, T, device=x.device, dtype=torch.int32)
        qkv = segment_causal_conv(self.qkv(x).reshape(B * T, -1), self.conv, cu)
        q, k, v = qkv.view(1, B * T, 3, self.heads, self.head_dim).unbind(2)
        b, a = self.ba(x).reshape(1, B * T, 2, self.heads).unbind(2)
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
        o, _ = mom_ops.chunk_gated_delta_rule(q, k, v, g, torch.sigmoid(b), cu_seqlens=cu,
                                              use_qk_l2norm_in_kernel=True)
        return self.out(o.reshape(B, T, -1))


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of x [B, H, T, D] (pairs (i, i + D/2) rotated by position x frequency)."""
    T, D = x.shape[-2], x.shape[-1]
    freq = base ** (-torch.arange(0, D // 2, device=x.device, dtype=torch.float32) / (D // 2))
    angle = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freq  # [T, D/2]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Causal softmax attention with rotary positions (the recurrent mixers get order from their scan and conv)."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, cfg: MQARConfig, mixer: str):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(cfg.d_model), nn.RMSNorm(cfg.d_model)
        if mixer == "mom":
            self.mixer = MoMAttention(cfg.d_model, cfg.heads, cfg.head_dim, num_memories=cfg.memories,
                                      topk=cfg.topk, shared_memory=True)
        elif mixer == "gdn":  # the state of MoM's activated memories: (topk + 1) x heads
            self.mixer = GatedDeltaNet(cfg.d_model, (cfg.topk + 1) * cfg.heads, cfg.head_dim)
        else:
            self.mixer = Attention(cfg.d_model, cfg.heads)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model))

    def forward(self, x):
        out = self.mixer(self.norm1(x))
        aux = 0.0
        if isinstance(out, tuple):
            out, aux = out
        x = x + out
        return x + self.mlp(self.norm2(x)), aux


class LM(nn.Module):
    def __init__(self, cfg: MQARConfig, mixer: str):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, mixer) for _ in range(cfg.layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: answering is copying a value token seen in context
        nn.init.normal_(self.embed.weight, std=0.02)  # small, as the tied head's logits are x . embedding

    def forward(self, tokens):
        x, aux = self.embed(tokens), 0.0
        for block in self.blocks:
            x, a = block(x)
            aux = aux + a
        return self.head(self.norm(x)), aux


def evaluate(model, tokens, labels, batch, autocast) -> float:
    model.eval()
    hits = total = 0
    with torch.no_grad(), autocast:
        for i in range(0, len(tokens), batch):
            logits, _ = model(tokens[i : i + batch])
            asked = labels[i : i + batch] != -100
            hits += (logits.argmax(-1)[asked] == labels[i : i + batch][asked]).sum().item()
            total += asked.sum().item()
    model.train()
    return hits / max(total, 1)


def train_one(cfg: MQARConfig, mixer: str, data, device) -> dict:
    torch.manual_seed(cfg.seed)
    model = LM(cfg, mixer).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    (xtr, ytr), (xev, yev) = data
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.time()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(xtr), (cfg.batch,), generator=gen)
        with autocast:
            logits, aux = model(xtr[idx].to(device))
            loss = F.cross_entropy(logits.float().flatten(0, 1), ytr[idx].to(device).flatten(), ignore_index=-100)
        (loss + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # read back once at the end: a .item() per step would sync every step
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - start
    losses = torch.stack(losses).float().tolist()
    acc = evaluate(model, xev.to(device), yev.to(device), cfg.batch, autocast)
    return dict(mixer=mixer, num_pairs=cfg.num_pairs, seq_len=cfg.seq_len, accuracy=acc,
                first_loss=sum(losses[:10]) / min(10, len(losses)), final_loss=sum(losses[-10:]) / min(10, len(losses)),
                tokens_per_s=cfg.steps * cfg.batch * cfg.seq_len / seconds,
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None)


def run(cfg: MQARConfig, settings: list[tuple[int, int]], device: str, on_result=None) -> list[dict]:
    """Train every mixer on every (seq_len, num_pairs); on_result(results) after each model (partial saves)."""
    results = []
    for seq_len, num_pairs in settings:
        c = MQARConfig(**{**asdict(cfg), "seq_len": seq_len, "num_pairs": num_pairs})
        gen = torch.Generator().manual_seed(c.seed)
        data = (make_mqar(c.train_examples, seq_len, num_pairs, c.vocab, gen),
                make_mqar(c.eval_examples, seq_len, num_pairs, c.vocab, gen))  # held out: drawn after training data
        for mixer in c.mixers:
            r = train_one(c, mixer, data, device)
            results.append(r)
            print(f"  T={seq_len:4d} pairs={num_pairs:3d} {mixer:5s} acc {r['accuracy']:.3f} "
                  f"loss {r['first_loss']:.2f} -> {r['final_loss']:.2f}  {r['tokens_per_s']:.0f} tok/s", flush=True)
            if on_result is not None:
                on_result(results)
    return results


def print_table(results: list[dict]) -> None:
    print(f"{'T':>5s} {'pairs':>5s} {'mixer':6s} {'accuracy':>8s} {'final loss':>10s} {'tokens/s':>10s} {'peak GB':>8s}")
    for r in results:
        peak = f"{r['peak_gb']:.2f}" if r["peak_gb"] is not None else "-"
        print(f"{r['seq_len']:5d} {r['num_pairs']:5d} {r['mixer']:6s} {r['accuracy']:8.3f} {r['final_loss']:10.3f} "
              f"{r['tokens_per_s']:10.0f} {peak:>8s}")


def plot(results: list[dict], path: str) -> None:
    """Held-out accuracy vs number of key-value pairs: one line per (mixer, sequence length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for mixer, color in zip(("mom", "gdn", "attn"), ("tab:red", "tab:blue", "tab:gray")):
        for seq_len, style in zip(sorted({r["seq_len"] for r in results}), ("-o", "--s", ":^")):
            rows = sorted((r for r in results if r["mixer"] == mixer and r["seq_len"] == seq_len),
                          key=lambda r: r["num_pairs"])
            if rows:
                ax.plot([r["num_pairs"] for r in rows], [r["accuracy"] for r in rows], style, color=color,
                        label=f"{mixer} T={seq_len}")
    pairs = sorted({r["num_pairs"] for r in results})
    ax.set_xscale("log", base=2)
    ax.set_xticks(pairs, [str(p) for p in pairs])
    ax.minorticks_off()
    ax.set_xlabel("key-value pairs")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("MQAR")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tiny_config() -> tuple[MQARConfig, list[tuple[int, int]]]:
    """A CPU-sized study (about a minute on 2 cores): 32-token sequences with 4 pairs, 64-token vocabulary."""
    cfg = MQARConfig(vocab=64, train_examples=2000, eval_examples=200, d_model=64, heads=2, head_dim=16,
                     steps=400, batch=32, lr=3e-3)
    return cfg, [(32, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a CPU-sized configuration")
    parser.add_argument("--out", default="bench/results/mqar.json")
    parser.add_argument("--plot", default="bench/results/plots/mqar.png", help="'' for none")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default: the config's)")
    parser.add_argument("--seed", type=int, default=None, help="data and initialisation seed (default: the config's)")
    parser.add_argument("--settings", default="", help="comma list of TxP (sequence length x pairs), e.g. 256x16")
    parser.add_argument("--mixers", default="", help="comma list of mom, gdn, attn (default: all three)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        cfg, settings = tiny_config()
    else:
        cfg = MQARConfig()
        settings = [(T, P) for T in (256, 512) for P in (16, 32, 64)]
    if args.steps is not None:
        cfg.steps = args.steps
    if args.seed is not None:
        cfg.seed = args.seed
    if args.settings:
        settings = [tuple(int(x) for x in item.split("x")) for item in args.settings.split(",")]
    if args.mixers:
        cfg.mixers = args.mixers.split(",")
        unknown = set(cfg.mixers) - {"mom", "gdn", "attn"}
        if unknown:
            parser.error(f"--mixers: unknown {sorted(unknown)}")
    start = time.time()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"

    def save(results: list[dict]) -> None:
        # Written after every model, so a run cut short still leaves what it measured.
        with open(args.out, "w") as f:
            complete = len(results) == len(settings) * len(cfg.mixers)
            json.dump(dict(config=asdict(cfg), settings=settings, device=name, torch=torch.__version__,
                           seconds=round(time.time() - start, 1), complete=complete, results=results), f, indent=1)

    results = run(cfg, settings, device, on_result=save)
    print_table(results)
    print(f"wrote {args.out} ({time.time() - start:.0f} s in all)")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
