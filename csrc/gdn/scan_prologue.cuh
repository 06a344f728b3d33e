// Two small launches before the chunked scan, both without a host sync:
// - longest_first_order: the sequences ordered by length, longest first (ties by index), so that the CTAs of
//   long sequences start in the first wave and the tail is one long chain, not a late wave of them (LPT).
// - zero_rows_past_end: o = 0 on the rows after cu_seqlens[-1] (no sequence writes them), instead of a memset
//   of all of o.
// The order launch can also pick a chain's V-block width from the lengths (ChainWidthChoice), which the host does
// not see without a sync.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <initializer_list>

#include "gdn/scan_io.h"
#include "gdn/scan_params.h"

namespace mom_ops {

constexpr int kOrderThreads = 1024;
constexpr int kOrderMaxSeqs = 8192;  // lengths staged in shared memory; more sequences keep index order

// A chain's choice between narrow and wide V-blocks where only the lengths can tell (narrow: more CTAs than fit at
// once, wide: fewer). Each width's run is simulated as the block scheduler runs it: CTAs in longest-first order,
// each on the slot (SM x CTAs per SM) that frees first, a CTA taking chunks x its width's cost per chunk (wide 1).
// Narrow wins where one long sequence is the tail (the layer's shared memory beside its routed ones), wide where the
// lengths are even and narrow would need a second wave (NOTES.md, "Backward chain width chosen on the device").
struct ChainWidthChoice {
  int slots = 0;           // CTAs that run at once; 0: no choice
  int ctas_narrow = 0;     // CTAs per sequence (heads x V-blocks) at each width
  int ctas_wide = 0;
  float narrow_cost = 1.f; // a narrow CTA's time per chunk over a wide one's
};
constexpr int kChoiceMaxSeqs = 64;    // the simulation's sequences (the caller checks)
constexpr int kChoiceMaxSlots = kOrderThreads / 2;

// Simulates both widths (threads [0, slots): narrow's slots, [512, 512 + slots): wide's) over the lengths in
// longest-first order; returns 1 for narrow, 0 for wide (in every thread). Ties keep wide. The slots' finish times
// are kept sorted: a sequence's CTAs, all of one duration d, go rounds x d to every slot and one more d to the
// `rest` that free first, so the new times are two sorted runs, merged by each slot's binary search in the other
// run (a per-slot rank over all slots took ~25 us per call at 10 sequences).
static __device__ int choose_chain_width(const int* sorted_len, int n, const ChainWidthChoice& c) {
  __shared__ float end[2][kChoiceMaxSlots];  // the slots' finish times, ascending
  const int width = threadIdx.x / kChoiceMaxSlots, slot = threadIdx.x % kChoiceMaxSlots, slots = c.slots;
  const bool mine = slot < slots;
  const int ctas = width == 0 ? c.ctas_narrow : c.ctas_wide;
  const float cost = width == 0 ? c.narrow_cost : 1.f;
  const float* e = end[width];
  if (mine) end[width][slot] = 0.f;
  __syncthreads();
  for (int i = 0; i < n; ++i) {  // uniform across the block
    const float d = float((sorted_len[i] + 63) / 64) * cost;
    const int rounds = ctas / slots, rest = ctas % slots;
    float t = 0.f;
    int pos = slot;
    if (mine && rest > 0) {
      t = e[slot];
      // the first rest slots (run A) get d more: A's element i goes to i + #{B < e_i + d}, B's element j (j >= rest)
      // to (j - rest) + #{A : e_a + d <= e_j}; both counts by binary search in the other (sorted) run
      const bool in_a = slot < rest;
      int lo = in_a ? rest : 0, hi = in_a ? slots : rest;  // first index in [lo, hi) where the test fails
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        const bool before = in_a ? e[mid] < t + d : e[mid] + d <= t;
        if (before) lo = mid + 1; else hi = mid;
      }
      pos = in_a ? slot + (lo - rest) : (slot - rest) + lo;
      if (in_a) t += d;
    }
    __syncthreads();
    if (mine && rest > 0) end[width][pos] = t;
    __syncthreads();
    if (mine && rounds > 0) end[width][slot] += float(rounds) * d;  // the order stays
    __syncthreads();
  }
  return end[0][slots - 1] < end[1][slots - 1] ? 1 : 0;  // the makespans (the last, largest, times)
}

// One CTA; order[rank] = sequence; with a choice (choice.slots > 0), order[n] = choose_chain_width's answer.
static __global__ void __launch_bounds__(kOrderThreads)
    longest_first_order_kernel(ScanParams p, int* order, ChainWidthChoice choice) {
  __shared__ int len[kOrderMaxSeqs];  // lengths clamped to int (only the order matters)
  __shared__ int sorted_len[kChoiceMaxSeqs];
  const int n = p.num_seqs;
  for (int s = threadIdx.x; s < n; s += kOrderThreads) {
    int64_t bos, eos;
    sequence_bounds(p, s, bos, eos);
    len[s] = int(min(eos - bos, int64_t(0x7fffffff - 63)));
  }
  __syncthreads();
  for (int s = threadIdx.x; s < n; s += kOrderThreads) {
    int rank = 0;
    for (int t = 0; t < n; ++t) rank += len[t] > len[s] || (len[t] == len[s] && t < s);
    order[rank] = s;
    if (choice.slots > 0 && rank < kChoiceMaxSeqs) sorted_len[rank] = len[s];
  }
  if (choice.slots > 0) {  // uniform across the block
    __syncthreads();
    const int narrow = choose_chain_width(sorted_len, min(n, kChoiceMaxSeqs), choice);
    if (threadIdx.x == 0) order[n] = narrow;
  }
}

