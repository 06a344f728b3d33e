// Host side of the emulator shared by the forward and backward drivers: the CTA launcher (a fiber per thread,
// forward / reverse / random / random-warp-speed schedules, deadlock and pending cp.async checks), the block's
// shared memory (NaN-poisoned, guard pages past the requested size), guarded, NaN-poisoned global buffers and the
// drivers' segments (lengths, cu_seqlens, longest-first order).
#pragma once
#include <cuda_runtime.h>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>
// The kernels' `extern __shared__ smem[]` (declared in namespace mom_ops) resolves to this array.
namespace mom_ops { alignas(4096) unsigned char smem[240 * 1024]; }
constexpr size_t kSmemMax = 240 * 1024;

// ---- launcher
static std::function<void()> g_call;
static void tramp() { g_call(); emu::g_cur->done = true; }
static std::vector<emu::Fiber> g_fibers(512);
static uint64_t g_seed = getenv("EMU_SEED") ? std::atoll(getenv("EMU_SEED")) : 1;
template <class P>
void launch(void (*kernel)(P), const P& p, int64_t blocks, int smem_bytes, int threads = 256) {
  if (size_t(smem_bytes) > kSmemMax) EMU_FAIL("smem %d too big", smem_bytes);
  if (threads % 32 != 0 || threads > int(g_fibers.size())) EMU_FAIL("%d threads per block", threads);
  const int warps = threads / 32;
  const size_t prot = (size_t(smem_bytes) + 4095) / 4096 * 4096;
  mprotect(mom_ops::smem, kSmemMax, PROT_READ | PROT_WRITE);
  if (prot < kSmemMax) mprotect(mom_ops::smem + prot, kSmemMax - prot, PROT_NONE);
  emu::g_smem_lo = mom_ops::smem, emu::g_smem_hi = mom_ops::smem + smem_bytes;
  std::mt19937 rng(g_seed++);
  for (auto& f : g_fibers)
    if (!f.stack) f.stack = static_cast<char*>(std::malloc(512 * 1024));
  emu::g_grid = emu::Dim3{unsigned(blocks), 1, 1};
  for (int64_t b = 0; b < blocks; ++b) {
    std::memset(mom_ops::smem, 0xFF, prot);
    emu::g_block = emu::Dim3{unsigned(b), 0, 0};
    for (auto& w : emu::g_warps) w.bar = emu::Bar{32};
    emu::g_cta_bar = emu::Bar{threads};
    for (auto& nb : emu::g_named) nb = emu::Bar{0};
    emu::g_mbarriers.clear();
    g_call = [&] { kernel(p); };
    for (int t = 0; t < threads; ++t) {
      auto& f = g_fibers[t];
      f.done = false, f.open.clear(), f.groups.clear();
      f.tid = emu::Dim3{unsigned(t), 0, 0};
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack, f.ctx.uc_stack.ss_size = 512 * 1024, f.ctx.uc_link = &emu::g_sched;
      makecontext(&f.ctx, tramp, 0);
    }
    std::vector<int> order(threads);
    std::iota(order.begin(), order.end(), 0);
    if (emu::g_order == 1) std::reverse(order.begin(), order.end());
    int live = threads;
    float speed[16];
    std::uniform_real_distribution<float> u01(0.f, 1.f);
    for (auto& x : speed) x = 0.05f + 0.95f * u01(rng);
    bool full = true;
    while (live > 0) {
      if (emu::g_order >= 2) std::shuffle(order.begin(), order.end(), rng);
      bool run_warp[16];
      for (int w = 0; w < warps; ++w) run_warp[w] = full || emu::g_order != 3 || u01(rng) < speed[w];
      const uint64_t prog = emu::g_progress;
      int fin = 0;
      for (int i : order) {
        auto& f = g_fibers[i];
        if (f.done || !run_warp[i / 32]) continue;
        emu::g_cur = &f;
        swapcontext(&emu::g_sched, &f.ctx);
        if (f.done) --live, ++fin;
      }
      const bool stuck = live > 0 && fin == 0 && emu::g_progress == prog;
      if (!full || !stuck) { full = stuck; continue; }
      if (stuck) EMU_FAIL("deadlock in block %lld (%d threads left)", (long long)b, live);
    }
    if (emu::g_cta_bar.arrived != 0) EMU_FAIL("block %lld ended with %d threads in a barrier", (long long)b, emu::g_cta_bar.arrived);
    for (int id = 1; id < 16; ++id)
      if (emu::g_named[id].arrived != 0) EMU_FAIL("block %lld ended with %d arrivals at named barrier %d", (long long)b, emu::g_named[id].arrived, id);
    for (int t = 0; t < threads; ++t)
      if (!g_fibers[t].open.empty() || !g_fibers[t].groups.empty()) EMU_FAIL("block %lld: thread %d ended with cp.async pending", (long long)b, t);
    for (auto& [bar, m] : emu::g_mbarriers)
      if (!m.landings.empty() || m.tx != 0) EMU_FAIL("block %lld ended with TMA loads pending on mbarrier %p", (long long)b, bar);
  }
  mprotect(mom_ops::smem, kSmemMax, PROT_READ | PROT_WRITE);
}

