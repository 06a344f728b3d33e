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

// Default: 16-chunk pieces, warm-ups of at most 16 chunks (the measured setting; NOTES.md, "Against FlashQLA").
// MOM_OPS_GDN_PIECE_CHUNKS=auto: pieces as long as lets one wave of the ws kernels (one CTA per SM) hold one
// sequence's pieces of every head and V-block (n1 T = 32K, HV = 16, V = 128 on 132 SMs: 8 pieces of 64 chunks), with
// warm-ups up to a piece's length: the same chain work where the decay is fast, and a slow head's warm-up (g x 0.02:
// ~17 chunks) paid once per 64 chunks instead of per 16, so that such heads are cut too. =N: N-chunk pieces, warm-ups
// up to N chunks. Not timed yet.
inline PieceSize gdn_piece_size(int64_t rows, int64_t heads_v, int64_t vblocks, int sms) {
  const char* env = std::getenv("MOM_OPS_GDN_PIECE_CHUNKS");
  if (env == nullptr) return {kPieceChunks, kPieceMaxWarmup};
  int64_t chunks = 0;
  if (std::strcmp(env, "auto") == 0) {
    const int64_t per_head = std::max<int64_t>(1, sms / std::max<int64_t>(1, heads_v * vblocks));  // CTAs per head
    chunks = std::max<int64_t>(kPieceChunks, ((rows + 63) / 64 + per_head - 1) / per_head);
  } else {
    chunks = std::atoll(env);
    TORCH_CHECK_VALUE(chunks >= 1 && chunks <= (int64_t(1) << 24),
                      "MOM_OPS_GDN_PIECE_CHUNKS must be auto or a number of chunks in [1, 2^24], got ", env);
  }
  return {int(chunks), int(chunks)};
}

}  // namespace mom_ops