// Up to kRowsPastEndTensors tensors of [total_rows, ...] rows whose rows past cu_seqlens[-1] are zeroed in one launch
// (the backward's five gradients: five launches of ~1.5 us each before).
constexpr int kRowsPastEndTensors = 5;
struct RowsPastEnd {
  unsigned char* data[kRowsPastEndTensors];
  int64_t row_bytes[kRowsPastEndTensors];
};

// Grid-stride over the bytes of tensor blockIdx.y past row cu_seqlens[-1] (rarely any), and before row
// cu_seqlens[0] (none for a valid cu_seqlens; the CPU refuses cu_seqlens[0] != 0, CUDA cannot without a sync).
static __global__ void zero_rows_past_end_kernel(ScanParams p, RowsPastEnd t) {
  int64_t first, first_end, bos, end;
  sequence_bounds(p, 0, first, first_end);
  sequence_bounds(p, p.num_seqs - 1, bos, end);
  unsigned char* data = t.data[blockIdx.y];
  const int64_t row_bytes = t.row_bytes[blockIdx.y], total = p.total_rows * row_bytes;
  const int64_t head = first * row_bytes, tail = end * row_bytes, count = head + (total - tail);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    data[i < head ? i : tail + (i - head)] = 0;
}

// Each of `tensors` ([total_rows, ...], allocated empty) = 0 on the rows no sequence covers, in one launch.
inline void zero_rows_past_end(const ScanParams& params, std::initializer_list<at::Tensor*> tensors,
                               cudaStream_t stream) {
  TORCH_INTERNAL_ASSERT(tensors.size() <= kRowsPastEndTensors);
  RowsPastEnd t{};
  int count = 0;
  for (at::Tensor* tensor : tensors) {
    if (params.num_seqs == 0) {
      tensor->zero_();
    } else if (params.cu_seqlens != nullptr && tensor->numel() > 0) {
      t.data[count] = static_cast<unsigned char*>(tensor->data_ptr());
      t.row_bytes[count] = int64_t(tensor->nbytes()) / params.total_rows;
      ++count;
    }
  }
  if (count == 0) return;
  zero_rows_past_end_kernel<<<dim3(132, count), 256, 0, stream>>>(params, t);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// o (allocated empty by prepare_scan_io) = 0 on the rows no sequence covers.
inline void zero_rows_past_end(ScanIO& io, cudaStream_t stream) { zero_rows_past_end(io.params, {&io.o}, stream); }

// The choice for a chain whose narrow V-blocks give ctas_narrow CTAs per sequence (heads x blocks; wide: half) at
// one CTA per SM, where only the lengths can tell: with cu_seqlens, 2 .. kChoiceMaxSeqs sequences and narrow CTAs
// more than the SMs but at most four waves; else none (slots 0). narrow_cost: a narrow chunk's time over a wide one's.
inline ChainWidthChoice chain_width_choice(const ScanParams& p, int64_t ctas_narrow, float narrow_cost) {
  ChainWidthChoice c;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t total = p.num_seqs * ctas_narrow;
  if (p.cu_seqlens == nullptr || p.num_seqs <= 1 || p.num_seqs > kChoiceMaxSeqs || total <= sms ||
      total > 4 * int64_t(sms) || sms > kChoiceMaxSlots || ctas_narrow % 2 != 0)
    return c;
  c.slots = sms;
  c.ctas_narrow = int(ctas_narrow);
  c.ctas_wide = int(ctas_narrow / 2);
  c.narrow_cost = narrow_cost;
  return c;
}

// Workspace [N] int32 with the sequences longest first, or an undefined tensor (then index order). With a choice
// (chain_width_choice's), [N + 1]: element N is 1 where narrow V-blocks finish first, else 0.
inline at::Tensor longest_first_order(const ScanIO& io, cudaStream_t stream, const ChainWidthChoice& choice = {}) {
  const int n = io.params.num_seqs;
  if (n <= 1 || n > kOrderMaxSeqs || io.params.cu_seqlens == nullptr) return {};
  TORCH_CHECK(choice.slots == 0 || (n <= kChoiceMaxSeqs && choice.slots <= kChoiceMaxSlots),
              "chain width choice: ", n, " sequences, ", choice.slots, " slots");
  at::Tensor order = at::empty({n + (choice.slots > 0)}, io.q.options().dtype(at::kInt));
  longest_first_order_kernel<<<1, kOrderThreads, 0, stream>>>(io.params, order.data_ptr<int>(), choice);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order;
}

}  // namespace mom_ops
