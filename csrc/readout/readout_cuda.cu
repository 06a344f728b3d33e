// CUDA bindings of memory_mix (fwd, bwd). No host sync; the norm-weight gradient is a fixed-order sum.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/aligned.h"
#include "common/column_sum.cuh"
#include "common/other_gpus.h"
#include "common/static_switch.h"
#include "readout/readout_checks.h"
#include "readout/readout_kernels.cuh"

namespace mom_ops {
namespace {

struct MixInputs {
  at::Tensor o_routed, weights, shared, norm_weight, gate;
};

// Checks the CUDA-only limits and makes contiguous copies where needed.
MixInputs prepare(const at::Tensor& o_routed, const at::Tensor& dst_row, const at::Tensor& src_pair,
                  const at::Tensor& weights, const std::optional<at::Tensor>& shared,
                  const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& gate, double eps) {
  const MixDims d = check_memory_mix_args(o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps);
  CHECK_CUDA_FLOATING(o_routed);
  const int vec = 16 / int(o_routed.element_size());
  TORCH_CHECK_VALUE(d.dim_v % vec == 0 && d.dim_v <= 128 * vec, "memory_mix on CUDA needs V a multiple of ", vec,
                    " and at most ", 128 * vec, " for ", o_routed.scalar_type(), ", got V = ", d.dim_v);
  TORCH_CHECK_VALUE(d.heads >= 1 && d.heads <= 32, "memory_mix on CUDA supports 1 to 32 heads, got ", d.heads);
  MixInputs in;
  in.o_routed = contiguous_aligned16(o_routed);
  in.weights = weights.contiguous();
  if (shared.has_value()) in.shared = contiguous_aligned16(*shared);
  if (norm_weight.has_value()) in.norm_weight = contiguous_aligned16(norm_weight->to(at::kFloat));
  if (gate.has_value()) {
    // The gate is read in place where each row's heads are dense and 16-byte aligned (a column slice of the layer's
    // token projections); rows may be any multiple of 16 bytes apart.
    const at::Tensor& z = *gate;
    const bool in_place = z.stride(2) == 1 && (z.size(1) == 1 || z.stride(1) == d.dim_v) &&
                          (z.size(0) == 1 || z.stride(0) % vec == 0) &&
                          aligned16(z.data_ptr());
    in.gate = in_place ? z : contiguous_aligned16(z);
  }
  return in;
}

MixParams make_params(const MixInputs& in, const at::Tensor& dst_row, const at::Tensor& src_pair, double eps) {
  MixParams p{};
  p.o_routed = in.o_routed.data_ptr();
  p.dst_row = dst_row.data_ptr<int>();
  p.src_pair = src_pair.data_ptr<int>();
  p.weights = in.weights.data_ptr<float>();
  p.shared = in.shared.defined() ? in.shared.data_ptr() : nullptr;
  p.norm_weight = in.norm_weight.defined() ? in.norm_weight.data_ptr<float>() : nullptr;
  p.gate = in.gate.defined() ? in.gate.data_ptr() : nullptr;
  p.gate_row_stride = in.gate.defined() && in.gate.size(0) > 1 ? in.gate.stride(0) : 0;
  p.num_tokens = dst_row.size(0);
  p.num_rows = src_pair.size(0);
  p.topk = int(dst_row.size(1));
  p.heads = int(in.o_routed.size(1));
  p.dim_v = int(in.o_routed.size(2));
  p.eps = float(eps);
  p.inv_dim_v = p.dim_v > 0 ? 1.f / float(p.dim_v) : 0.f;  // (V = 0: 0 x inf gave NaN rstd, NaN grad_weights)
  return p;
}

// Calls fn.template operator()<T, kVec, kVecsPerLane, kPrefetch, kTopk>() for the input dtype, V and topk. The next
// item's rows are prefetched where the registers allow it (kVecsPerLane <= 2): on the H100 that took the bwd from
// 443 to 213 us and the fwd from 70 to 68 us (memory_mix_T16384_H4_V256_k2, commit db740fa). topk == 2 (MoM's
// usual top-2) gets kernels with the slot loops unrolled (kTopk = 2), and with one vector per lane topk == 3 too
// (MoMAttention's stream: the shared memory + top-2; every slot's row then loads one item ahead); other topk the
// general ones (kTopk = 0: the slots past two load their indices and rows when used).
template <typename Fn>
void dispatch_mix(const at::Tensor& o_routed, int dim_v, int topk, Fn&& fn) {
  FLOAT_SWITCH(o_routed.scalar_type(), elem_t, [&] {
    constexpr int kVec = 16 / sizeof(elem_t);
    if (dim_v <= 32 * kVec) {
      if (topk == 2) {
        fn.template operator()<elem_t, kVec, 1, true, 2>();
      } else if (topk == 3) {
        fn.template operator()<elem_t, kVec, 1, true, 3>();
      } else {
        fn.template operator()<elem_t, kVec, 1, true, 0>();
      }
    } else if (dim_v <= 64 * kVec) {
      if (topk == 2) {
        fn.template operator()<elem_t, kVec, 2, true, 2>();
      } else {
        fn.template operator()<elem_t, kVec, 2, true, 0>();
      }
    } else {
      fn.template operator()<elem_t, kVec, 4, false, 0>();
    }
  });
}

// A grid that fills every SM once at the kernel's occupancy (warps then stride over their items: no second wave),
// with at least `min_warps` warps (the fwd's warps each keep one head: H of them).
template <typename Kernel>
int grid_size(Kernel kernel, size_t smem, int64_t warps_needed, int min_warps) {
  int ctas_per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas_per_sm, kernel, kMixWarps * 32, smem));
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t needed = (warps_needed + kMixWarps - 1) / kMixWarps;
  const int64_t min_grid = (min_warps + kMixWarps - 1) / kMixWarps;
  return int(std::max<int64_t>(min_grid, std::min<int64_t>(needed, int64_t(sms) * std::max(1, ctas_per_sm))));
}

