// Host side of the CUDA scan bindings: contiguous inputs, fp32 g and beta, allocated outputs, filled params.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "common/aligned.h"
#include "gdn/gdn_checks.h"
#include "gdn/scan_params.h"

namespace mom_ops {

// Keeps the tensors the params point into alive for the launch.
struct ScanIO {
  at::Tensor q, k, v, g, beta, h0, cu, o, ht;
  ScanParams params;
};

inline ScanIO prepare_scan_io(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                              const at::Tensor& beta, double scale, const std::optional<at::Tensor>& initial_state,
                              bool output_final_state, bool use_qk_l2norm, bool state_v_first,
                              const std::optional<at::Tensor>& cu_seqlens, const GdnDims& d, bool need_o = true) {
  ScanIO io;
  // q, k, v are read in 16-byte cp.async copies: a contiguous view at an odd storage offset is copied.
  io.q = contiguous_aligned16(q);
  io.k = contiguous_aligned16(k);
  io.v = contiguous_aligned16(v);
  io.g = g.to(at::kFloat).contiguous();
  io.beta = beta.to(at::kFloat).contiguous();
  if (initial_state.has_value()) io.h0 = contiguous_aligned16(*initial_state);  // (the recurrent kernel: float4)
  if (cu_seqlens.has_value()) io.cu = cu_seqlens->contiguous();
  // Rows past the last sequence end must read 0: the caller zeroes them (zero_rows_past_end_kernel).
  if (need_o) io.o = at::empty(v.sizes(), v.options());  // (the backward needs no o)
  const std::vector<int64_t> state_shape = {d.num_seqs, d.heads_v, state_v_first ? d.dim_v : d.dim_k,
                                            state_v_first ? d.dim_k : d.dim_v};
  const auto f32 = q.options().dtype(at::kFloat);
  io.ht = output_final_state ? at::empty(state_shape, f32) : at::empty({0}, f32);

  ScanParams& p = io.params;
  p.q = io.q.data_ptr();
  p.k = io.k.data_ptr();
  p.v = io.v.data_ptr();
  p.g = io.g.data_ptr<float>();
  p.beta = io.beta.data_ptr<float>();
  p.h0 = io.h0.defined() ? io.h0.data_ptr<float>() : nullptr;
  p.ht = output_final_state ? io.ht.data_ptr<float>() : nullptr;
  p.o = need_o ? io.o.data_ptr() : nullptr;
  p.cu_seqlens = io.cu.defined() ? io.cu.data_ptr() : nullptr;
  p.cu_int64 = io.cu.defined() && io.cu.scalar_type() == at::kLong;
  p.seqlen = d.seqlen;
  p.total_rows = d.batch * d.seqlen;
  p.num_seqs = int(d.num_seqs);
  p.heads_qk = int(d.heads_qk);
  p.heads_v = int(d.heads_v);
  p.dim_v = int(d.dim_v);
  p.scale = float(scale);
  p.l2norm = use_qk_l2norm;
  return io;
}

}  // namespace mom_ops
