// How long the pieces of the scan in pieces are (scan_pieces.cuh) and how far their warm-ups may reach, chosen on
// the host from the row count (no host sync), for the forward (gdn_cuda.cu) and the backward chain (gdn_bwd_cuda.cu).
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gdn/scan_pieces.cuh"

namespace mom_ops {

struct PieceSize {
  int chunks;      // chunks per piece
  int max_warmup;  // chunks a piece's warm-up may take at most
};

// Default (MOM_OPS_GDN_PIECE_CHUNKS unset or auto): pieces as long as lets one wave of the ws kernels (one CTA per SM)
// hold one sequence's pieces of every head and V-block (n1 T = 32K, HV = 16, V = 128 on 132 SMs: 8 pieces of 64
// chunks), at least kPieceChunks, with warm-ups up to a piece's length but at most kPieceMaxWarmupAuto chunks: the same
// chain work where the decay is fast, and a slow head's warm-up (g x 0.02: ~17 chunks) paid once per 64 chunks
// instead of per 16, so that such heads are cut too (H200 n1 T = 32K fwd, against 16-chunk pieces: 0.579 -> 0.547 ms
// at the bench's decay, 0.657 -> 0.565 at g x 0.1, 1.169 -> 0.668 at g x 0.02; NOTES.md, "Piece size"). A head that
// needs more than 64 chunks to forget 2^24 is left to the split forward: cut, its pieces would cost more than its
// split chain. =N: N-chunk pieces, warm-ups up to N chunks (16: the earlier default).
constexpr int kPieceMaxWarmupAuto = 64;

inline PieceSize gdn_piece_size(int64_t rows, int64_t heads_v, int64_t vblocks, int sms) {
  const char* env = std::getenv("MOM_OPS_GDN_PIECE_CHUNKS");
  if (env == nullptr || std::strcmp(env, "auto") == 0) {
    const int64_t per_head = std::max<int64_t>(1, sms / std::max<int64_t>(1, heads_v * vblocks));  // CTAs per head
    const int64_t chunks = std::max<int64_t>(kPieceChunks, ((rows + 63) / 64 + per_head - 1) / per_head);
    return {int(std::min<int64_t>(chunks, int64_t(1) << 24)), int(std::min<int64_t>(chunks, kPieceMaxWarmupAuto))};
  }
  const int64_t chunks = std::atoll(env);
  TORCH_CHECK_VALUE(chunks >= 1 && chunks <= (int64_t(1) << 24),
                    "MOM_OPS_GDN_PIECE_CHUNKS must be auto or a number of chunks in [1, 2^24], got ", env);
  return {int(chunks), int(chunks)};
}

}  // namespace mom_ops
