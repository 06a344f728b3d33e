// Where a chunk of the CUDA GDN forward (the fused kernel; the warp-specialised one's two timelines) spends its
// time: with MOM_OPS_GDN_PROFILE (a thread reads the clock after each barrier) it prints cycles per phase per chunk,
// for the benchmark shapes (equal cuts); without it, only the kernel times. -DMOM_OPS_GDN_CTAS_PER_SM=1 builds the
// K <= 128 fused kernels for one CTA per SM.
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Icsrc \
//        [-DMOM_OPS_GDN_PROFILE] scripts/gdn_phases.cu -o /tmp/gdn_phases && /tmp/gdn_phases
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/gdn_fwd_ws_kernel.cuh"

using namespace mom_ops;
using bf16 = __nv_bfloat16;
#ifdef MOM_OPS_GDN_PROFILE
constexpr int kPhases = kGdnPhases > kGdnWsPhases ? kGdnPhases : kGdnWsPhases;
#else
constexpr int kPhases = 1;
#endif

__global__ void fill(bf16* x, int64_t n, uint32_t seed) {  // uniform(-1.7, 1.7): variance ~1
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    x[i] = __float2bfloat16((h & 0xffffff) / float(1 << 24) * 3.4f - 1.7f);
  }
}
__global__ void fill_gates(float* g, float* beta, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    g[i] = -0.05f - 1.0f * ((i * 7919) % 97) / 97.f;
    beta[i] = ((i * 104729) % 89) / 89.f;
  }
}

