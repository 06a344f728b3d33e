// Does compute-sanitizer racecheck follow the producer / consumer hand-over of the chains (ChainStages, the ws
// backward chain): consumers read a stage and bar.arrive on its "empty" barrier, the producer bar.syncs on it and
// then writes the stage again? Two stages, 8 rounds, 128 producer threads, 256 consumer threads; the variant (argv[1])
// picks how the producer writes (bit 0: cp.async from global instead of st.shared) and whether the consumers bar.sync
// among themselves between their reads and the arrive (bit 1). The sums check the hand-over itself.
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -Icsrc scripts/racecheck_probe/probe.cu -o /tmp/race_probe
//   for v in 0 1 2 3; do compute-sanitizer --tool racecheck /tmp/race_probe $v | tail -n 2; done
// H200, 2026-12-02: variants 0 and 1 (arrive right after the reads) report 6 hazards with every sum right; 2 and 3
// report 0. So racecheck flags this hand-over although bar.arrive / bar.sync order it (csrc/gdn/NOTES.md, ws chain
// at K = 256).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "common/cp_async.cuh"
#include "common/named_barrier.cuh"

namespace mom_ops {

constexpr int kConsumers = 256, kProducers = 128, kThreads = kConsumers + kProducers, kRounds = 8;
constexpr int kFull = 1, kEmpty = 3, kConsumerSync = 5;

__global__ void __launch_bounds__(kThreads, 1) handover_kernel(const float* src, float* out, int variant) {
  __shared__ __align__(16) float stage[2][kConsumers];
  const int tid = threadIdx.x;
  if (tid >= kConsumers) {  // producer: round i into stage i % 2, once the consumers are done with round i - 2
    const int p = tid - kConsumers;
    for (int i = 0; i < kRounds; ++i) {
      const int s = i % 2;
      if (i >= 2) named_bar_sync(kEmpty + s, kThreads);
      if (variant & 1) {
        if (p < kConsumers / 4) cp_async16(&stage[s][4 * p], src + i * kConsumers + 4 * p, true);
        cp_async_commit();
        cp_async_wait<0>();
      } else {
        stage[s][2 * p] = src[i * kConsumers + 2 * p];
        stage[s][2 * p + 1] = src[i * kConsumers + 2 * p + 1];
      }
      named_bar_arrive(kFull + s, kThreads);
    }
    return;
  }
  float sum = 0.f;
  for (int i = 0; i < kRounds; ++i) {  // consumer: read round i, hand its stage back
    const int s = i % 2;
    named_bar_sync(kFull + s, kThreads);
    sum += stage[s][(tid + 37 * i) % kConsumers];  // another thread's element than the one it would write
    if (variant & 2) named_bar_sync(kConsumerSync, kConsumers);
    if (i + 2 < kRounds) named_bar_arrive(kEmpty + s, kThreads);
  }
  out[tid] = sum;
}

}  // namespace mom_ops

int main(int argc, char** argv) {
  using namespace mom_ops;
  const int variant = argc > 1 ? atoi(argv[1]) : 0;
  float host[kRounds * kConsumers], *src, *out;
  for (int e = 0; e < kRounds * kConsumers; ++e) host[e] = float(e % 97);
  cudaMalloc(&src, sizeof(host));
  cudaMalloc(&out, kConsumers * sizeof(float));
  cudaMemcpy(src, host, sizeof(host), cudaMemcpyHostToDevice);
  handover_kernel<<<4, kThreads>>>(src, out, variant);
  float got[kConsumers];
  cudaMemcpy(got, out, sizeof(got), cudaMemcpyDeviceToHost);
  int wrong = 0;
  for (int t = 0; t < kConsumers; ++t) {
    float want = 0.f;
    for (int i = 0; i < kRounds; ++i) want += host[i * kConsumers + (t + 37 * i) % kConsumers];
    wrong += got[t] != want;
  }
  printf("variant %d (%s writes, %s): %d of %d sums wrong: %s\n", variant, variant & 1 ? "cp.async" : "st.shared",
         variant & 2 ? "consumer bar.sync before arrive" : "arrive right after the reads", wrong, kConsumers,
         wrong == 0 && cudaGetLastError() == cudaSuccess ? "OK" : "FAIL");
  return wrong != 0;
}
