"""MoMAttention's token-level projections as one autograd node whose backward writes x's gradient once.

The forward is one GEMM, y = x @ weight^T, whose column blocks (q | output gate | router logits | zero padding) go to
different consumers. With autograd's split, the backward concatenated the blocks' gradients into one [N, C] tensor
(53 us per H200 step at T2K) and added the gradient of x's other consumer (the stream's permute) afterwards (23 us).
Here the blocks' gradients go into dx by one GEMM per group (dx += dblock @ weight_block; a narrow block shares its
neighbour's GEMM), starting in place from the gradient of `x_alias`, an alias of x that the caller hands to that
other consumer: no concatenation of the wide blocks and no separate add (mom_ops/NOTES.md, session 37).
"""

from __future__ import annotations

import torch


class _TokenProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, sizes, alias_grad_in_place):
        # x [N, D], weight [C, D] in x's dtype: row blocks of `sizes`, then zero rows (padding) -> the blocks' columns
        # of x @ weight^T (views of one [N, C] product) and x_alias (a view of x)
        y = x @ weight.t()
        ctx.save_for_backward(x, weight)
        ctx.sizes = tuple(sizes)
        ctx.alias_grad_in_place = alias_grad_in_place
        ctx.set_materialize_grads(False)  # an unused block's gradient stays None: no zeros to multiply
        blocks = y.split(list(sizes) + [weight.shape[0] - sum(sizes)], 1)[:len(sizes)]
        return (*blocks, x.view_as(x))

    @staticmethod
    def backward(ctx, *grads):
        *block_grads, grad_alias = grads
        x, weight = ctx.saved_tensors
        dx = dw = None
        # One GEMM pair (dx += G W_rows, dW_rows = G^T x) per group of blocks. A narrow block joins the block before
        # it, the padding rows the last group: the router's 4 columns as a GEMM of their own cost more than the
        # concatenation of the gate's gradient with them (H200, T2K: 37 + 20 us for K = 4 in cuBLAS).
        groups = []  # lists of (gradient or None, rows)
        for g, n in zip(block_grads, ctx.sizes):
            if groups and n < _NARROW:
                groups[-1].append((g, n))
            else:
                groups.append([(g, n)])
        groups[-1].append((None, weight.shape[0] - sum(ctx.sizes)))  # the padding rows
        dws = []  # per group: its n rows of dW
        r1 = 0
        for parts in groups:
            n = sum(m for _, m in parts)
            r0, r1 = r1, r1 + n  # the group's weight rows
            has = [g is not None for g, _ in parts]
            if not any(has):
                if ctx.needs_input_grad[1]:
                    dws.append(x.new_zeros(n, x.shape[1]))
                continue
            if has[0] and not any(has[1:]):  # the first block alone (its own width)
                gg, used = parts[0][0].to(x.dtype), parts[0][1]
            else:  # [N, n]: the parts side by side, zeros for parts without a gradient and the padding (16-byte rows)
                gg = torch.cat([x.new_zeros(x.shape[0], m) if g is None else g.to(x.dtype) for g, m in parts], 1)
                used = n
            w_rows = weight[r0:r0 + used]
            if ctx.needs_input_grad[0]:
                if dx is not None:
                    dx.addmm_(gg, w_rows)
                elif grad_alias is None:
                    dx = gg @ w_rows
                elif ctx.alias_grad_in_place and _owns_its_memory(grad_alias):
                    dx = grad_alias.addmm_(gg, w_rows)  # no copy of the alias's gradient (the caller's promise)
                else:
                    dx = torch.addmm(grad_alias, gg, w_rows)
            if ctx.needs_input_grad[1]:
                d = gg.t() @ x
                dws.append(d if used == n else torch.cat([d, x.new_zeros(n - used, x.shape[1])]))
        if dx is None:
            dx = grad_alias
        if ctx.needs_input_grad[1] and any(g is not None for g in block_grads):
            dw = torch.cat(dws)
        return dx, dw, None, None


def _owns_its_memory(t: torch.Tensor) -> bool:
    """t's elements are distinct memory (no stride-0 expansion, as sum's backward hands out): addmm_ can write it.
    Not under torch.compile (functionalised there anyway; dynamo before torch 2.7 cannot trace is_contiguous in a
    backward: the layer did not compile)."""
    return not torch.compiler.is_compiling() and t.is_contiguous()


_NARROW = 64  # blocks narrower than this (columns) share a GEMM with the block before them


def token_projection(x: torch.Tensor, weight: torch.Tensor, sizes: list[int],
                     alias_grad_in_place: bool = False) -> tuple[torch.Tensor, ...]:
    """x [N, D], weight [C, D] (x's dtype; row blocks of `sizes`, then any zero padding rows) -> (one [N, size_i]
    column view of x @ weight^T per block, ..., x_alias). Give x's other consumer x_alias instead of x: its gradient
    then becomes dx in this node's backward (one gradient tensor for x, no separate add).
    alias_grad_in_place=True sums into x_alias's gradient in place (no copy of it): only for a caller whose x_alias
    has one consumer whose backward hands it a gradient of its own (a fresh tensor, as permute's and a matmul's do;
    not an add's, which hands the same tensor to both operands, nor a gradient the user passed), and no hooks or
    retain_grad. MoMAttention's stream permute is such a consumer."""
    if (x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != x.shape[1] or sum(sizes) > weight.shape[0]
            or not sizes or min(sizes) < 0):
        raise ValueError(f"token_projection: x must be [N, D] and weight [C >= sum(sizes), D] with at least one block, "
                         f"got {tuple(x.shape)}, {tuple(weight.shape)}, sizes {list(sizes)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"token_projection: weight must have x's dtype and device ({x.dtype} on {x.device}), got "
                         f"{weight.dtype} on {weight.device}")
    return _TokenProjection.apply(x, weight, tuple(sizes), alias_grad_in_place)
