// CPU emulation of the gdn backward: the fused forward rerun (kSave, as gdn_bwd_cuda.cu runs it: no o, no ht), then
// gdn_bwd_chain_kernel (the forward's V-block KBV) and gdn_bwd_grads_kernel (32 columns at K = 256, else 64), launched
// as gdn_bwd_chain.cu / gdn_bwd_grads.cu do. Checks here: every gradient element of a sequence row written and
// finite, rows outside the sequences left alone (still poison), and with a non-default schedule (order != 0 or
// eager copies) the backward run twice (forward order first) and compared bit for bit. The inputs and gradients
// are dumped to OUTDIR for compare_bwd.py, which checks them against mom_ops's CPU backward in fp64.
// Built per (KK, KBV, BF16) by run_bwd.sh. Args:
//   H HV V l2norm v_first cu_int64 order(0..3) eager(0/1) rows_past_the_end h0(0/1) dht(0/1) OUTDIR lengths...
// lengths: one entry "B:T" means no cu_seqlens (B sequences of T rows).
#include "emu_host.h"
#define __CUDACC__
#include "gdn/scan_params.h"
#undef __CUDACC__
#include "gdn/gdn_fwd_kernel.cuh"
#include "gdn/gdn_bwd_chain_kernel.cuh"
#include "gdn/gdn_bwd_chain_ws_kernel.cuh"
#include "gdn/gdn_bwd_grads_kernel.cuh"
#include "gdn/gdn_bwd_split_kernels.cuh"
#include "gdn/gdn_piece_plan.cuh"
#include "common/tma_host.h"
#include <algorithm>
#include <string>

using namespace mom_ops;
#if BF16
using T = c10::BFloat16;
#else
using T = c10::Half;
#endif
constexpr int kK = KK, kBV = KBV, kGradsBV = KK == 256 ? 32 : 64;

static bool is_poison16(const void* p) { uint16_t u; std::memcpy(&u, p, 2); return u == 0xFFFF; }
static bool is_poison32(const void* p) { uint32_t u; std::memcpy(&u, p, 4); return u == 0xFFFFFFFFu; }

// Raw dump of n fp32 values (16-bit inputs widened exactly) as OUTDIR/name.f32.
static std::string g_outdir;
static void dump(const char* name, const std::vector<float>& x) {
  const std::string path = g_outdir + "/" + name + ".f32";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) EMU_FAIL("cannot write %s", path.c_str());
  std::fwrite(x.data(), 4, x.size(), f);
  std::fclose(f);
}
static std::vector<float> widen16(const Buf& b, int64_t n) {
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(b.as<T>()[i]);
  return x;
}
static std::vector<float> copy32(const Buf& b, int64_t n) { return std::vector<float>(b.as<float>(), b.as<float>() + n); }

// The gradient buffers of one backward run.
struct Grads {
  Buf dq, dk, dv, dg, dbeta, dh0, ds1;
};

// CTAs of the grads kernel (gdn_grads_grid on the GPU: one per SM, each taking every grid-th item, where the
// instance has room to load the next item early): EMU_GRADS_GRID of them (default 3, so that every CTA runs several
// items in turn), or with EMU_GRADS_GRID=0 one per item.
static int64_t grads_grid(int64_t items, bool prefetch_next) {
  const int64_t grid = std::getenv("EMU_GRADS_GRID") != nullptr ? std::atoll(std::getenv("EMU_GRADS_GRID")) : 3;
  return grid > 0 && prefetch_next ? std::min(items, grid) : items;
}

