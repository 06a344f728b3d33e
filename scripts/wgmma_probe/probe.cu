// Checks csrc/common/wgmma.cuh: D = A B (64 x 64, K = 64 in four k-steps) with each operand in both roles (K-major and
// MN-major) read from the same kind of 128-byte-swizzled tile, and with A from registers (the fragments acc_to_a makes
// of an accumulator), against a host reference in double. Prints one line per role pair and OK / FAIL; the same
// source runs on the GPU and in the CPU emulator (whose wgmma shim it validates). Then the 64-byte swizzle
// (common/sw64_layout.h, 32-column tiles): D = A B (64 x 32, K = 32 in two k-steps), A K-major, B K-major or N-major,
// n32 and n16 at column 16 (16 rows into a K-major B, 32 bytes into an N-major one's rows):
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

// D = A B over kSteps k-steps of operands described by desc_a(ks), desc_b(ks); this thread's accumulators -> d
// (row-major, ld columns), columns n0 .. n0 + kN - 1.
template <int kN, bool kTransA, bool kTransB, int kSteps, typename DescA, typename DescB>
__device__ void probe_product_by(DescA desc_a, DescB desc_b, float* d, int ld, int n0, int tid) {
  float acc[kN / 8][4];
  for (int j = 0; j < kN / 8; ++j)
    for (int e = 0; e < 4; ++e) acc[j][e] = -1.f;  // overwritten by the first k-step (accumulate = false)
  wgmma_fence();
  for (int ks = 0; ks < kSteps; ++ks) wgmma_m64k16<Elem, kN, kTransA, kTransB>(acc, desc_a(ks), desc_b(ks), ks > 0);
  wgmma_commit();
  wgmma_wait<0>();
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < kN / 8; ++j)
    for (int e = 0; e < 4; ++e) d[(16 * warp + g + (e >= 2 ? 8 : 0)) * ld + n0 + 8 * j + 2 * t + (e & 1)] = acc[j][e];
}

// D = A B with A, B read from the 128-byte-swizzled tiles sa, sb (K = 64 in four k-steps), by m64 x kN instructions
// on columns n0 .. n0 + kN - 1 of D (an n32 B operand starting at column 32 of an N-major tile, or row 32 of a K-major
// one) -> d (row-major [64][64]). K-major: columns 16 ks.. (32 ks bytes in); MN-major: rows 16 ks.. (2 KB ks).
template <int kN, bool kTransA, bool kTransB>
__device__ void probe_product(const Elem* sa, const Elem* sb, float* d, int n0, int tid) {
  probe_product_by<kN, kTransA, kTransB, 4>(
      [&](int ks) { return sw128_desc(kTransA ? sa + sw128_index(16 * ks, 0) : sa + sw128_index(0, 16 * ks)); },
      [&](int ks) { return sw128_desc(kTransB ? sb + sw128_index(16 * ks, n0) : sb + sw128_index(n0, 16 * ks)); }, d,
      64, n0, tid);
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

// The 64-byte swizzle: sa [64 m][32 k], sbk [32 n][32 k] (K-major B), sbn [32 k][32 n] (N-major B), each in
// sw64_index order; D = A B (K = 32 in two k-steps) on columns n0 .. n0 + kN - 1 -> d (row-major [64][32]).
// K-major: columns 16 ks.. (32 ks bytes in); N-major: rows 16 ks.. (1 KB ks).
template <int kN, bool kTransB>
__device__ void probe_product_sw64(const Elem* sa, const Elem* sb, float* d, int n0, int tid) {
  probe_product_by<kN, false, kTransB, 2>(
      [&](int ks) { return sw64_desc(sa + sw64_index(0, 16 * ks)); },
      [&](int ks) { return sw64_desc(kTransB ? sb + sw64_index(16 * ks, n0) : sb + sw64_index(n0, 16 * ks)); }, d, 32,
      n0, tid);
}

struct ProbeSw64Params {
  const Elem *a, *bk, *bn;  // [64][32], [32][32], [32][32] row-major
  float* d;                 // [4][64][32]
};

__global__ void __launch_bounds__(128) wgmma_probe_sw64_kernel(ProbeSw64Params p) {
  extern __shared__ __align__(1024) unsigned char smem[];
  Elem* sa = reinterpret_cast<Elem*>(smem);
  Elem* sbk = reinterpret_cast<Elem*>(smem + 4096);
  Elem* sbn = reinterpret_cast<Elem*>(smem + 6144);
  const int tid = threadIdx.x;
  for (int idx = tid; idx < 64 * 32; idx += 128) sa[sw64_index(idx / 32, idx % 32)] = p.a[idx];
  for (int idx = tid; idx < 32 * 32; idx += 128) {
    sbk[sw64_index(idx / 32, idx % 32)] = p.bk[idx];
    sbn[sw64_index(idx / 32, idx % 32)] = p.bn[idx];
  }
  fence_async_smem();
  __syncthreads();
  probe_product_sw64<32, false>(sa, sbk, p.d + 0 * 2048, 0, tid);
  probe_product_sw64<32, true>(sa, sbn, p.d + 1 * 2048, 0, tid);
  probe_product_sw64<16, false>(sa, sbk, p.d + 2 * 2048, 16, tid);
  probe_product_sw64<16, true>(sa, sbn, p.d + 3 * 2048, 16, tid);
}

}  // namespace mom_ops

