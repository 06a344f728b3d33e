"""Grouped linear over the memory-major routed stream, without a host sync: y[r] = x[r] @ weight[m(r)]^T where row
r belongs to memory m(r) (rows [cu[m B], cu[(m + 1) B]) of the plan's cu_seqlens).

Two implementations:
- `grouped_mm_linear`: torch._grouped_mm (CUTLASS grouped GEMM on sm90+, bf16), with its own autograd formulas.
  What MoMAttention uses on such GPUs (`grouped_mm_supported`).
- `grouped_linear`: Triton kernels (tl.dot): forward and dx share one kernel (weight read transposed or not),
  dweight sums each memory's rows in a fixed order (deterministic). Runs anywhere Triton does (the interpreter on
  the CPU); MoMAttention uses it on CUDA when mom_ops.nn.USE_TRITON_GROUPED_LINEAR is set.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mom_ops._autograd import once_differentiable

BM, BN, BK = 64, 64, 32  # row tile, output-column tile, reduction tile


@triton.jit
def _memory_of_tile(cu_ptr, t, B: tl.constexpr, M: tl.constexpr, BLOCK_M: tl.constexpr):
    """(memory, first row, end row) of row tile t, tiles numbered memory by memory; memory = M past the last."""
    first_tile = tl.full([], 0, tl.int64)  # int64 from the start: loop-carried types must not change
    mem = tl.full([], M, tl.int32)
    row0, row_end = tl.full([], 0, tl.int64), tl.full([], 0, tl.int64)
    for m in range(M):
        start = tl.load(cu_ptr + m * B).to(tl.int64)
        end = tl.load(cu_ptr + (m + 1) * B).to(tl.int64)
        n_tiles = tl.cdiv(end - start, BLOCK_M)
        hit = (t >= first_tile) & (t < first_tile + n_tiles)
        mem = tl.where(hit, m, mem)
        row0 = tl.where(hit, start + (t - first_tile) * BLOCK_M, row0)
        row_end = tl.where(hit, end, row_end)
        first_tile += n_tiles
    return mem, row0, row_end


@triton.jit
def _grouped_rows_kernel(x_ptr, w_ptr, y_ptr, cu_ptr, R, N_IN, N_OUT, stride_wm, stride_wo, stride_wi,
                         B: tl.constexpr, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """y [R, N_OUT] = x [R, N_IN] @ w[m]^T per row tile; w[m][o][i] at m * stride_wm + o * stride_wo + i * stride_wi
    (so dx = dy @ w[m] is the same kernel with the two weight strides swapped)."""
    t, n = tl.program_id(0), tl.program_id(1)
    mem, row0, row_end = _memory_of_tile(cu_ptr, t, B, M, BLOCK_M)
    row_end = tl.minimum(row_end, R)  # a cu_seqlens past x's rows (refused on the host) reads and writes nothing more
    if mem < M:
        rows = row0 + tl.arange(0, BLOCK_M)
        cols = n * BLOCK_N + tl.arange(0, BLOCK_N)
        mr, mc = rows < row_end, cols < N_OUT
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
        for k0 in range(0, N_IN, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            mk = ks < N_IN
            a = tl.load(x_ptr + rows[:, None] * N_IN + ks[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
            w = tl.load(w_ptr + mem.to(tl.int64) * stride_wm + cols[None, :] * stride_wo + ks[:, None] * stride_wi,
                        mask=mk[:, None] & mc[None, :], other=0.0)  # [BLOCK_K, BLOCK_N] = w[m]^T tile
            acc += tl.dot(a, w, input_precision=PRECISION)
        tl.store(y_ptr + rows[:, None] * N_OUT + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=mr[:, None] & mc[None, :])


@triton.jit
def _grouped_weight_grad_kernel(x_ptr, dy_ptr, dw_ptr, cu_ptr, R, N_IN, N_OUT, B: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                PRECISION: tl.constexpr, ACC: tl.constexpr):
    """dw[m] [N_OUT, N_IN] = dy_m^T x_m over memory m's rows, in row order. Grid (M, out tiles, in tiles)."""
    m, n, kb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(cu_ptr + m * B).to(tl.int64)
    end = tl.minimum(tl.load(cu_ptr + (m + 1) * B).to(tl.int64), R)
    cols = n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    mc, mk = cols < N_OUT, ks < N_IN
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
    for r0 in range(start, end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        mr = rows < end
        dy = tl.load(dy_ptr + rows[:, None] * N_OUT + cols[None, :], mask=mr[:, None] & mc[None, :], other=0.0)
        x = tl.load(x_ptr + rows[:, None] * N_IN + ks[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        acc += tl.dot(tl.trans(dy), x, input_precision=PRECISION)
    dw_m = dw_ptr + m.to(tl.int64) * N_OUT * N_IN
    tl.store(dw_m + cols[:, None] * N_IN + ks[None, :], acc.to(dw_ptr.dtype.element_ty), mask=mc[:, None] & mk[None, :])


def _precision(x: torch.Tensor) -> str:
    """fp32 and fp64 inputs get products in their own precision (torch's default for fp32 matmuls; tl.dot would use
    TF32 on the GPU); 16-bit inputs go to the tensor cores as they are (the setting does not apply to them)."""
    return "ieee" if x.dtype in (torch.float32, torch.float64) else "tf32"


def _accumulator(x: torch.Tensor):
    """fp64 inputs accumulate in fp64 (their weight gradient came back fp32-rounded), the rest in fp32."""
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _rows(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor, batch_size: int, transpose_w: bool):
    M, n_out, n_in = weight.shape
    if transpose_w:  # dx = dy @ w[m]: output columns are w's input dim
        n_out, n_in = n_in, n_out
        strides = (weight.stride(0), weight.stride(2), weight.stride(1))
    else:
        strides = (weight.stride(0), weight.stride(1), weight.stride(2))
    R = x.shape[0]
    y = torch.zeros(R, n_out, device=x.device, dtype=x.dtype)  # rows past cu[-1] (none in a plan) stay 0
    tiles = triton.cdiv(R, BM) + M  # an upper bound of the tiles of all memories
    if R > 0 and n_out > 0:
        _grouped_rows_kernel[(tiles, triton.cdiv(n_out, BN))](
            x.contiguous(), weight, y, cu_seqlens, R, n_in, n_out, *strides,
            B=batch_size, M=M, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, PRECISION=_precision(x), ACC=_accumulator(x))
    return y


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, cu_seqlens, batch_size):
        ctx.weight_dtype = weight.dtype
        weight = weight.to(x.dtype).contiguous()
        ctx.save_for_backward(x, weight, cu_seqlens)
        ctx.batch_size = batch_size
        return _rows(x, weight, cu_seqlens, batch_size, transpose_w=False)

    @staticmethod
    @once_differentiable  # Triton kernels: no derivative of their own
    def backward(ctx, dy):
        x, weight, cu_seqlens = ctx.saved_tensors
        dy = dy.contiguous()
        dx = _rows(dy, weight, cu_seqlens, ctx.batch_size, transpose_w=True) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            M, n_out, n_in = weight.shape
            dw = torch.empty(M, n_out, n_in, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
            _grouped_weight_grad_kernel[(M, triton.cdiv(n_out, BN), triton.cdiv(n_in, BK))](
                x.contiguous(), dy, dw, cu_seqlens, x.shape[0], n_in, n_out, B=ctx.batch_size, BLOCK_M=BM, BLOCK_N=BN,
                BLOCK_K=BK, PRECISION=_precision(x), ACC=_accumulator(x))
            dw = dw.to(ctx.weight_dtype)
        return dx, dw, None, None


def _check_args(x: torch.Tensor, weight_shape, cu_seqlens: torch.Tensor, batch_size: int, weights=(),
                check_rows: bool = True) -> None:
    """x [R, D] floating, weight [M, out, D] (the tensors `weights` on x's device), cu_seqlens [M * batch_size + 1]
    int32 / int64 on x's device with cu_seqlens[-1] <= R, or an error naming what disagrees. The last check runs on
    the device where cu_seqlens is (an asynchronous assert: no host sync)."""
    if len(weight_shape) != 3 or x.dim() != 2 or x.shape[1] != weight_shape[2]:
        raise ValueError(f"x must be [R, D] and weight [M, out, D], got {tuple(x.shape)}, {tuple(weight_shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    for w in weights:
        if w.device != x.device or not w.is_floating_point():
            raise ValueError(f"weight must be floating point on x's device {x.device}, got {w.dtype} on {w.device}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.device != x.device or cu_seqlens.dim() != 1:
        raise ValueError(f"cu_seqlens must be a 1-D int32 / int64 tensor on x's device {x.device}, got "
                         f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)} on {cu_seqlens.device}")
    if cu_seqlens.shape[0] != weight_shape[0] * batch_size + 1:
        raise ValueError(f"cu_seqlens must have M * batch_size + 1 = {weight_shape[0] * batch_size + 1} entries, "
                         f"got {cu_seqlens.shape[0]}")
    if not check_rows:
        return
    if cu_seqlens.is_cuda or torch.compiler.is_compiling():
        torch._assert_async(cu_seqlens[-1] <= x.shape[0], "cu_seqlens[-1] must not pass x's rows")
    elif int(cu_seqlens[-1]) > x.shape[0]:
        raise ValueError(f"cu_seqlens[-1] = {int(cu_seqlens[-1])} passes x's {x.shape[0]} rows")


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """x [R, D] in memory-major order, weight [M, out, D], cu_seqlens [M * batch_size + 1] (the plan's) ->
    y [R, out] with y[r] = x[r] @ weight[m]^T for the memory m of row r. Differentiable in x and weight."""
    _check_args(x, weight.shape, cu_seqlens, batch_size, (weight,))
    return _GroupedLinear.apply(x, weight, cu_seqlens, batch_size)


# ---------------------------------------------------------------- torch._grouped_mm


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """torch._grouped_mm exists and runs x's dtype on x's device: bf16 on sm90. Not sm100 and later: torch's path
    there asserts non-empty groups, and empty ones are routine here (a memory no token chose; the rows-past-the-end
    group when there are none), and no such GPU has run it, so MoMAttention takes its other path there.
    (get_device_properties, not get_device_capability: torch.compile folds the former to a constant.)"""
    return (x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_properties(x.device).major == 9)


def _group_ends(cu_seqlens: torch.Tensor, batch_size: int, rows: int) -> torch.Tensor:
    """int32 [M + 1]: the row end of each memory's segments, then `rows`: group M (a zero weight) holds the rows past
    cu_seqlens[-1], so every output row is written (torch._grouped_mm leaves rows past its last offset unset)."""
    ends = cu_seqlens[batch_size::batch_size].to(torch.int32)
    return torch.cat([ends, ends.new_full((1,), rows)])


class _GroupWeights(torch.autograd.Function):
    """The grouped GEMM's weight [G + 1, out', D'] in x's dtype, written once from its pieces: `layout` places piece
    i ([g, o, D], or [o, D] for one group) at groups g0.., columns c0..; group G is zeros (the rows past the last
    segment), out and D are padded with zeros to out' and D' (multiples of 8). The backward hands every piece its
    slice of the gradient, a view (no concatenation, pad or cast unless a piece's dtype differs)."""

    @staticmethod
    def forward(ctx, dtype, layout, shape, *pieces):
        G, n_out, D = shape
        padded = (G + 1, n_out + (-n_out % 8), D + (-D % 8))
        pad = padded[1:] != (n_out, D)
        w = pieces[0].new_zeros(padded, dtype=dtype) if pad else pieces[0].new_empty(padded, dtype=dtype)
        if not pad:
            w[G].zero_()
        if not pad and all(p.dtype == dtype for p in pieces):
            # one concatenation per block into its contiguous slice of w (a piece-by-piece copy_ into strided
            # slices ran at ~1 TB/s)
            i = 0
            while i < len(layout):
                g0, g = layout[i][:2]
                j = i + 1
                while j < len(layout) and layout[j][0] == g0:
                    j += 1
                block = [p.reshape(g, -1, D) for p in pieces[i:j]]
                torch.cat(block, 1, out=w[g0:g0 + g])
                i = j
        else:
            for (g0, g, c0, o), piece in zip(layout, pieces):
                w[g0:g0 + g, c0:c0 + o, :D].copy_(piece.reshape(g, o, D))
        ctx.layout, ctx.D = layout, D
        ctx.dtypes = [p.dtype for p in pieces]
        ctx.ranks = [p.dim() for p in pieces]
        return w

    @staticmethod
    def backward(ctx, dw):
        grads = []
        for (g0, g, c0, o), dtype, rank in zip(ctx.layout, ctx.dtypes, ctx.ranks):
            grad = dw[g0:g0 + g, c0:c0 + o, :ctx.D]
            grads.append((grad[0] if rank == 2 else grad).to(dtype))
        return (None, None, None, *grads)


def _weight_layout(blocks) -> tuple[list[tuple[int, int, int, int]], tuple[int, int, int]]:
    """Each piece's (first group, groups, first column, columns) and the weight's [G, out, D] from blocks of pieces:
    a block's pieces ([g, o_i, D] or [o_i, D]) side by side along out, the blocks one after another along G."""
    layout, G, n_out, D = [], 0, None, blocks[0][0].shape[-1]
    for block in blocks:
        c0, g = 0, None
        for piece in block:
            pg = piece.shape[0] if piece.dim() == 3 else 1
            if piece.dim() not in (2, 3) or piece.shape[-1] != D or g not in (None, pg):
                raise ValueError(f"weight pieces must be [g, out_i, {D}] or [out_i, {D}] with one g per block, "
                                 f"got {tuple(piece.shape)}")
            g = pg
            layout.append((G, g, c0, piece.shape[-2]))
            c0 += piece.shape[-2]
        if n_out not in (None, c0):
            raise ValueError(f"every block of weight pieces must have the same width, got {n_out} and {c0}")
        n_out, G = c0, G + g
    return layout, (G, n_out, D)


@triton.jit
def _zero_empty_groups_kernel(dw_ptr, ends_ptr, SLAB, BLOCK: tl.constexpr):
    """dw [G, SLAB]: block b of group g's gradient set to 0 when the group has no rows (ends[g] <= ends[g - 1])."""
    g, b = tl.program_id(0), tl.program_id(1)
    start = tl.load(ends_ptr + g - 1, mask=g > 0, other=0)
    end = tl.load(ends_ptr + g)
    if end <= start:
        cols = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(dw_ptr + g.to(tl.int64) * SLAB + cols, tl.zeros([BLOCK], dw_ptr.dtype.element_ty), mask=cols < SLAB)


def _zero_empty_groups(dw: torch.Tensor, ends: torch.Tensor) -> None:
    """Zeroes dw [G, out, D]'s groups without rows, except the last (scratch), without a host sync: nothing in
    torch._grouped_mm's contract says it writes an empty group's sum (its sm100 path rejects empty groups; on the
    H200 with torch 2.11 it wrote zeros, mom_ops/NOTES.md). On CUDA a Triton kernel whose programs exit at once for
    a group with rows (~no cost in the usual case; masked_fill_ over all of dw took ~30 us at T2K); under
    torch.compile and on the CPU a masked_fill_."""
    G = ends.shape[0] - 1
    if G == 0:
        return
    if dw.is_cuda and not torch.compiler.is_compiling():
        slab = dw[0].numel()
        _zero_empty_groups_kernel[(G, triton.cdiv(slab, 4096))](dw, ends, slab, BLOCK=4096)
    else:
        empty = ends[:G] <= torch.nn.functional.pad(ends[:G - 1], (1, 0))
        dw[:G].masked_fill_(empty[:, None, None], 0)


class _GroupedMM(torch.autograd.Function):
    """y = x @ w[g]^T per row group; w_t [G, D, out] is the weight transposed (the layout torch._grouped_mm takes),
    ends int32 [G] the groups' row ends (the last one = x.shape[0]). The last group's weight is a constant (zeros
    for the rows past the last segment): its gradient is scratch."""

    @staticmethod
    def forward(ctx, x, w_t, ends):
        ctx.save_for_backward(x, w_t, ends)
        return torch._grouped_mm(x, w_t, offs=ends)

    @staticmethod
    @once_differentiable  # the empty groups' zeroing is a Triton kernel; _grouped_mm's own double backward failed
    def backward(ctx, dy):
        x, w_t, ends = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch._grouped_mm(dy, w_t.transpose(1, 2), offs=ends) if ctx.needs_input_grad[0] else None
        dw_t = None
        if ctx.needs_input_grad[1]:
            # dw[g] = dy_g^T x_g: a grouped GEMM along the reduction dimension (the 2-D x 2-D form), [G, out, D],
            # the weight's own layout, so the parameters' gradients come out with contiguous rows (x_g^T dy_g gives
            # the transpose, and every gradient add after it read columns).
            dw = torch._grouped_mm(dy.t(), x, offs=ends)
            _zero_empty_groups(dw, ends)
            dw_t = dw.transpose(1, 2)
        return dx, dw_t, None


def grouped_mm_linear(x: torch.Tensor, weight, cu_seqlens: torch.Tensor, batch_size: int,
                      check_rows: bool = True) -> torch.Tensor:
    """grouped_linear's contract on torch._grouped_mm: x [R, D] bf16, weight [M, out, D], cu_seqlens [M * B + 1]
    -> y [R, out] (rows past cu_seqlens[-1] are 0 where x's rows there are finite: they meet a zero weight, so a NaN
    there stays NaN; MoMAttention's permute writes zeros there). out and D are padded to multiples of 8 (16-byte rows).
    weight may also be given as blocks of pieces (a list of lists): each block's pieces ([g, out_i, D] or [out_i, D])
    side by side along out, the blocks' groups one after another (MoMAttention's routed memories, then the shared
    one); the GEMM's weight is then written once from them, with no concatenation in the forward or the backward.
    check_rows=False skips the check of cu_seqlens[-1] <= R (three small launches on the device), for a caller whose
    rows come from the plan itself (MoMAttention's permute)."""
    if isinstance(weight, torch.Tensor) and weight.dim() != 3:
        _check_args(x, weight.shape, cu_seqlens, batch_size)  # the shape error, before the layout's
    blocks = [[weight]] if isinstance(weight, torch.Tensor) else weight
    layout, (M, n_out, D) = _weight_layout(blocks)
    _check_args(x, (M, n_out, D), cu_seqlens, batch_size, [p for block in blocks for p in block], check_rows)
    pad_in = -D % 8
    # [M + 1, out', D']: the extra memory is all zeros (rows past the last segment); padding columns are zeros too.
    w = _GroupWeights.apply(x.dtype, layout, (M, n_out, D), *[p for block in blocks for p in block])
    xp = torch.nn.functional.pad(x, (0, pad_in)) if pad_in else x.contiguous()
    y = _GroupedMM.apply(xp, w.transpose(1, 2), _group_ends(cu_seqlens, batch_size, x.shape[0]))
    return y[:, :n_out] if -n_out % 8 else y
