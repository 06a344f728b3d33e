// segment_conv's CUDA kernels (csrc/conv/conv_kernels.cuh) run on the CPU through the host shim: a check of their
// index logic without a GPU (scripts/conv_emulate/run.py). Not part of the mom_ops build. The launch mirrors
// conv_cuda.cu: grid (runs / kConvWarps, C / (32 kVec)), kConvThreads threads, runs of run_rows rows (0: chosen by
// conv_run_rows as on a GPU with 264 resident CTAs); outputs start as NaN.
#include "common/vec.cuh"
#include "conv/conv_kernels.cuh"
#include <torch/extension.h>
#include <thread>
#include <vector>

using namespace mom_ops;

template <typename K>
void launch(K kernel, dim3e grid, int threads, const ConvParams& p) {
  gridDim = grid;
  blockDim = dim3e{unsigned(threads), 1, 1};
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> bar(threads);
      g_barrier = &bar;
      std::vector<std::thread> ts;
      for (int t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
          threadIdx = dim3e{unsigned(t), 0, 0};
          blockIdx = dim3e{bx, by, 0};
          kernel(p);
        });
      for (auto& t : ts) t.join();
    }
}

// src_pair: an empty tensor, or the plan's [R] int32 map (the conv reads x [N, C] through it; topk its k).
ConvParams params(const at::Tensor& x, const at::Tensor& w, const at::Tensor& cu, const at::Tensor& h, bool act,
                  const at::Tensor& src_pair, int64_t topk) {
  ConvParams p{};
  p.x = x.data_ptr();
  if (src_pair.numel() > 0) {
    p.src_pair = src_pair.data_ptr<int>();
    p.src_pairs = x.size(0) * topk;
    p.topk = int(topk);
  }
  p.weight = w.data_ptr();  // fp32 or x's dtype, as the binding passes it
  p.weight_f32 = w.scalar_type() == at::kFloat;
  p.history = h.dim() == 3 ? h.data_ptr<float>() : nullptr;  // [S, W-1, C], or a 1-D placeholder for None
  p.cu_seqlens = cu.data_ptr();
  p.cu_int64 = cu.scalar_type() == at::kLong;
  p.rows = src_pair.numel() > 0 ? src_pair.size(0) : x.size(0);
  p.x_row_stride = x.stride(0);
  p.channels = int(x.size(1));
  p.segments = int(cu.size(0) - 1);
  p.activation = act;
  p.tiles_first = kConvTilesFirst;
  return p;
}

// (conv_cuda.cu's conv_grid) the grid and its run blocks (the bwd's grad_w partial rows); sets p.run_rows.
struct GridOf {
  int64_t run_blocks;
  dim3e grid;
};
GridOf grid_of(ConvParams& p, int64_t C, int vec, int64_t run_rows) {
  const unsigned tiles = unsigned((C + 32 * vec - 1) / (32 * vec));
  p.run_rows = run_rows > 0 ? int(run_rows) : conv_run_rows(p.rows, tiles, 264);
  const int64_t run_blocks = conv_run_blocks(p.rows, p.run_rows);
  return {run_blocks, conv_grid_of(unsigned(run_blocks), tiles, kConvTilesFirst)};
}

template <typename T, int kVec>
void with_width(int W, auto&& fn) {
  switch (W) {
    case 1: fn.template operator()<T, kVec, 1>(); break;
    case 2: fn.template operator()<T, kVec, 2>(); break;
    case 3: fn.template operator()<T, kVec, 3>(); break;
    case 4: fn.template operator()<T, kVec, 4>(); break;
    case 8: fn.template operator()<T, kVec, 8>(); break;
    default: TORCH_CHECK(false, "the emulation compiles widths 1-4 and 8, got ", W);
  }
}

template <typename Fn>
void dispatch(const at::Tensor& x, int W, bool vec, Fn&& fn) {
  if (x.scalar_type() == at::kFloat) {
    if (vec) with_width<float, 4>(W, fn); else with_width<float, 1>(W, fn);
  } else {
    if (vec) with_width<c10::BFloat16, 4>(W, fn); else with_width<c10::BFloat16, 1>(W, fn);
  }
}

// fwd/bwd(x, weight (fp32 or x's dtype), cu_seqlens, history fp32 or an empty 1-D tensor for None, activation,
// vec, src_pair (empty, or the plan's int32 map: x's rows read through it), topk, run_rows (0: chosen)): vec picks
// the 4-channel path (else 1 channel per thread). The outputs have the stream's rows.
at::Tensor fwd(at::Tensor x, at::Tensor w, at::Tensor cu, at::Tensor h, bool act, bool vec, at::Tensor src_pair,
               int64_t topk, int64_t run_rows) {
  ConvParams p = params(x, w, cu, h, act, src_pair, topk);
  at::Tensor y = at::full({p.rows, x.size(1)}, NAN, x.options());
  p.y = y.data_ptr();
  dispatch(x, int(w.size(1)), vec, [&]<typename T, int kVec, int kW>() {
    const GridOf g = grid_of(p, x.size(1), kVec, run_rows);
    launch(segment_conv_fwd_kernel<T, kVec, kW>, g.grid, kConvThreads, p);
  });
  return y;
}

std::vector<at::Tensor> bwd(at::Tensor gy, at::Tensor x, at::Tensor w, at::Tensor cu, at::Tensor h, bool act,
                            bool vec, at::Tensor src_pair, int64_t topk, int64_t run_rows) {
  ConvParams p = params(x, w, cu, h, act, src_pair, topk);
  // grad_x is a column slice of a wider NaN buffer (16-byte aligned, rows C + 8 apart): the kernel must write
  // every row of the slice and nothing beside it (run.py checks both).
  at::Tensor gx_wide = at::full({p.rows, x.size(1) + 8}, NAN, x.options());
  at::Tensor gx = gx_wide.narrow(1, 4, x.size(1));
  const int W = int(w.size(1));
  at::Tensor gh = h.dim() == 3 ? at::zeros_like(h) : at::empty({0}, h.options());
  p.grad_y = gy.data_ptr();
  p.grad_y_row_stride = gy.stride(0);
  p.grad_x = gx.data_ptr();
  p.grad_x_row_stride = gx.stride(0);
  p.grad_history = h.dim() == 3 ? gh.data_ptr<float>() : nullptr;
  at::Tensor part;
  dispatch(x, W, vec, [&]<typename T, int kVec, int kW>() {
    const GridOf g = grid_of(p, x.size(1), kVec, run_rows);
    part = at::full({g.run_blocks, x.size(1), W}, NAN, x.options().dtype(at::kFloat));
    p.grad_w_partial = part.data_ptr<float>();
    launch(segment_conv_bwd_kernel<T, kVec, kW>, g.grid, kConvThreads, p);
  });
  return {gx, part.sum(0), gh, gx_wide};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &fwd);
  m.def("bwd", &bwd);
}