// EMU_CHAIN_BV=16 / 32: the split chains with narrow V-blocks (as for few sequences), else 64 columns.
inline int emu_chain_bv() {
  const char* bv = std::getenv("EMU_CHAIN_BV");
  return bv == nullptr ? 64 : std::atoi(bv);
}

// EMU_G_MASKED_ROWS="r,r,...": g of those rows (every value head) -> -inf, -FLT_MAX, -1e9 in turn: masked decay
// steps (a state reset), which the kernels read through gdn_floor_g (gdn/g_floor.cuh); the references take them as
// they are.
inline void emu_mask_g_rows(float* g, int64_t rows, int heads_v) {
  const char* spec = std::getenv("EMU_G_MASKED_ROWS");
  const float values[3] = {-INFINITY, -FLT_MAX, -1e9f};
  for (int i = 0; spec != nullptr && *spec != '\0'; ++i) {
    char* end;
    const long long r = std::strtoll(spec, &end, 10);
    if (end == spec) EMU_FAIL("EMU_G_MASKED_ROWS: rows separated by commas, got %s", spec);
    if (r < 0 || r >= rows) EMU_FAIL("EMU_G_MASKED_ROWS: row %lld outside [0, %lld)", r, (long long)rows);
    for (int hv = 0; hv < heads_v; ++hv) g[r * heads_v + hv] = values[i % 3];
    spec = *end == ',' ? end + 1 : end;
  }
}

// ---- guarded global buffers
struct Buf {
  char* data = nullptr;
  size_t bytes = 0;
  template <class X> X* as() const { return reinterpret_cast<X*>(data); }
};
static Buf galloc(size_t bytes) {
  const size_t rb = (bytes + 15) / 16 * 16;
  const size_t pages = (rb + 4095) / 4096 + 2;
  char* base = static_cast<char*>(mmap(nullptr, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  std::memset(base, 0xFF, pages * 4096);
  mprotect(base + (pages - 1) * 4096, 4096, PROT_NONE);
  Buf b{base + (pages - 1) * 4096 - rb, bytes};
  emu::g_global_ranges.push_back({b.data, b.data + bytes});
  return b;
}
static void poison(Buf& b) { std::memset(b.data, 0xFF, b.bytes); }

// ---- the drivers' segments
// From argv[first..]: one "B:T" (no cu_seqlens: B sequences of T rows) or the segment lengths (cu_seqlens, with
// `tail` rows past the last segment).
struct Segments {
  std::vector<int64_t> lengths, cu;  // cu: the N + 1 offsets
  int64_t B = 1, Tlen = 0, rows = 0;  // with cu_seqlens, Tlen = rows
  bool use_cu = true;
  int N = 0;
};
static Segments parse_segments(int argc, char** argv, int first, int tail) {
  Segments s;
  const std::string arg = argv[first];
  if (arg.find(':') != std::string::npos) {
    s.use_cu = false;
    s.B = std::stoll(arg.substr(0, arg.find(':')));
    s.Tlen = std::stoll(arg.substr(arg.find(':') + 1));
    for (int i = 0; i < s.B; ++i) s.lengths.push_back(s.Tlen);
  } else {
    for (int i = first; i < argc; ++i) s.lengths.push_back(std::atoll(argv[i]));
  }
  s.N = int(s.lengths.size());
  s.cu.assign(s.N + 1, 0);
  for (int i = 0; i < s.N; ++i) s.cu[i + 1] = s.cu[i] + s.lengths[i];
  s.rows = s.use_cu ? s.cu[s.N] + tail : s.B * s.Tlen;
  if (s.use_cu) s.Tlen = s.rows;
  return s;
}
// cu_seqlens (int64 or int32) in a guarded buffer.
static Buf cu_buffer(const Segments& s, bool cu64) {
  Buf b = galloc((s.N + 1) * (cu64 ? 8 : 4));
  for (int i = 0; i <= s.N; ++i) {
    if (cu64) b.as<int64_t>()[i] = s.cu[i]; else b.as<int>()[i] = int(s.cu[i]);
  }
  return b;
}
// The sequences longest first (ties by index), as longest_first_order.
static Buf longest_first(const Segments& s) {
  Buf b = galloc(std::max(s.N, 1) * 4);
  for (int i = 0; i < s.N; ++i) {
    int rank = 0;
    for (int j = 0; j < s.N; ++j) rank += s.lengths[j] > s.lengths[i] || (s.lengths[j] == s.lengths[i] && j < i);
    b.as<int>()[rank] = i;
  }
  return b;
}