int main(int argc, char** argv) {
  if (argc < 14) { std::fprintf(stderr, "args: see bwd_driver.cpp\n"); return 2; }
  const int H = std::atoi(argv[1]), HV = std::atoi(argv[2]), V = std::atoi(argv[3]);
  const bool l2norm = std::atoi(argv[4]), v_first = std::atoi(argv[5]), cu64 = std::atoi(argv[6]);
  const int order_mode = std::atoi(argv[7]);
  const bool eager = std::atoi(argv[8]);
  const int tail = std::atoi(argv[9]);
  const bool use_h0 = std::atoi(argv[10]), use_dht = std::atoi(argv[11]);
  g_outdir = argv[12];
  const Segments seg = parse_segments(argc, argv, 13, tail);
  const std::vector<int64_t>& cu = seg.cu;
  const int64_t B = seg.B, Tlen = seg.Tlen, rows = seg.rows;
  const bool use_cu = seg.use_cu;
  const int N = seg.N;
  const bool gva = HV != H;
  std::printf("bwd K=%d BV=%d gradsBV=%d %s H=%d HV=%d V=%d l2=%d vfirst=%d cu=%s rows=%lld N=%d order=%d eager=%d "
              "h0=%d dht=%d\n", kK, kBV, kGradsBV, BF16 ? "bf16" : "fp16", H, HV, V, int(l2norm), int(v_first),
              use_cu ? (cu64 ? "i64" : "i32") : "none", (long long)rows, N, order_mode, int(eager), int(use_h0),
              int(use_dht));
  if (V % kBV != 0 || V % kGradsBV != 0) EMU_FAIL("V = %d must be a multiple of %d and %d", V, kBV, kGradsBV);

  // ---- inputs (the forward driver's distributions) and upstream gradients
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  const int64_t state_elems = int64_t(N) * HV * kK * V;
  Buf q = galloc(rows * H * kK * 2), k = galloc(rows * H * kK * 2), v = galloc(rows * HV * V * 2);
  Buf g = galloc(rows * HV * 4), beta = galloc(rows * HV * 4), h0 = galloc(state_elems * 4);
  Buf dout = galloc(rows * HV * V * 2), dht = galloc(state_elems * 4);
  const float kscale = l2norm ? 1.f : 1.f / std::sqrt(float(kK));
  for (int64_t i = 0; i < rows * H * kK; ++i) q.as<T>()[i] = T(nd(rng) * kscale), k.as<T>()[i] = T(nd(rng) * kscale);
  for (int64_t i = 0; i < rows * HV * V; ++i) v.as<T>()[i] = T(nd(rng));
  // EMU_G_SCALE scales g (slower decays: longer warm-ups for the pieces below)
  const float g_scale = std::getenv("EMU_G_SCALE") != nullptr ? float(std::atof(std::getenv("EMU_G_SCALE"))) : 1.f;
  for (int64_t i = 0; i < rows * HV; ++i)
    g.as<float>()[i] = g_scale * (-0.02f - 0.3f * ud(rng)), beta.as<float>()[i] = 0.05f + 0.9f * ud(rng);
  emu_mask_g_rows(g.as<float>(), rows, HV);
  for (int64_t i = 0; i < state_elems; ++i) h0.as<float>()[i] = 0.3f * nd(rng);
  for (int64_t i = 0; i < rows * HV * V; ++i) dout.as<T>()[i] = T(nd(rng));
  for (int64_t i = 0; i < state_elems; ++i) dht.as<float>()[i] = 0.3f * nd(rng);
  Buf cub = cu_buffer(seg, cu64);
  Buf order = longest_first(seg);  // longest first, as longest_first_order
  const bool use_order = use_cu && N > 1;
  const int64_t slots = chunk_slots(rows, N);

  ScanParams sp{};
  sp.q = q.data, sp.k = k.data, sp.v = v.data, sp.g = g.as<float>(), sp.beta = beta.as<float>();
  sp.h0 = use_h0 ? h0.as<float>() : nullptr, sp.ht = nullptr, sp.o = nullptr;
  sp.cu_seqlens = use_cu ? cub.data : nullptr, sp.cu_int64 = cu64;
  sp.seqlen = use_cu ? rows : Tlen, sp.total_rows = rows, sp.num_seqs = N, sp.heads_qk = H, sp.heads_v = HV, sp.dim_v = V;
  sp.scale = 1.f / std::sqrt(float(kK)), sp.l2norm = l2norm;

  // ---- forward rerun with saves (forward order, lazy copies: its own checks are run.sh's)
  Buf s0 = galloc(slots * HV * kK * V * 2), w = galloc(rows * HV * kK * 2), vn = galloc(rows * HV * V * 2);
  Buf tt = galloc(rows * HV * kGdnChunk * 2);
  {
    GdnFwdParams fp{};
    static_cast<ScanParams&>(fp) = sp;
    fp.num_vblocks = V / kBV, fp.v_first = v_first, fp.seq_order = use_order ? order.as<int>() : nullptr;
    fp.save_s0 = s0.data, fp.save_w = w.data, fp.save_vn = vn.data, fp.save_t = tt.data;
    emu::g_order = 0, emu::g_eager = false;
    launch(gdn_fwd_kernel<T, kK, kBV, true>, fp, int64_t(N) * HV * (V / kBV), GdnSmem<T, kK, kBV>::kBytes);
  }

  // ---- backward: chain (EMU_BWD_SPLIT=1: the split chain's prep and chain kernels; 16 or 32 columns at K = 256)
  // then grads, into fresh poisoned buffers
  const bool split_chain = std::getenv("EMU_BWD_SPLIT") != nullptr && std::string(std::getenv("EMU_BWD_SPLIT")) == "1";
  if (split_chain && V % 64 != 0) EMU_FAIL("the split chain needs V a multiple of 64, got %d", V);
  if (split_chain) std::printf("  split backward chain\n");
  // EMU_BWD_WS=1: the warp-specialised chain (K = 128 or 256, V a multiple of 128)
  const bool ws_chain = std::getenv("EMU_BWD_WS") != nullptr && std::string(std::getenv("EMU_BWD_WS")) == "1";
  if (ws_chain && ((kK != 128 && kK != 256) || V % 128 != 0)) EMU_FAIL("the ws chain needs K = 128 or 256 and V a multiple of 128");
  if (ws_chain) std::printf("  warp-specialised backward chain\n");
  Buf pdo = galloc(rows * HV * V * 4), doq = galloc(rows * HV * V * 2), g_rk = galloc(slots * HV * 2 * 64 * 4);
  // EMU_BWD_PIECES=<chunks> (with the split chain; K = 128, V % 128 == 0, l2norm): the chain in pieces as
  // gdn_bwd_cuda.cu runs it (the ws chain the cut heads, piece by piece; odd heads forced onto the split chain), the
  // plan checked against the rule on the host
  const int piece_chunks = std::getenv("EMU_BWD_PIECES") != nullptr ? std::atoi(std::getenv("EMU_BWD_PIECES")) : 0;
  // EMU_PIECE_WARMUP: the warm-ups' bound (gdn_piece_size; default 16, past 16 the plan loads in batches)
  const int max_warmup = std::getenv("EMU_PIECE_WARMUP") != nullptr ? std::atoi(std::getenv("EMU_PIECE_WARMUP"))
                                                                    : kPieceMaxWarmup;
  const int64_t slots_p = piece_chunks > 0 ? piece_slots(rows, N, piece_chunks) : 0;
  Buf plan = galloc(size_t(slots_p * HV + int64_t(N) * HV + kPieceCounters) * 4);
  int* plan_start = plan.as<int>();
  int* plan_missing = plan_start + slots_p * HV;
  int* plan_counters = plan_missing + int64_t(N) * HV;
  int plan_fails = 0;
  if (piece_chunks > 0) {
    if (!split_chain || kK != 128 || V % 128 != 0 || !l2norm) EMU_FAIL("EMU_BWD_PIECES needs EMU_BWD_SPLIT=1, K = V = 128k, l2norm");
    std::memset(plan_missing, 0, size_t(N * HV + kPieceCounters) * 4);  // (gdn_bwd_cuda.cu: cudaMemsetAsync)
    launch(gdn_piece_plan_kernel,
           PiecePlanParams{sp, plan_start, plan_missing, plan_counters + kAnyMissing, piece_chunks, max_warmup,
                           /*backward=*/true},
           slots_p, kPiecePlanSmem, kPiecePlanThreads);
    int truncated = 0, cut = 0;
    for (int s = 0; s < N; ++s)  // the rule again on the host (sums in double), warm-ups after each piece
      for (int hv = 0; hv < HV; ++hv) {
        const int nc = int((cu[s + 1] - cu[s] + 63) / 64), pieces = std::max(1, (nc + piece_chunks - 1) / piece_chunks);
        bool all = true;
        for (int piece = 0; piece < pieces; ++piece) {
          const int last = std::min(nc, (piece + 1) * piece_chunks);
          int stop = last == nc ? nc : -1;
          double total = 0;
          for (int w = 0; stop == -1 && w < std::min(max_warmup, nc - last); ++w) {
            bool beta_ok = true;
            for (int r = 0; r < 64; ++r) {
              const int64_t row = cu[s] + int64_t(last + w) * 64 + r;
              if (row >= cu[s + 1]) break;
              total += g.as<float>()[row * HV + hv];
              const float b = beta.as<float>()[row * HV + hv];
              beta_ok = beta_ok && b >= 0.f && b <= 2.f;
            }
            if (!beta_ok) break;
            if (total <= kPieceLogEps) stop = last + w + 1;
          }
          if (stop == -1 && nc - last <= max_warmup) stop = nc;
          all = all && stop != -1;
          plan_fails += plan_start[(cu[s] / (64 * piece_chunks) + s + piece) * HV + hv] != stop;
          truncated += stop != -1 && stop < nc;
        }
        plan_fails += (plan_missing[s * HV + hv] != 0) != !all;
        if (hv % 2 == 1) plan_missing[s * HV + hv] = plan_counters[kAnyMissing] = 1;  // odd heads: the split chain's
        cut += plan_missing[s * HV + hv] == 0;
      }
    std::printf("  backward pieces of %d chunks: plan %d mismatches vs the host, %d pieces from a warm-up, %d heads cut\n",
                piece_chunks, plan_fails, truncated, cut);
  }
  auto run_bwd = [&](int mode, bool eager_copies) {
    Grads r;
    const size_t qk_bytes = gva ? rows * HV * kK * 4 : rows * H * kK * 2;
    r.dq = galloc(qk_bytes), r.dk = galloc(qk_bytes), r.dv = galloc(rows * HV * V * 2);
    r.dg = galloc(rows * HV * 4), r.dbeta = galloc(rows * HV * 4), r.dh0 = galloc(state_elems * 4);
    r.ds1 = galloc(slots * HV * kK * V * 2);
    GdnBwdParams bp{};
    static_cast<ScanParams&>(bp) = sp;
    bp.dout = dout.data, bp.dht = use_dht ? dht.as<float>() : nullptr, bp.dh0 = use_h0 ? r.dh0.as<float>() : nullptr;
    bp.s0 = s0.data, bp.w = w.data, bp.vn = vn.data, bp.t = tt.data, bp.ds1 = r.ds1.data;
    bp.num_vblocks = V / kBV, bp.v_first = v_first, bp.seq_order = use_order ? order.as<int>() : nullptr;
    bp.dq = r.dq.data, bp.dk = r.dk.data, bp.dqk_per_value_head = gva, bp.dv = r.dv.data;
    bp.dg = r.dg.as<float>(), bp.dbeta = r.dbeta.as<float>();
    emu::g_order = mode, emu::g_eager = eager_copies;
    if (split_chain) {
      GdnBwdSplitParams sb{};
      static_cast<GdnBwdParams&>(sb) = bp;
      sb.pdo = pdo.as<float>(), sb.doq = doq.data, sb.g_rk = g_rk.as<float>();
      // (q,) k and W by TMA, as gdn_bwd_cuda.cu sets it (EMU_CHAIN_TMA=0: by cp.async)
      sb.chain_tma = !(std::getenv("EMU_CHAIN_TMA") && std::atoi(std::getenv("EMU_CHAIN_TMA")) == 0) &&
                     tensor_map_3d(&sb.q_map, sb.q, BF16, kK, H, rows, kK, H * kK, 64, 64) &&
                     tensor_map_3d(&sb.k_map, sb.k, BF16, kK, H, rows, kK, H * kK, 64, 64) &&
                     tensor_map_3d(&sb.w_map, sb.w, BF16, kK, HV, rows, kK, HV * kK, 64, 64);
#if KK == 128
      if (piece_chunks > 0) {
        sb.pieces = ScanPieces{plan_start, plan_missing, piece_chunks, plan_counters};
        GdnBwdParams wp = sb;
        wp.num_vblocks = V / 128, wp.ws_qs_in_state = true;
        launch(gdn_bwd_chain_ws_kernel<T, 128, true>, wp, slots_p * HV * (V / 128), GdnBwdWsSmem<T, 128>::kBytes,
               kBwdWsThreads);
      }
#endif
      launch(gdn_bwd_prep_kernel<T, kK>, sb, slots * HV, GdnBwdPrepSmem<T, kK>::kBytes);
      auto chain = [&](auto bv) {
        constexpr int kChainBV = decltype(bv)::value;
        if constexpr (chain_on_wgmma_fits<kK, kChainBV>()) {  // as gdn_bwd_chain.cu
          if (gdn_chain_on_wgmma()) {
            std::printf("  backward split chain on wgmma, %d-column V-blocks\n", kChainBV);
            launch(gdn_bwd_chain_split_wgmma_kernel<T, kK, kChainBV>, sb, int64_t(N) * HV * (V / kChainBV),
                   GdnBwdChainSplitSmem<T, kK, kChainBV, true>::kBytes, ChainStages::kThreads);
            return;
          }
        }
        launch(gdn_bwd_chain_split_kernel<T, kK, kChainBV>, sb, int64_t(N) * HV * (V / kChainBV),
               GdnBwdChainSplitSmem<T, kK, kChainBV>::kBytes, ChainStages::kThreads);
      };
      const int chain_bv = kK == 256 ? std::min(emu_chain_bv(), 32) : emu_chain_bv();  // as the binding
      if (chain_bv == 16) chain(std::integral_constant<int, 16>());
      else if (chain_bv == 32) chain(std::integral_constant<int, 32>());
#if KK <= 128
      else chain(std::integral_constant<int, 64>());
#endif
    } else if (ws_chain) {
      GdnBwdParams wp = bp;
      wp.num_vblocks = V / 128;
      const char* qs = std::getenv("EMU_WS_QS");  // aux / state; default gdn_bwd_cuda.cu's (state at K = 128)
      wp.ws_qs_in_state = qs != nullptr ? std::string(qs) == "state" : kK == 128;
#if KK == 128 || KK == 256
      launch(gdn_bwd_chain_ws_kernel<T, kK>, wp, int64_t(N) * HV * (V / 128), GdnBwdWsSmem<T, kK>::kBytes,
             kBwdWsThreads);
#endif
    } else {
      launch(gdn_bwd_chain_kernel<T, kK, kBV>, bp, int64_t(N) * HV * (V / kBV), GdnChainSmem<T, kK, kBV>::kBytes);
    }
    // the grads kernel as gdn_bwd_grads.cu picks it (gdn_grads_exact_ends)
    auto grads = [&](auto exact_ends) {
      constexpr bool kExactEnds = decltype(exact_ends)::value;
      using GL = GdnGradsSmem<T, kK, kGradsBV, kExactEnds>;
      launch(gdn_bwd_grads_kernel<T, kK, kGradsBV, kExactEnds>, bp, grads_grid(slots * HV, GL::kPrefetchNext),
             GL::kBytes, GL::kWarps * 32);
    };
    if (gdn_grads_exact_ends(kK, bp)) grads(std::true_type());
    else grads(std::false_type());
    return r;
  };
  const Grads g1 = run_bwd(0, false);
  int fails = plan_fails != 0;

  // ---- coverage: sequence rows written and finite, the other rows untouched
  std::vector<char> in_seq(rows, 0);
  for (int s = 0; s < N; ++s) for (int64_t r = cu[s]; r < cu[s + 1]; ++r) in_seq[r] = 1;
  auto coverage = [&](const char* name, const Buf& b, int64_t per_row, int elem_bytes) {
    int64_t bad_inside = 0, written_outside = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < per_row; ++j) {
        const char* x = b.data + (r * per_row + j) * elem_bytes;
        const bool poison = elem_bytes == 2 ? is_poison16(x) : is_poison32(x);
        const float val = elem_bytes == 2 ? static_cast<float>(*reinterpret_cast<const T*>(x)) : *reinterpret_cast<const float*>(x);
        if (!in_seq[r]) written_outside += !poison;
        else bad_inside += poison || !std::isfinite(val);
      }
    std::printf("  %-6s unwritten or non-finite in sequences: %lld, written outside: %lld\n", name,
                (long long)bad_inside, (long long)written_outside);
    fails += (bad_inside != 0) + (written_outside != 0);
  };
  const int qk_bytes = gva ? 4 : 2;
  const int64_t qk_per_row = int64_t(gva ? HV : H) * kK;
  coverage("dq", g1.dq, qk_per_row, qk_bytes);
  coverage("dk", g1.dk, qk_per_row, qk_bytes);
  coverage("dv", g1.dv, int64_t(HV) * V, 2);
  coverage("dg", g1.dg, HV, 4);
  coverage("dbeta", g1.dbeta, HV, 4);
  if (use_h0) {
    int64_t bad = 0;
    for (int64_t i = 0; i < state_elems; ++i) bad += !std::isfinite(g1.dh0.as<float>()[i]);
    std::printf("  dh0    non-finite: %lld\n", (long long)bad);
    fails += bad != 0;
  }

  // ---- a second run under another schedule must be bitwise equal (no races, fixed summation order)
  if (order_mode != 0 || eager) {
    const Grads g2 = run_bwd(order_mode, eager);
    auto same = [&](const char* name, const Buf& a, const Buf& b, size_t bytes) {
      const bool eq = std::memcmp(a.data, b.data, bytes) == 0;
      if (!eq) std::printf("  %-6s differs between the two schedules\n", name);
      fails += !eq;
    };
    same("dq", g1.dq, g2.dq, g1.dq.bytes), same("dk", g1.dk, g2.dk, g1.dk.bytes), same("dv", g1.dv, g2.dv, g1.dv.bytes);
    same("dg", g1.dg, g2.dg, g1.dg.bytes), same("dbeta", g1.dbeta, g2.dbeta, g1.dbeta.bytes);
    if (use_h0) same("dh0", g1.dh0, g2.dh0, g1.dh0.bytes);
    std::printf("  schedule %d%s vs forward order: %s\n", order_mode, eager ? " eager" : "", fails ? "see above" : "bitwise equal");
  }

  // ---- dump for compare_bwd.py
  {
    const std::string meta_path = g_outdir + "/meta.txt";
    FILE* f = std::fopen(meta_path.c_str(), "w");
    if (!f) EMU_FAIL("cannot write %s", meta_path.c_str());
    std::fprintf(f, "K %d\nH %d\nHV %d\nV %d\nl2norm %d\nv_first %d\nuse_cu %d\nB %lld\nT %lld\nrows %lld\nh0 %d\ndht %d\n"
                 "dtype %s\ncu", kK, H, HV, V, int(l2norm), int(v_first), int(use_cu), (long long)B, (long long)Tlen,
                 (long long)rows, int(use_h0), int(use_dht), BF16 ? "bf16" : "fp16");
    for (int64_t c : cu) std::fprintf(f, " %lld", (long long)c);
    std::fprintf(f, "\n");
    std::fclose(f);
  }
  dump("q", widen16(q, rows * H * kK)), dump("k", widen16(k, rows * H * kK)), dump("v", widen16(v, rows * HV * V));
  dump("g", copy32(g, rows * HV)), dump("beta", copy32(beta, rows * HV)), dump("h0", copy32(h0, state_elems));
  dump("dout", widen16(dout, rows * HV * V)), dump("dht", copy32(dht, state_elems));
  // Rows outside the sequences hold poison (NaN); the comparison skips them.
  dump("dq", gva ? copy32(g1.dq, rows * qk_per_row) : widen16(g1.dq, rows * qk_per_row));
  dump("dk", gva ? copy32(g1.dk, rows * qk_per_row) : widen16(g1.dk, rows * qk_per_row));
  dump("dv", widen16(g1.dv, rows * HV * V)), dump("dg", copy32(g1.dg, rows * HV)), dump("dbeta", copy32(g1.dbeta, rows * HV));
  if (use_h0) dump("dh0", copy32(g1.dh0, state_elems));
  std::printf("%s\n", fails ? "FAIL" : "OK");
  return fails ? 1 : 0;
}
