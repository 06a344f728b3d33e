#pragma once
#include <ucontext.h>
#include <sys/mman.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <vector>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __grid_constant__
#define __builtin_assume(x) ((void)0)  // (nvcc / clang: a hint for the optimiser only)
#define __shared__
#define __align__(n)

struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct uint4 { uint32_t x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
template <class A> inline A min(A a, A b) { return b < a ? b : a; }
template <class A> inline A max(A a, A b) { return a < b ? b : a; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline uint32_t __float_as_uint(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

#define EMU_FAIL(...) do { std::fprintf(stderr, "EMU FAIL: " __VA_ARGS__); std::fprintf(stderr, "\n"); std::abort(); } while (0)

namespace emu {
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
struct Copy { void* dst; const void* src; bool valid; };
struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  Dim3 tid;
  bool done = false;
  std::vector<Copy> open;
  std::deque<std::vector<Copy>> groups;
};
inline Fiber* g_cur = nullptr;
inline ucontext_t g_sched;
inline Dim3 g_block;
inline Dim3 g_grid;
inline int g_order = 0;     // 0 forward, 1 reverse, 2 random per round
inline bool g_eager = false;  // cp.async copies at issue (else at wait_group)
inline unsigned char* g_smem_lo = nullptr;
inline unsigned char* g_smem_hi = nullptr;
inline uint64_t g_progress = 0;
inline std::vector<std::pair<const char*, const char*>> g_global_ranges;  // valid global memory for cp.async
inline void yield() { swapcontext(&g_cur->ctx, &g_sched); }

struct Bar { int count; int arrived = 0; uint64_t gen = 0; };
// One arrival at b: the arrival that completes a generation releases the waiting threads; the others wait for that
// (wait) or go on after a yield (bar.arrive: the released threads may run before the arriving thread's next step).
// Every arrival and every release counts as progress for the launcher's deadlock check: with random warp speeds a
// full round can consist of threads leaving a generation completed rounds ago and arriving at the next barrier.
inline void bar_arrive(Bar& b, bool wait) {
  const uint64_t g = b.gen;
  ++g_progress;
  if (++b.arrived == b.count) {
    b.arrived = 0;
    ++b.gen;
    yield();
  } else if (wait) {
    while (b.gen == g) yield();
    ++g_progress;
  } else {
    yield();
  }
}
inline void bar_wait(Bar& b) { bar_arrive(b, true); }
struct Warp {
  Bar bar{32};
  int kind[32];
  const void* addr[32];
  uint32_t a[32][4], b[32][2];
  float f[32];
};
inline Warp g_warps[16];
inline Bar g_cta_bar{256};
inline int lane() { return g_cur->tid.x % 32; }
inline Warp& warp() { return g_warps[g_cur->tid.x / 32]; }
inline void enter(Warp& w, int kind) {
  w.kind[lane()] = kind;
  bar_wait(w.bar);
  for (int l = 0; l < 32; ++l)
    if (w.kind[l] != kind) EMU_FAIL("warp %d: divergent collectives %d vs %d", int(g_cur->tid.x / 32), w.kind[l], kind);
}
inline void leave(Warp& w) { bar_wait(w.bar); }
inline bool in_smem(const void* p, int bytes) {
  auto* c = static_cast<const unsigned char*>(p);
  return c >= g_smem_lo && c + bytes <= g_smem_hi;
}
inline bool in_global(const void* p, int bytes) {
  auto* c = static_cast<const char*>(p);
  for (auto& r : g_global_ranges)
    if (c >= r.first && c + bytes <= r.second) return true;
  return false;
}
inline void do_copy(const Copy& c) {
  if (c.valid) std::memcpy(c.dst, c.src, 16); else std::memset(c.dst, 0, 16);
}
template <class T> inline float bits_to_f(uint16_t u) { T t; std::memcpy(&t, &u, 2); return static_cast<float>(t); }

// mbarriers of common/tma.cuh (its shim), by shared-memory address: TMA loads wait in `landings` until a thread
// waits on the barrier. Reset per block by the launcher.
struct TmaLanding { void* dst; std::vector<unsigned char> bytes; };
struct MBarrier {
  uint32_t count = 0, pending = 0;
  int64_t tx = 0;       // bytes expected and not yet landed
  uint64_t phases = 0;  // completed phases
  std::vector<TmaLanding> landings;
};
inline std::map<const void*, MBarrier> g_mbarriers;

// Named barriers of common/named_barrier.cuh (ids 1-15; 0 is __syncthreads), counted per thread, as bar.sync (wait)
// and bar.arrive do. Every arrival yields (bar_arrive), so an arrive issued before the thread's cp.async copies have
// landed is caught: the copies land at its wait_group.
inline Bar g_named[16];
inline void named_barrier(int id, int count, bool wait) {
  if (id <= 0 || id >= 16 || count <= 0 || count % 32 != 0) EMU_FAIL("named barrier %d with count %d", id, count);
  Bar& b = g_named[id];
  if (b.arrived == 0) b.count = count;
  else if (b.count != count) EMU_FAIL("named barrier %d: count %d while %d is pending", id, count, b.count);
  bar_arrive(b, wait);
}
}  // namespace emu

#define threadIdx (::emu::g_cur->tid)
#define blockIdx (::emu::g_block)
#define gridDim (::emu::g_grid)

inline void __syncthreads() { emu::bar_wait(emu::g_cta_bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { auto& w = emu::warp(); emu::enter(w, 3); emu::leave(w); }
inline float __shfl_xor_sync(unsigned, float v, int m) {
  auto& w = emu::warp(); const int l = emu::lane();
  w.f[l] = v; emu::enter(w, 100 + m); const float r = w.f[l ^ m]; emu::leave(w); return r;
}
inline float __shfl_up_sync(unsigned, float v, int d) {
  auto& w = emu::warp(); const int l = emu::lane();
  w.f[l] = v; emu::enter(w, 200 + d); const float r = l >= d ? w.f[l - d] : v; emu::leave(w); return r;
}
inline unsigned __ballot_sync(unsigned, int pred) {
  auto& w = emu::warp(); const int l = emu::lane();
  w.f[l] = pred ? 1.f : 0.f; emu::enter(w, 400); unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= w.f[i] != 0.f ? 1u << i : 0u;
  emu::leave(w); return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
// (fibers switch only at collectives and barriers, so a plain read-modify-write is atomic here)
inline int atomicAdd(int* address, int value) { const int old = *address; *address = old + value; return old; }
inline int __ffs(int x) { return __builtin_ffs(x); }
// broadcast of lane src's int (small ints only: carried as a float, exact below 2^24; the kernels broadcast warp ids)
inline int __shfl_sync(unsigned, int v, int src) {
  auto& w = emu::warp(); const int l = emu::lane();
  w.f[l] = float(v); emu::enter(w, 500 + src); const int r = int(w.f[src]); emu::leave(w); return r;
}
inline float __shfl_down_sync(unsigned, float v, int d) {
  auto& w = emu::warp(); const int l = emu::lane();
  w.f[l] = v; emu::enter(w, 300 + d); const float r = l + d < 32 ? w.f[l + d] : v; emu::leave(w); return r;
}