// kWs: the warp-specialised forward (gdn_fwd_ws_kernel.cuh, K = 128, 128-column V-blocks): its aux phases (0-4) and
// its state phases (5-9) are two timelines of the same chunks; kSave: its training variant (with the saves).
template <int kK, int kBV, bool kWs = false, bool kSave = false>
void run(int T, int H, int n) {
  const int D = kK;
  bf16 *q, *k, *v, *o;
  float *g, *beta;
  int* cu;
  unsigned long long* cycles;
  cudaMalloc(&q, sizeof(bf16) * T * H * D), cudaMalloc(&k, sizeof(bf16) * T * H * D);
  cudaMalloc(&v, sizeof(bf16) * T * H * D), cudaMalloc(&o, sizeof(bf16) * T * H * D);
  cudaMalloc(&g, sizeof(float) * T * H), cudaMalloc(&beta, sizeof(float) * T * H);
  cudaMalloc(&cu, sizeof(int) * (n + 1)), cudaMalloc(&cycles, sizeof(unsigned long long) * kPhases);
  fill<<<1024, 256>>>(q, int64_t(T) * H * D, 1), fill<<<1024, 256>>>(k, int64_t(T) * H * D, 2);
  fill<<<1024, 256>>>(v, int64_t(T) * H * D, 3), fill_gates<<<1024, 256>>>(g, beta, int64_t(T) * H);
  std::vector<int> cuh(n + 1);
  for (int i = 0; i <= n; ++i) cuh[i] = int(int64_t(T) * i / n);
  cudaMemcpy(cu, cuh.data(), sizeof(int) * (n + 1), cudaMemcpyHostToDevice);
  GdnFwdParams p{};
  p.q = q, p.k = k, p.v = v, p.g = g, p.beta = beta, p.o = o, p.cu_seqlens = cu, p.cu_int64 = false;
  p.seqlen = T, p.total_rows = T, p.num_seqs = n, p.heads_qk = H, p.heads_v = H, p.dim_v = D;
  p.scale = 1.f / sqrtf(float(D)), p.l2norm = true, p.num_vblocks = D / kBV, p.v_first = false;
#ifdef MOM_OPS_GDN_PROFILE
  p.phase_cycles = cycles;
#endif
  static_assert(!kWs || (kK == 128 && kBV == 128), "the ws kernel: K = 128, 128-column V-blocks");
  static_assert(!kSave || kWs, "the saves: the ws kernel only here");
  void *save_s0 = nullptr, *save_w = nullptr, *save_vn = nullptr, *save_t = nullptr;
  if (kSave) {
    const int64_t slots = T / 64 + n + 1;
    cudaMalloc(&save_s0, sizeof(bf16) * slots * H * D * D), cudaMalloc(&save_w, sizeof(bf16) * T * H * D);
    cudaMalloc(&save_vn, sizeof(bf16) * T * H * D), cudaMalloc(&save_t, sizeof(bf16) * T * H * 64);
    p.save_s0 = save_s0, p.save_w = save_w, p.save_vn = save_vn, p.save_t = save_t;
  }
  const int smem = kWs ? GdnWsSmem<bf16, kSave>::kBytes : GdnSmem<bf16, kK, kBV>::kBytes;
  const int threads = kWs ? kGdnWsThreads : kGdnThreads;
  auto kernel = kWs ? gdn_fwd_ws_kernel<bf16, kSave> : gdn_fwd_kernel<bf16, kK, kBV>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
  int per_sm = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
  const int blocks = n * H * (D / kBV);
  cudaEvent_t t0, t1;
  cudaEventCreate(&t0), cudaEventCreate(&t1);
  for (int rep = 0; rep < 3; ++rep) {
    cudaMemset(cycles, 0, sizeof(unsigned long long) * kPhases);
    cudaEventRecord(t0);
    kernel<<<blocks, threads, smem>>>(p);
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
  }
  float ms = 0;
  cudaEventElapsedTime(&ms, t0, t1);
  unsigned long long c[kPhases];
  cudaMemcpy(c, cycles, sizeof(c), cudaMemcpyDeviceToHost);
  const double chunk_steps = double(blocks) * ((T / n + 63) / 64);
#ifdef MOM_OPS_GDN_PROFILE
  const int phases = kWs ? kGdnWsPhases / 2 : kGdnPhases;  // one timeline
#else
  const int phases = kPhases;
#endif
  double total = 0;
  for (int i = 0; i < phases; ++i) total += c[i] / chunk_steps;
  printf("%s%sT=%d H=%d D=%d n=%d: %.3f ms (%s), %d CTAs of %d B smem, %d CTA/SM; cycles per chunk %.0f:",
         kWs ? "ws " : "", kSave ? "training " : "", T, H, D, n, ms, cudaGetErrorString(cudaGetLastError()), blocks, smem, per_sm, total);
#ifdef MOM_OPS_GDN_PROFILE
  const char* names[kGdnPhases] = {"load", "norm+cumsum", "A,QK", "T solve", "Tw,Tu", "W,U", "WS,Vn", "O", "state"};
  const char* ws_names[kGdnWsPhases] = {"aux: loads in", "norms+KK^T+A", "T solve", "Tb, handover (+W)", "next loads",
                                        "state: wait", "S^T K^T, S^T Q^T", "V_new", "O, S update", "o out"};
  for (int i = 0; i < (kWs ? kGdnWsPhases : kGdnPhases); ++i)
    printf(" | %s %.0f", kWs ? ws_names[i] : names[i], c[i] / chunk_steps);
#endif
  printf("\n");
  cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(o), cudaFree(g), cudaFree(beta), cudaFree(cu), cudaFree(cycles);
  cudaFree(save_s0), cudaFree(save_w), cudaFree(save_vn), cudaFree(save_t);
}

int main() {
  run<128, 128, true>(32768, 16, 32);  // the launch's choice at n32 D128 inference
  run<128, 128, true, true>(32768, 16, 32);  // ... and training
  run<128, 128>(32768, 16, 32);  // the launch's choice at n32 D128 (one CTA per SM, double-buffered loads)
  run<128, 64>(32768, 16, 32);
  run<128, 64>(32768, 16, 1);
  run<256, 32>(32768, 4, 32);
  run<64, 64>(32768, 16, 32);
  run<128, 32>(32768, 16, 32);  // a narrower V-block: more CTAs, the chunk-local work repeated 4x
  return 0;
}
