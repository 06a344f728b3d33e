"""MoMAttention's token-level projections as one autograd node whose backward writes x's gradient once.

The forward is one GEMM, y = x @ weight^T, whose column blocks (q | output gate | router logits | zero padding) go to
different consumers. With autograd's split, the backward concatenated the blocks' gradients into one [N, C] tensor
(53 us per H200 step at T2K) and added the gradient of x's other consumer (the stream's permute) afterwards (23 us).
Here each block's gradient goes into dx by its own GEMM (dx += dblock @ weight_block), starting from the gradient of
`x_alias`, an alias of x that the caller hands to that other consumer: no concatenation and no separate add.
"""

from __future__ import annotations

import torch


class _TokenProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, sizes):
        # x [N, D], weight [C, D] in x's dtype: row blocks of `sizes`, then zero rows (padding) -> the blocks' columns
        # of x @ weight^T (views of one [N, C] product) and x_alias (a view of x)
        y = x @ weight.t()
        ctx.save_for_backward(x, weight)
        ctx.sizes = tuple(sizes)
        ctx.set_materialize_grads(False)  # an unused block's gradient stays None: no zeros to multiply
        blocks = y.split(list(sizes) + [weight.shape[0] - sum(sizes)], 1)[:len(sizes)]
        return (*blocks, x.view_as(x))

    @staticmethod
    def backward(ctx, *grads):
        *block_grads, grad_alias = grads
        x, weight = ctx.saved_tensors
        sizes = list(ctx.sizes)
        pad = weight.shape[0] - sum(sizes)
        w_blocks = weight.split(sizes + [pad], 0)
        # the widest blocks first: the first GEMM writes dx (reading grad_alias as its C), the rest add into it
        order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = grad_alias
            for i in order:
                g = block_grads[i]
                if g is None:
                    continue
                g = g.to(weight.dtype)
                if dx is None:
                    dx = g @ w_blocks[i]
                elif dx is grad_alias:
                    dx = torch.addmm(dx, g, w_blocks[i])  # out of place: the incoming gradient is not ours to change
                else:
                    dx.addmm_(g, w_blocks[i])
        if ctx.needs_input_grad[1] and any(g is not None for g in block_grads):
            parts = [x.new_zeros(n, x.shape[1]) if g is None else g.to(x.dtype).t() @ x
                     for g, n in zip(block_grads, sizes)]
            dw = torch.cat(parts + [x.new_zeros(pad, x.shape[1])]) if pad or len(parts) > 1 else parts[0]
        return dx, dw, None


def token_projection(x: torch.Tensor, weight: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """x [N, D], weight [C, D] (x's dtype; row blocks of `sizes`, then any zero padding rows) -> (one [N, size_i]
    column view of x @ weight^T per block, ..., x_alias). Give x's other consumers x_alias instead of x: their
    gradient then starts dx in this node's backward (one gradient tensor for x, no add)."""
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != x.shape[1] or sum(sizes) > weight.shape[0]:
        raise ValueError(f"token_projection: x must be [N, D] and weight [C >= sum(sizes), D], got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, sizes {list(sizes)}")
    return _TokenProjection.apply(x, weight, tuple(sizes))
