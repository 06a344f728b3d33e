// What every scan kernel (chunked forward, token-by-token recurrent) takes, and the host side that checks and
// prepares it: contiguous inputs, g and beta in fp32, o (zeros for rows outside every sequence) and the
// final state. Torch-free on the device side; the host helper uses ATen.
#pragma once

#include <cstdint>

namespace mom_ops {

struct ScanParams {
  const void* q;           // [rows, H, K]
  const void* k;           // [rows, H, K]
  const void* v;           // [rows, HV, V]
  const float* g;          // [rows, HV] log decay
  const float* beta;       // [rows, HV]
  const float* h0;         // [N, HV, K, V] ([N, HV, V, K] with state_v_first) or nullptr
  float* ht;               // same, or nullptr
  void* o;                 // [rows, HV, V]
  const void* cu_seqlens;  // [N + 1] int32 / int64, or nullptr: sequence i is rows [i T, (i + 1) T)
  bool cu_int64;
  int64_t seqlen, total_rows;
  int num_seqs, heads_qk, heads_v, dim_v;
  float scale;
  bool l2norm;
};

#ifdef __CUDACC__
// Offset of element (k, v0 + vv) in one head's fp32 state (h0, ht, dht): [K, V], or [V, K] with state_v_first.
__device__ __forceinline__ int64_t state_elem(bool v_first, int dim_k, int dim_v, int k, int v0, int vv) {
  return v_first ? int64_t(v0 + vv) * dim_k + k : int64_t(k) * dim_v + v0 + vv;
}

// Rows [bos, eos) of sequence seq; bad cu_seqlens are clamped so that nothing is read out of bounds.
__device__ __forceinline__ void sequence_bounds(const ScanParams& p, int64_t seq, int64_t& bos, int64_t& eos) {
  bos = seq * p.seqlen;
  eos = bos + p.seqlen;
  if (p.cu_seqlens != nullptr) {
    auto cu = [&](int64_t i) {
      return p.cu_int64 ? static_cast<const int64_t*>(p.cu_seqlens)[i] : int64_t(static_cast<const int*>(p.cu_seqlens)[i]);
    };
    bos = max(int64_t(0), min(cu(seq), p.total_rows));
    eos = max(bos, min(cu(seq + 1), p.total_rows));
  }
}

// What a chain CTA (forward, split chain, backward chain: blockIdx.x = (rank, value head, V-block)) owns: sequence
// seq_order[rank] (longest first) or rank with rows [bos, eos), value head hv (q/k head h), V-block vb of bv columns
// from v0, and its [K, bv] block of the [N, HV, K, V] fp32 states (h0, ht, dht, dh0) at state_index.
struct ChainCta {
  int seq, hv, h, vb, v0, piece;
  int64_t bos, eos, state_off;

  // Offset of element (k, v0 + vv) (state_elem's layouts).
  __device__ __forceinline__ int64_t state_index(bool v_first, int dim_k, int dim_v, int k, int vv) const {
    return state_off + state_elem(v_first, dim_k, dim_v, k, v0, vv);
  }
};

// First chunk slot of the sequence starting at row bos: slots [bos / 64 + seq, .. + its chunks) never overlap
// between sequences, and all fit in chunk_slots() slots.
__device__ __forceinline__ int64_t chunk_slot(const ScanParams&, int64_t seq, int64_t bos) { return bos / 64 + seq; }

// The sequence of chunk slot `slot` (or of another slot of rows_per_slot rows, as chunk_slot: bos / rows_per_slot +
// seq): the last one whose first slot is <= slot (first slots increase). A 32-ary
// search by the calling warp (all 32 lanes, converged; each gets the answer): every round tests 32 evenly spaced
// sequences at once, so up to 33 sequences take one round of loads (a binary search took a dependent round trip per
// halving: ~6% of the grads kernel at 32 sequences, ncu).
__device__ __forceinline__ int slot_sequence(const ScanParams& p, int64_t slot, int64_t rows_per_slot = 64) {
  const int lane = threadIdx.x % 32;
  int lo = 0, hi = p.num_seqs - 1;  // the answer is in [lo, hi]
  while (lo < hi) {
    const int step = (hi - lo + 31) / 32;  // candidates lo + step (lane + 1) cover (lo, hi]
    const int cand = lo + step * (lane + 1);
    bool holds = false;
    if (cand <= hi) {
      int64_t b, e;
      sequence_bounds(p, cand, b, e);
      holds = b / rows_per_slot + cand <= slot;  // (chunk_slot at 64 rows per slot)
    }
    const int n = __popc(__ballot_sync(0xffffffffu, holds));  // the candidates that hold are a prefix of the lanes
    lo += step * n;                                            // the last that holds
    hi = min(hi, lo + step - 1);                               // the next one fails (or is past hi)
  }
  return lo;
}

// blockIdx.x = (rank, value head, V-block). With piece_chunks > 0 (scan_pieces.cuh) rank is a piece slot, slots of
// 64 piece_chunks rows as chunk_slot's of 64: sequence slot_sequence(rank, 64 piece_chunks) (a warp-collective:
// every thread of the CTA calls this converged), piece rank - its first piece slot.
__device__ __forceinline__ ChainCta chain_cta(const ScanParams& p, const int* seq_order, int num_vblocks, int bv,
                                              int dim_k, int piece_chunks = 0) {
  ChainCta c;
  c.vb = blockIdx.x % num_vblocks;
  c.hv = (blockIdx.x / num_vblocks) % p.heads_v;
  const int rank = blockIdx.x / (num_vblocks * p.heads_v);
  const int64_t rows_per_piece = int64_t(64) * piece_chunks;
  c.seq = piece_chunks > 0 ? slot_sequence(p, rank, rows_per_piece) : seq_order != nullptr ? seq_order[rank] : rank;
  c.h = c.hv / (p.heads_v / p.heads_qk);
  c.v0 = c.vb * bv;
  sequence_bounds(p, c.seq, c.bos, c.eos);
  c.piece = piece_chunks > 0 ? int(rank - (c.bos / rows_per_piece + c.seq)) : 0;
  c.state_off = (int64_t(c.seq) * p.heads_v + c.hv) * int64_t(dim_k) * p.dim_v;
  return c;
}
#endif

// Slots for per-chunk tensors (states at chunk starts): rows / 64 + N + 1 covers every chunk_slot.
inline int64_t chunk_slots(int64_t total_rows, int64_t num_seqs) { return total_rows / 64 + num_seqs + 1; }

}  // namespace mom_ops