at::Tensor memory_mix_fwd_cuda(const at::Tensor& o_routed, const at::Tensor& dst_row, const at::Tensor& src_pair,
                               const at::Tensor& weights, const std::optional<at::Tensor>& shared,
                               const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& gate,
                               double eps) {
  const MixInputs in = prepare(o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps);
  if (!cuda_kernels_run_on(o_routed.device())) {
    return call_other_gpu_fallback<decltype(memory_mix_fwd_cuda)>(
        "memory_mix_fwd", o_routed.device(), o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps);
  }
  c10::cuda::CUDAGuard guard(o_routed.device());
  at::Tensor out = at::empty({dst_row.size(0), o_routed.size(1), o_routed.size(2)}, o_routed.options());
  MixParams p = make_params(in, dst_row, src_pair, eps);
  p.out = out.data_ptr();
  if (p.num_tokens == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_mix(in.o_routed, p.dim_v, p.topk, [&]<typename T, int kVec, int kVecsPerLane, bool kPrefetch, int kTopk>() {
    const auto kernel = memory_mix_fwd_kernel<T, kVec, kVecsPerLane, kPrefetch, kTopk>;
    kernel<<<grid_size(kernel, 0, p.num_tokens * p.heads, p.heads), kMixWarps * 32, 0, stream>>>(p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> memory_mix_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& o_routed, const at::Tensor& dst_row, const at::Tensor& src_pair,
    const at::Tensor& weights, const std::optional<at::Tensor>& shared, const std::optional<at::Tensor>& norm_weight,
    const std::optional<at::Tensor>& gate, double eps) {
  const MixInputs in = prepare(o_routed, dst_row, src_pair, weights, shared, norm_weight, gate, eps);
  CHECK_SHAPE(grad_out, dst_row.size(0), o_routed.size(1), o_routed.size(2));
  CHECK_SAME_DTYPE(grad_out, o_routed);
  CHECK_DEVICE(grad_out, o_routed);
  if (!cuda_kernels_run_on(o_routed.device())) {
    return call_other_gpu_fallback<decltype(memory_mix_bwd_cuda)>(
        "memory_mix_bwd", o_routed.device(), grad_out, o_routed, dst_row, src_pair, weights, shared, norm_weight, gate,
        eps);
  }
  c10::cuda::CUDAGuard guard(o_routed.device());
  const at::Tensor dy = contiguous_aligned16(grad_out);
  const auto f32 = o_routed.options().dtype(at::kFloat);
  // an output not asked for: an empty tensor of its own (aliased outputs break the schema: opcheck, functionalization)
  const auto none = [&] { return at::empty({0}, f32); };
  MixParams p = make_params(in, dst_row, src_pair, eps);
  at::Tensor grad_o_routed = at::empty_like(in.o_routed);
  at::Tensor grad_weights = at::empty({dst_row.size(0), dst_row.size(1)}, f32);
  at::Tensor grad_shared = shared.has_value() ? at::empty_like(in.shared) : none();
  // [N, H, V] contiguous whatever the gate's row stride
  at::Tensor grad_gate = gate.has_value() ? at::empty({p.num_tokens, p.heads, p.dim_v}, in.o_routed.options()) : none();
  p.grad_out = dy.data_ptr();
  p.grad_o_routed = grad_o_routed.data_ptr();
  p.grad_weights = grad_weights.data_ptr<float>();
  p.grad_shared = shared.has_value() ? grad_shared.data_ptr() : nullptr;
  p.grad_gate = gate.has_value() ? grad_gate.data_ptr() : nullptr;
  at::Tensor norm_partial, grad_norm_weight = none();
  if (p.num_tokens > 0) {
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    dispatch_mix(in.o_routed, p.dim_v, p.topk, [&]<typename T, int kVec, int kVecsPerLane, bool kPrefetch, int kTopk>() {
      const auto kernel = memory_mix_bwd_kernel<T, kVec, kVecsPerLane, kPrefetch, kTopk>;
      const size_t smem = sizeof(float) * kMixWarps *
                          ((norm_weight.has_value() ? kMixNormSlotsPerWarp<kVec, kVecsPerLane> : 0) + p.topk);
      // (past the 48 KB a launch takes without opting in: topk in the hundreds, a launch error otherwise)
      TORCH_CHECK_VALUE(smem <= 48 * 1024, "memory_mix's backward on CUDA takes a topk up to a few hundred (",
                        smem, " bytes of shared memory per CTA at topk = ", p.topk, ", V = ", p.dim_v, ")");
      const int grid = grid_size(kernel, smem, p.num_tokens, 1);  // a warp per token at a time
      if (norm_weight.has_value()) norm_partial = at::empty({grid, p.dim_v}, f32);
      p.grad_norm_partial = norm_weight.has_value() ? norm_partial.data_ptr<float>() : nullptr;
      kernel<<<grid, kMixWarps * 32, smem, stream>>>(p);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (norm_weight.has_value()) {
    norm_partial = at::zeros({1, p.dim_v}, f32);
  }
  if (norm_weight.has_value()) {  // sum of the per-CTA partials, in norm_weight's dtype
    grad_norm_weight = column_sums(norm_partial, {p.dim_v}, norm_weight->scalar_type());
  }
  return {grad_o_routed, grad_weights, grad_shared, grad_norm_weight, grad_gate};
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CUDA, m) {
  m.impl("memory_mix_fwd", &memory_mix_fwd_cuda);
  m.impl("memory_mix_bwd", &memory_mix_bwd_cuda);
}

}  // namespace mom_ops
