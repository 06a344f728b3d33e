// CPU implementation of mom_decode_step: one gated-delta step per (token, slot), in place in the pool.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <set>
#include <vector>

#include "decode/decode_checks.h"

namespace mom_ops {
namespace {

at::Tensor mom_decode_step_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                               const at::Tensor& beta, const at::Tensor& weights, const at::Tensor& slots,
                               at::Tensor& state_pool, double scale, bool use_qk_l2norm, bool state_v_first) {
  const DecodeDims d = check_decode_args(q, k, v, g, beta, weights, slots, state_pool, state_v_first);
  const at::Tensor slot = slots.to(at::kLong).contiguous();
  const int64_t* sl = slot.data_ptr<int64_t>();
  std::set<int64_t> seen;
  for (int64_t i = 0; i < slot.numel(); ++i) {
    if (sl[i] < 0) continue;
    TORCH_CHECK_VALUE(sl[i] < d.pool, "slots[", i / d.slots, ", ", i % d.slots, "] = ", sl[i],
                      " is out of range for state_pool with ", d.pool, " rows");
    TORCH_CHECK_VALUE(seen.insert(sl[i]).second, "slots must not repeat a pool row within one step, row ", sl[i],
                      " appears twice");
  }
  auto l2n = [&](const at::Tensor& x) {
    at::Tensor xf = x.to(at::kFloat);
    return (use_qk_l2norm ? xf * at::rsqrt(xf.square().sum(-1, true) + 1e-6) : xf).contiguous();
  };
  const at::Tensor qf = l2n(q), kf = l2n(k);
  const at::Tensor vf = v.to(at::kFloat).contiguous(), gf = g.to(at::kFloat).contiguous();
  const at::Tensor bf = beta.to(at::kFloat).contiguous(), wf = weights.contiguous();
  at::Tensor out = at::zeros({d.tokens, d.heads_v, d.dim_v}, q.options().dtype(at::kFloat));
  const int64_t dk = d.dim_k, dv = d.dim_v, group = d.heads_v / d.heads_qk;
  float* pool = state_pool.data_ptr<float>();
  // S[i][j] of a [K, V] state stored in either layout.
  auto at_ = [&](float* S, int64_t i, int64_t j) -> float& { return state_v_first ? S[j * dk + i] : S[i * dv + j]; };
  std::vector<float> u(dv);
  for (int64_t n = 0; n < d.tokens; ++n) {
    for (int64_t s = 0; s < d.slots; ++s) {
      if (sl[n * d.slots + s] < 0) continue;
      for (int64_t hv = 0; hv < d.heads_v; ++hv) {
        const int64_t h = hv / group;
        float* S = pool + (sl[n * d.slots + s] * d.heads_v + hv) * dk * dv;
        const int64_t q_row = d.q_per_slot ? n * d.slots + s : n;
        const float* qt = qf.data_ptr<float>() + (q_row * d.heads_qk + h) * dk;
        const float* kt = kf.data_ptr<float>() + ((n * d.slots + s) * d.heads_qk + h) * dk;
        const float* vt = vf.data_ptr<float>() + ((n * d.slots + s) * d.heads_v + hv) * dv;
        const float decay = std::exp(gf.data_ptr<float>()[(n * d.slots + s) * d.heads_v + hv]);
        const float bt = bf.data_ptr<float>()[(n * d.slots + s) * d.heads_v + hv];
        for (int64_t j = 0; j < dv; ++j) {
          float pred = 0.f;
          for (int64_t i = 0; i < dk; ++i) pred += decay * at_(S, i, j) * kt[i];
          u[j] = bt * (vt[j] - pred);
        }
        float* ot = out.data_ptr<float>() + (n * d.heads_v + hv) * dv;
        const float w = wf.data_ptr<float>()[n * d.slots + s];
        for (int64_t j = 0; j < dv; ++j) {
          float acc = 0.f;
          for (int64_t i = 0; i < dk; ++i) {
            float& sij = at_(S, i, j);
            sij = decay * sij + kt[i] * u[j];
            acc += sij * qt[i];
          }
          ot[j] += w * float(scale) * acc;
        }
      }
    }
  }
  return out.to(q.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CPU, m) { m.impl("mom_decode_step", &mom_decode_step_cpu); }

}  // namespace mom_ops
