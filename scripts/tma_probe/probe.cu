// Checks common/tma.cuh and common/tma_host.h on a GPU: 64-row boxes of one head of a [rows][heads][128] bf16 tensor
// land in shared memory as two 128-byte-swizzled slabs (Sw128Slabs, the layout wgmma reads), rows past the tensor's
// end as zeros, on two phases of one mbarrier. Prints one line per load and OK / FAIL:
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -Icsrc scripts/tma_probe/probe.cu -o /tmp/tma_probe \
//     && /tmp/tma_probe
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "common/tile_layout.h"
#include "common/tma.cuh"
#include "common/tma_host.h"

namespace mom_ops {

constexpr int kRows = 200, kHeads = 3, kCols = 128;

// Loads the box (head h, rows r0 .. r0 + 63, all 128 columns: two boxes of 64) on phase `phase` of the barrier and
// writes the tile, read through Sw128Slabs, to out [64][128].
__global__ void __launch_bounds__(128) tma_probe_kernel(const __grid_constant__ CUtensorMap map, int h, int r0_a,
                                                        int r0_b, float* out) {
  extern __shared__ __align__(1024) unsigned char smem[];
  __nv_bfloat16* tile = reinterpret_cast<__nv_bfloat16*>(smem);  // [2 slabs][64][64]
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + 64 * kCols * 2);
  if (threadIdx.x == 0) {
    mbarrier_init(bar, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  for (int phase = 0; phase < 2; ++phase) {
    const int r0 = phase == 0 ? r0_a : r0_b;
    if (threadIdx.x == 0) {
      mbarrier_expect_tx(bar, 64 * kCols * 2);
      tma_load_3d(tile, &map, 0, h, r0, bar);
      tma_load_3d(tile + 64 * 64, &map, 64, h, r0, bar);
    }
    mbarrier_wait(bar, phase % 2);
    for (int idx = threadIdx.x; idx < 64 * kCols; idx += blockDim.x) {
      const int r = idx / kCols, c = idx % kCols;
      out[phase * 64 * kCols + idx] = __bfloat162float(tile[Sw128Slabs<64>::at(r, c)]);
    }
    __syncthreads();  // every thread has read the tile before the next phase's load overwrites it
  }
}

}  // namespace mom_ops

int main() {
  using namespace mom_ops;
  std::vector<__nv_bfloat16> x(size_t(kRows) * kHeads * kCols);
  auto value = [](int r, int h, int c) { return float((r * 7 + h * 131 + c * 3) % 251) / 16.f; };  // exact in bf16
  for (int r = 0; r < kRows; ++r)
    for (int h = 0; h < kHeads; ++h)
      for (int c = 0; c < kCols; ++c) x[(size_t(r) * kHeads + h) * kCols + c] = __float2bfloat16(value(r, h, c));
  __nv_bfloat16* gx;
  float* gout;
  cudaMalloc(&gx, x.size() * 2);
  cudaMalloc(&gout, 2 * 64 * kCols * 4);
  cudaMemcpy(gx, x.data(), x.size() * 2, cudaMemcpyHostToDevice);
  CUtensorMap map;
  if (!tensor_map_3d(&map, gx, true, kCols, kHeads, kRows, kCols, kHeads * kCols, 64, 64)) {
    std::printf("cuTensorMapEncodeTiled failed\nFAIL\n");
    return 1;
  }
  const int h = 1, r0[2] = {10, 170};  // the second box runs past the last row (200): zeros there
  const int smem = 64 * kCols * 2 + 1024;
  cudaFuncSetAttribute(tma_probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  tma_probe_kernel<<<1, 128, smem>>>(map, h, r0[0], r0[1], gout);
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    std::printf("CUDA error: %s\nFAIL\n", cudaGetErrorString(err));
    return 1;
  }
  std::vector<float> out(2 * 64 * kCols);
  cudaMemcpy(out.data(), gout, out.size() * 4, cudaMemcpyDeviceToHost);
  bool ok = true;
  for (int phase = 0; phase < 2; ++phase) {
    int bad = 0;
    for (int r = 0; r < 64; ++r)
      for (int c = 0; c < kCols; ++c) {
        const int row = r0[phase] + r;
        const float want = row < kRows ? value(row, h, c) : 0.f;
        bad += out[(phase * 64 + r) * kCols + c] != want;
      }
    std::printf("phase %d, rows %d..%d of head %d: %d of %d elements wrong %s\n", phase, r0[phase], r0[phase] + 63, h,
                bad, 64 * kCols, bad == 0 ? "ok" : "FAIL");
    ok = ok && bad == 0;
  }
  std::printf("%s\n", ok ? "OK" : "FAIL");
  return ok ? 0 : 1;
}
