// Checks csrc/common/wgmma.cuh: D = A B (64 x 64, K = 64 in four k-steps) with each operand in both roles (K-major and
// MN-major) read from the same kind of 128-byte-swizzled tile, and with A from registers (the fragments acc_to_a makes
// of an accumulator), against a host reference in double. Prints one line per role pair and OK / FAIL; the same
// source runs on the GPU and in the CPU emulator (whose wgmma shim it validates):
//   GPU:      nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -Icsrc scripts/wgmma_probe/probe.cu \
//               -o /tmp/wgmma_probe && /tmp/wgmma_probe
//   emulator: bash scripts/wgmma_probe/run_emulated.sh
#ifdef MOM_OPS_EMULATE
#include "../gdn_emulate/emu_host.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "common/wgmma.cuh"
#include "common/wgmma_steps.cuh"

namespace mom_ops {

#ifdef MOM_OPS_EMULATE
using Elem = c10::BFloat16;
#else
using Elem = __nv_bfloat16;
#endif

struct ProbeParams {
  const Elem* a;  // [64][64] the stored A tile (rows m for K-major A, rows k for M-major A)
  const Elem* b;  // [64][64] the stored B tile (rows n for K-major B, rows k for N-major B)
  float* d;       // [10][64][64] D for (trans_a, trans_b) = (0, 0), (0, 1), (1, 0), (1, 1): m64n64, then m64n32 on
                  // columns 32..63 (columns 0..31 unchecked); then A from registers (K-major a), B K- / N-major
};

// D = A B with A, B read from the swizzled tiles sa, sb, by m64 x kN instructions on columns n0 .. n0 + kN - 1 of D
// (an n32 B operand starting at column 32 of an N-major tile, or row 32 of a K-major one); this thread's accumulators
// -> d (row-major [64][64]).
template <int kN, bool kTransA, bool kTransB>
__device__ void probe_product(const Elem* sa, const Elem* sb, float* d, int n0, int tid) {
  float acc[kN / 8][4];
  for (int j = 0; j < kN / 8; ++j)
    for (int e = 0; e < 4; ++e) acc[j][e] = -1.f;  // overwritten by the first k-step (accumulate = false)
  wgmma_fence();
  for (int ks = 0; ks < 4; ++ks) {  // K-major: columns 16 ks.. (32 ks bytes in); MN-major: rows 16 ks.. (2 KB ks)
    const uint64_t da = sw128_desc(kTransA ? sa + sw128_index(16 * ks, 0) : sa + sw128_index(0, 16 * ks));
    const uint64_t db = sw128_desc(kTransB ? sb + sw128_index(16 * ks, n0) : sb + sw128_index(n0, 16 * ks));
    wgmma_m64k16<Elem, kN, kTransA, kTransB>(acc, da, db, ks > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < kN / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int m = 16 * warp + g + (e >= 2 ? 8 : 0), n = n0 + 8 * j + 2 * t + (e & 1);
      d[m * 64 + n] = acc[j][e];
    }
}

// The same with A from registers (wgmma_rs_k_steps): each thread's fragments of A (m, k) = a[m][k] built the way
// the kernels build them, from an accumulator-layout tile (acc_to_a on a [64][64] "accumulator" holding a).
template <bool kTransB>
__device__ void probe_product_rs(const Elem* a, const Elem* sb, float* d, int tid) {
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  float a_acc[8][4];  // a as if it were an m64n64 accumulator: tile j, element e at (16 warp + g (+8), 8 j + 2 t (+1))
  for (int j = 0; j < 8; ++j)
    for (int e = 0; e < 4; ++e)
      a_acc[j][e] = float(a[(16 * warp + g + (e >= 2 ? 8 : 0)) * 64 + 8 * j + 2 * t + (e & 1)]);
  uint32_t frag[4][4];
  for (int ks = 0; ks < 4; ++ks) acc_to_a<Elem>(frag[ks], a_acc, ks, t, [](int) { return 1.f; });
  float acc[8][4];
  wgmma_fence();
  wgmma_rs_k_steps<Elem, kTransB, 4>(
      acc, frag, [&](int ks) { return kTransB ? sb + sw128_index(16 * ks, 0) : sb + sw128_index(0, 16 * ks); }, false);
  wgmma_commit();
  wgmma_wait<0>();
  for (int j = 0; j < 8; ++j)
    for (int e = 0; e < 4; ++e) d[(16 * warp + g + (e >= 2 ? 8 : 0)) * 64 + 8 * j + 2 * t + (e & 1)] = acc[j][e];
}

__global__ void __launch_bounds__(128) wgmma_probe_kernel(ProbeParams p) {
  extern __shared__ __align__(1024) unsigned char smem[];
  Elem* sa = reinterpret_cast<Elem*>(smem);
  Elem* sb = reinterpret_cast<Elem*>(smem + 8192);
  const int tid = threadIdx.x;
  for (int idx = tid; idx < 64 * 64; idx += 128) {
    sa[sw128_index(idx / 64, idx % 64)] = p.a[idx];
    sb[sw128_index(idx / 64, idx % 64)] = p.b[idx];
  }
  fence_async_smem();
  __syncthreads();
  probe_product<64, false, false>(sa, sb, p.d + 0 * 4096, 0, tid);
  probe_product<64, false, true>(sa, sb, p.d + 1 * 4096, 0, tid);
  probe_product<64, true, false>(sa, sb, p.d + 2 * 4096, 0, tid);
  probe_product<64, true, true>(sa, sb, p.d + 3 * 4096, 0, tid);
  probe_product<32, false, false>(sa, sb, p.d + 4 * 4096, 32, tid);
  probe_product<32, false, true>(sa, sb, p.d + 5 * 4096, 32, tid);
  probe_product<32, true, false>(sa, sb, p.d + 6 * 4096, 32, tid);
  probe_product<32, true, true>(sa, sb, p.d + 7 * 4096, 32, tid);
  probe_product_rs<false>(p.a, sb, p.d + 8 * 4096, tid);
  probe_product_rs<true>(p.a, sb, p.d + 9 * 4096, tid);
}

}  // namespace mom_ops

int main() {
  using namespace mom_ops;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<Elem> a(4096), b(4096);
  std::vector<float> af(4096), bf(4096), d(10 * 4096);
  for (int i = 0; i < 4096; ++i) {
    a[i] = Elem(u(rng)), b[i] = Elem(u(rng));
    af[i] = float(a[i]), bf[i] = float(b[i]);
  }
#ifdef MOM_OPS_EMULATE
  Buf ga = galloc(4096 * 2), gb = galloc(4096 * 2), gd = galloc(10 * 4096 * 4);
  std::memcpy(ga.data, a.data(), 4096 * 2), std::memcpy(gb.data, b.data(), 4096 * 2);
  launch(wgmma_probe_kernel, ProbeParams{ga.as<Elem>(), gb.as<Elem>(), gd.as<float>()}, 1, 16384, 128);
  std::memcpy(d.data(), gd.data, 10 * 4096 * 4);
#else
  Elem *ga, *gb;
  float* gd;
  cudaMalloc(&ga, 4096 * 2), cudaMalloc(&gb, 4096 * 2), cudaMalloc(&gd, 10 * 4096 * 4);
  cudaMemcpy(ga, a.data(), 4096 * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(gb, b.data(), 4096 * 2, cudaMemcpyHostToDevice);
  cudaMemset(gd, 0xFF, 10 * 4096 * 4);
  wgmma_probe_kernel<<<1, 128, 16384>>>(ProbeParams{ga, gb, gd});
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) { std::printf("CUDA error: %s\nFAIL\n", cudaGetErrorString(err)); return 1; }
  cudaMemcpy(d.data(), gd, 10 * 4096 * 4, cudaMemcpyDeviceToHost);
#endif
  // The stored tiles' meaning: K-major A (m, k) = a[m][k], M-major A (m, k) = a[k][m]; K-major B (k, n) = b[n][k],
  // N-major B (k, n) = b[k][n].
  bool ok = true;
  for (int combo = 0; combo < 10; ++combo) {
    const bool rs = combo >= 8, ta = !rs && combo % 4 >= 2, tb = combo % 2 == 1, n32 = !rs && combo >= 4;
    double worst = 0.0;
    for (int m = 0; m < 64; ++m)
      for (int n = n32 ? 32 : 0; n < 64; ++n) {
        double ref = 0.0;
        for (int k = 0; k < 64; ++k)
          ref += double(ta ? af[k * 64 + m] : af[m * 64 + k]) * double(tb ? bf[k * 64 + n] : bf[n * 64 + k]);
        const double got = d[combo * 4096 + m * 64 + n];
        worst = std::isfinite(got) ? std::max(worst, std::abs(got - ref)) : 1e30;
      }
    const bool pass = worst < 1e-3;
    ok = ok && pass;
    std::printf("%s A %s, B %s: max |D - ref| = %.3g %s\n", n32 ? "n32 at column 32," : "n64,",
                rs ? "from registers" : ta ? "M-major" : "K-major", tb ? "N-major" : "K-major", worst,
                pass ? "ok" : "FAIL");
  }
  std::printf("%s\n", ok ? "OK" : "FAIL");
  return ok ? 0 : 1;
}
