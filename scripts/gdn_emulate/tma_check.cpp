// The emulator's TMA shim (shim/common/tma.cuh, tma_host.h) on the cases scripts/tma_probe checks on a GPU, and more:
// (1) 64-row boxes of one head of a [200][3][128] bf16 tensor as two 128-byte-swizzled slabs on two phases of one
// mbarrier, the second box running past the last row (zeros); (2) 32-column boxes in the 64-byte swizzle
// (Sw64Rows); (3) a two-stage pipeline of six boxes, refills waiting for the 128 readers' mbarrier_arrive.
// Every value is read back through the layouts the kernels use. Prints OK or the failures.
#include "emu_host.h"
#include "common/tile_layout.h"
#include "common/tma.cuh"
#include "common/tma_host.h"

using namespace mom_ops;
using T = c10::BFloat16;

constexpr int kRows = 200, kHeads = 3, kCols = 128;
static float value(int r, int h, int c) { return float((r * 7 + h * 131 + c * 3) % 251) / 16.f; }  // exact in bf16

struct Params {
  CUtensorMap map128, map64;
  float* out;  // [2][64][128] (1), then [64][32] (2), then [6][64][64] (3)
};

void tma_check_kernel(Params p) {
  T* tile = reinterpret_cast<T*>(smem);                            // [2 slabs][64][64], 1 KB aligned
  T* narrow = reinterpret_cast<T*>(smem + 64 * kCols * 2);         // [64][32] in the 64-byte swizzle
  T* stages = reinterpret_cast<T*>(smem + 64 * kCols * 2 + 4096);  // 2 x [64][64]
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + 64 * kCols * 2 + 4096 + 2 * 8192);  // 1 + full[2] + empty[2]
  uint64_t *full = bar + 1, *empty = bar + 3;
  const int tid = threadIdx.x;
  if (tid == 0) {
    mbarrier_init(bar, 1);
    for (int s = 0; s < 2; ++s) mbarrier_init(full + s, 1), mbarrier_init(empty + s, 128);
    fence_mbarrier_init();
  }
  __syncthreads();
  // (1) two phases of one barrier
  for (int phase = 0; phase < 2; ++phase) {
    const int r0 = phase == 0 ? 10 : 170;
    if (tid == 0) {
      mbarrier_expect_tx(bar, 64 * kCols * 2);
      tma_load_3d(tile, &p.map128, 0, 1, r0, bar);
      tma_load_3d(tile + 64 * 64, &p.map128, 64, 1, r0, bar);
    }
    mbarrier_wait(bar, phase % 2);
    for (int idx = tid; idx < 64 * kCols; idx += 128)
      p.out[phase * 64 * kCols + idx] = static_cast<float>(tile[Sw128Slabs<64>::at(idx / kCols, idx % kCols)]);
    __syncthreads();
  }
  // (2) the 64-byte swizzle: columns 96..127 of head 2, rows 150..213 (past the end from 200), phase 0 of full[0]...
  // on the first barrier's third phase instead, so that (3) starts from fresh ones
  if (tid == 0) {
    mbarrier_expect_tx(bar, 64 * 32 * 2);
    tma_load_3d(narrow, &p.map64, 96, 2, 150, bar);
  }
  mbarrier_wait(bar, 0);
  float* out2 = p.out + 2 * 64 * kCols;
  for (int idx = tid; idx < 64 * 32; idx += 128) out2[idx] = static_cast<float>(narrow[Sw64Rows::at(idx / 32, idx % 32)]);
  // (3) six boxes (head 0, rows 30 i, columns 64 (i % 2)) through two stages
  float* out3 = out2 + 64 * 32;
  for (int i = 0; i < 6; ++i) {
    const int s = i % 2;
    if (tid == 0) {
      if (i >= 2) mbarrier_wait(empty + s, (i / 2 - 1) % 2);  // the readers of box i - 2 are done
      mbarrier_expect_tx(full + s, 64 * 64 * 2);
      tma_load_3d(stages + s * 64 * 64, &p.map128, 64 * (i % 2), 0, 30 * i, full + s);
    }
    mbarrier_wait(full + s, (i / 2) % 2);
    for (int idx = tid; idx < 64 * 64; idx += 128)
      out3[i * 64 * 64 + idx] = static_cast<float>(stages[s * 64 * 64 + Sw128Slabs<64>::at(idx / 64, idx % 64)]);
    mbarrier_arrive(empty + s);
  }
}

int main() {
  emu::g_order = std::getenv("EMU_ORDER") ? std::atoi(std::getenv("EMU_ORDER")) : 0;  // (3: random warp speeds)
  Buf x = galloc(size_t(kRows) * kHeads * kCols * 2);
  for (int r = 0; r < kRows; ++r)
    for (int h = 0; h < kHeads; ++h)
      for (int c = 0; c < kCols; ++c) x.as<T>()[(size_t(r) * kHeads + h) * kCols + c] = T(value(r, h, c));
  Buf out = galloc((2 * 64 * kCols + 64 * 32 + 6 * 64 * 64) * 4);
  Params p{};
  p.out = out.as<float>();
  if (!tensor_map_3d(&p.map128, x.data, true, kCols, kHeads, kRows, kCols, kHeads * kCols, 64, 64) ||
      !tensor_map_3d(&p.map64, x.data, true, kCols, kHeads, kRows, kCols, kHeads * kCols, 32, 64,
                     CU_TENSOR_MAP_SWIZZLE_64B)) {
    std::printf("tensor_map_3d refused\nFAIL\n");
    return 1;
  }
  launch(tma_check_kernel, p, 1, 64 * kCols * 2 + 4096 + 2 * 8192 + 64, 128);
  int bad = 0;
  auto expect = [&](float got, int r, int h, int c) {
    const float want = r < kRows ? value(r, h, c) : 0.f;
    if (got != want && bad++ < 5) std::printf("row %d head %d col %d: %g, expected %g\n", r, h, c, got, want);
  };
  const float* o = out.as<float>();
  for (int phase = 0; phase < 2; ++phase)
    for (int idx = 0; idx < 64 * kCols; ++idx) expect(o[phase * 64 * kCols + idx], (phase == 0 ? 10 : 170) + idx / kCols, 1, idx % kCols);
  o += 2 * 64 * kCols;
  for (int idx = 0; idx < 64 * 32; ++idx) expect(o[idx], 150 + idx / 32, 2, 96 + idx % 32);
  o += 64 * 32;
  for (int i = 0; i < 6; ++i)
    for (int idx = 0; idx < 64 * 64; ++idx) expect(o[i * 64 * 64 + idx], 30 * i + idx / 64, 0, 64 * (i % 2) + idx % 64);
  std::printf("%d wrong\n%s\n", bad, bad == 0 ? "OK" : "FAIL");
  return bad == 0 ? 0 : 1;
}
