// Two small launches before the chunked scan, both without a host sync:
// - longest_first_order: the sequences ordered by length, longest first (ties by index), so that the CTAs of
//   long sequences start in the first wave and the tail is one long chain, not a late wave of them (LPT).
// - zero_rows_past_end: o = 0 on the rows after cu_seqlens[-1] (no sequence writes them), instead of a memset
//   of all of o.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "gdn/scan_io.h"
#include "gdn/scan_params.h"

namespace mom_ops {

constexpr int kOrderThreads = 1024;
constexpr int kOrderMaxSeqs = 8192;  // lengths staged in shared memory; more sequences keep index order

// One CTA; order[rank] = sequence.
static __global__ void __launch_bounds__(kOrderThreads) longest_first_order_kernel(ScanParams p, int* order) {
  __shared__ int len[kOrderMaxSeqs];  // lengths clamped to int (only the order matters)
  const int n = p.num_seqs;
  for (int s = threadIdx.x; s < n; s += kOrderThreads) {
    int64_t bos, eos;
    sequence_bounds(p, s, bos, eos);
    len[s] = int(min(eos - bos, int64_t(0x7fffffff)));
  }
  __syncthreads();
  for (int s = threadIdx.x; s < n; s += kOrderThreads) {
    int rank = 0;
    for (int t = 0; t < n; ++t) rank += len[t] > len[s] || (len[t] == len[s] && t < s);
    order[rank] = s;
  }
}

// Grid-stride over the bytes of o past row cu_seqlens[-1] (rows of row_bytes bytes; rarely any).
static __global__ void zero_rows_past_end_kernel(ScanParams p, int64_t row_bytes) {
  int64_t bos, end;
  sequence_bounds(p, p.num_seqs - 1, bos, end);
  unsigned char* o = static_cast<unsigned char*>(p.o);
  const int64_t total = p.total_rows * row_bytes;
  for (int64_t i = end * row_bytes + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    o[i] = 0;
}

// rows_tensor ([total_rows, ...], allocated empty) = 0 on the rows no sequence covers.
inline void zero_rows_past_end(const ScanParams& params, at::Tensor& rows_tensor, cudaStream_t stream) {
  if (params.num_seqs == 0) {
    rows_tensor.zero_();
  } else if (params.cu_seqlens != nullptr && rows_tensor.numel() > 0) {
    ScanParams p = params;
    p.o = rows_tensor.data_ptr();
    zero_rows_past_end_kernel<<<132, 256, 0, stream>>>(p, rows_tensor.nbytes() / p.total_rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// o (allocated empty by prepare_scan_io) = 0 on the rows no sequence covers.
inline void zero_rows_past_end(ScanIO& io, cudaStream_t stream) { zero_rows_past_end(io.params, io.o, stream); }

// Workspace [N] int32 with the sequences longest first, or an undefined tensor (then index order).
inline at::Tensor longest_first_order(const ScanIO& io, cudaStream_t stream) {
  const int n = io.params.num_seqs;
  if (n <= 1 || n > kOrderMaxSeqs || io.params.cu_seqlens == nullptr) return {};
  at::Tensor order = at::empty({n}, io.q.options().dtype(at::kInt));
  longest_first_order_kernel<<<1, kOrderThreads, 0, stream>>>(io.params, order.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order;
}

}  // namespace mom_ops
