// Times segment_conv's CUDA kernels (csrc/conv/conv_kernels.cuh) at the bench shape, R 32768 x C 1024, W 4, bf16,
// 32 segments, for one setting of the MOM_OPS_CONV_* shape macros, beside a plain 16-byte copy of the same bytes
// (what the GPU's memory can do at this size). Runs of conv_run_rows' length for the kernels' occupancy (as the
// binding picks it) or a given one; y and grad_x are checked bitwise against 64-row runs. scripts/conv_variants.sh
// builds and runs several settings:
//   nvcc -std=c++20 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Icsrc <torch includes>
//        [-DMOM_OPS_CONV_WARPS=8 ...] scripts/conv_variants.cu -o /tmp/cv && /tmp/cv [rows] [run rows, 0: chosen]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

#include "conv/conv_kernels.cuh"

using namespace mom_ops;
using bf16 = c10::BFloat16;

#define CHECK(x)                                                                         \
  do {                                                                                   \
    cudaError_t e = (x);                                                                 \
    if (e != cudaSuccess) {                                                              \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));              \
      return 1;                                                                          \
    }                                                                                    \
  } while (0)

__global__ void fill_kernel(bf16* p, int64_t n, uint32_t seed) {  // small pseudo-random values
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t h = (uint32_t(i) ^ seed) * 2654435761u;
    p[i] = bf16(float(h >> 8) / float(1 << 24) - 0.5f);
  }
}

__global__ void copy_kernel(const uint4* src, uint4* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    __stcs(dst + i, __ldcs(src + i));
  }
}

template <typename F>
float time_us(F launch, int reps) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) launch();
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i) launch();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, a, b);
  return 1000.f * ms / reps;
}

int main(int argc, char** argv) {
  const int64_t R = argc > 1 ? std::atoll(argv[1]) : 32768, C = 1024;  // rows: the layer's streams have 49152 (T2K)
  const int forced_run_rows = argc > 2 ? std::atoi(argv[2]) : 0;
  constexpr int W = 4, S = 32;
  const int64_t n = R * C;
  bf16 *x, *gy, *y, *gx, *y64, *gx64;
  float *w, *partial;
  int* cu;
  CHECK(cudaMalloc(&x, n * 2));
  CHECK(cudaMalloc(&gy, n * 2));
  CHECK(cudaMalloc(&y, n * 2));
  CHECK(cudaMalloc(&gx, n * 2));
  CHECK(cudaMalloc(&y64, n * 2));
  CHECK(cudaMalloc(&gx64, n * 2));
  CHECK(cudaMalloc(&w, C * W * 4));
  CHECK(cudaMalloc(&cu, (S + 1) * 4));
  fill_kernel<<<1024, 256>>>(x, n, 1u);
  fill_kernel<<<1024, 256>>>(gy, n, 2u);
  std::vector<float> hw(C * W, 0.25f);
  CHECK(cudaMemcpy(w, hw.data(), hw.size() * 4, cudaMemcpyHostToDevice));
  std::vector<int> hcu(S + 1);
  for (int s = 0; s <= S; ++s) hcu[s] = int(R * s / S) - (s > 0 && s < S ? 37 * (s % 5) : 0);  // uneven cuts
  CHECK(cudaMemcpy(cu, hcu.data(), hcu.size() * 4, cudaMemcpyHostToDevice));

  int sms = 0, fwd_per_sm = 0, bwd_per_sm = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fwd_per_sm, segment_conv_fwd_kernel<bf16, kConvVec, W>,
                                                      kConvThreads, 0));
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bwd_per_sm, segment_conv_bwd_kernel<bf16, kConvVec, W>,
                                                      kConvThreads, 0));
  const unsigned tiles = unsigned(C / (32 * kConvVec));
  auto run_rows_of = [&](int per_sm) {
    return forced_run_rows > 0 ? forced_run_rows : conv_run_rows(R, tiles, int64_t(sms) * per_sm);
  };
  const int fwd_rows = run_rows_of(fwd_per_sm), bwd_rows = run_rows_of(bwd_per_sm);
  auto grid_of = [&](int run_rows) {
    return conv_grid_of(unsigned(conv_run_blocks(R, run_rows)), tiles, kConvTilesFirst);
  };
  CHECK(cudaMalloc(&partial, conv_run_blocks(R, 1) * C * W * 4));  // enough for any run length
  ConvParams p{};
  p.x = x;
  p.weight = w;
  p.weight_f32 = true;
  p.cu_seqlens = cu;
  p.y = y;
  p.grad_y = gy;
  p.grad_x = gx;
  p.grad_w_partial = partial;
  p.rows = R;
  p.x_row_stride = C;
  p.grad_y_row_stride = C;
  p.grad_x_row_stride = C;  // (unset until session 34: every grad_x row went to row 0, the bwd read 243 us)
  p.channels = int(C);
  p.segments = S;
  p.activation = true;
  p.tiles_first = kConvTilesFirst;

  // 64-row runs first (the reference outputs), then the timed length
  p.run_rows = 64;
  p.y = y64;
  p.grad_x = gx64;
  segment_conv_fwd_kernel<bf16, kConvVec, W><<<grid_of(64), kConvThreads>>>(p);
  segment_conv_bwd_kernel<bf16, kConvVec, W><<<grid_of(64), kConvThreads>>>(p);
  p.y = y;
  p.grad_x = gx;
  p.run_rows = fwd_rows;
  const float fwd =
      time_us([&] { segment_conv_fwd_kernel<bf16, kConvVec, W><<<grid_of(fwd_rows), kConvThreads>>>(p); }, 50);
  p.run_rows = bwd_rows;
  const float bwd =
      time_us([&] { segment_conv_bwd_kernel<bf16, kConvVec, W><<<grid_of(bwd_rows), kConvThreads>>>(p); }, 50);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> a(n), b(n);  // (before the copy below overwrites y)
  int64_t differ = 0;
  for (auto [u, v] : {std::pair{y, y64}, std::pair{gx, gx64}}) {
    CHECK(cudaMemcpy(a.data(), u, n * 2, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(b.data(), v, n * 2, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < n; ++i) differ += a[i] != b[i];
  }
  const float copy = time_us(
      [&] { copy_kernel<<<132 * 8, 256>>>(reinterpret_cast<const uint4*>(x), reinterpret_cast<uint4*>(y), n / 8); },
      50);
  const double mb = double(n) * 2 / 1e6;  // one [R, C] bf16 tensor
  std::printf("R %lld vec %d warps %d chunks %d/%d run rows %d/%d (CTAs per SM %d/%d, %lld/%lld CTAs): "
              "fwd %.1f us %.0f GB/s | bwd %.1f us %.0f GB/s | copy %.1f us %.0f GB/s | "
              "y, grad_x vs 64-row runs: %s (%lld differ)\n",
              static_cast<long long>(R), kConvVec, kConvWarps, kConvFwdChunk, kConvBwdChunk, fwd_rows, bwd_rows,
              fwd_per_sm, bwd_per_sm, static_cast<long long>(conv_run_blocks(R, fwd_rows) * tiles),
              static_cast<long long>(conv_run_blocks(R, bwd_rows) * tiles), fwd, 2 * mb / fwd * 1e3, bwd,
              3 * mb / bwd * 1e3, copy, 2 * mb / copy * 1e3, differ == 0 ? "bitwise" : "DIFFER",
              static_cast<long long>(differ));
  return 0;
}