// The 64-byte-swizzle products against a host reference; prints one line each, returns whether all match.
static bool check_sw64(std::mt19937& rng) {
  using namespace mom_ops;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<Elem> a(2048), bk(1024), bn(1024);
  std::vector<float> d(4 * 2048);
  for (auto& x : a) x = Elem(u(rng));
  for (auto& x : bk) x = Elem(u(rng));
  for (auto& x : bn) x = Elem(u(rng));
#ifdef MOM_OPS_EMULATE
  Buf ga = galloc(2048 * 2), gbk = galloc(1024 * 2), gbn = galloc(1024 * 2), gd = galloc(4 * 2048 * 4);
  std::memcpy(ga.data, a.data(), 2048 * 2), std::memcpy(gbk.data, bk.data(), 1024 * 2);
  std::memcpy(gbn.data, bn.data(), 1024 * 2);
  launch(wgmma_probe_sw64_kernel, ProbeSw64Params{ga.as<Elem>(), gbk.as<Elem>(), gbn.as<Elem>(), gd.as<float>()}, 1,
         8192, 128);
  std::memcpy(d.data(), gd.data, 4 * 2048 * 4);
#else
  Elem *ga, *gbk, *gbn;
  float* gd;
  cudaMalloc(&ga, 2048 * 2), cudaMalloc(&gbk, 1024 * 2), cudaMalloc(&gbn, 1024 * 2), cudaMalloc(&gd, 4 * 2048 * 4);
  cudaMemcpy(ga, a.data(), 2048 * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(gbk, bk.data(), 1024 * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(gbn, bn.data(), 1024 * 2, cudaMemcpyHostToDevice);
  cudaMemset(gd, 0xFF, 4 * 2048 * 4);
  wgmma_probe_sw64_kernel<<<1, 128, 8192>>>(ProbeSw64Params{ga, gbk, gbn, gd});
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) { std::printf("CUDA error (64-byte swizzle): %s\n", cudaGetErrorString(err)); return false; }
  cudaMemcpy(d.data(), gd, 4 * 2048 * 4, cudaMemcpyDeviceToHost);
#endif
  bool ok = true;
  for (int combo = 0; combo < 4; ++combo) {  // K-major B (k, n) = bk[n][k], N-major B (k, n) = bn[k][n]
    const bool tb = combo % 2 == 1, n16 = combo >= 2;
    double worst = 0.0;
    for (int m = 0; m < 64; ++m)
      for (int n = n16 ? 16 : 0; n < 32; ++n) {
        double ref = 0.0;
        for (int k = 0; k < 32; ++k)
          ref += double(float(a[m * 32 + k])) * double(float(tb ? bn[k * 32 + n] : bk[n * 32 + k]));
        const double got = d[combo * 2048 + m * 32 + n];
        worst = std::isfinite(got) ? std::max(worst, std::abs(got - ref)) : 1e30;
      }
    const bool pass = worst < 1e-3;
    ok = ok && pass;
    std::printf("64-byte swizzle, %s A K-major, B %s: max |D - ref| = %.3g %s\n", n16 ? "n16 at column 16," : "n32,",
                tb ? "N-major" : "K-major", worst, pass ? "ok" : "FAIL");
  }
  return ok;
}

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
  ok = check_sw64(rng) && ok;
  std::printf("%s\n", ok ? "OK" : "FAIL");
  return ok ? 0 : 1;
}
