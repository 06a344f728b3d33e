// CPU implementation of the gated delta rule: the per-token recurrence in fp32 (forward and backward).
// Per (sequence, value head), with state S [K, V]:
//   S' = exp(g_t) S;  u = beta_t (v_t - S'^T k_t);  S = S' + k_t u^T;  o_t = scale S^T q_t.
// The backward keeps S at every 64th step and recomputes the states of one block at a time.
// Math runs in fp32, or fp64 for fp64 inputs (so gradcheck can check the backward exactly).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/cpu_math.h"

#include <cmath>
#include <vector>

#include "gdn/gdn_checks.h"
#include "gdn/l2norm_backward.h"

namespace mom_ops {
namespace {

constexpr int64_t kCheckpointEvery = 64;

// Token rows [begin, end) of every sequence on the flattened [B * T] axis.
std::vector<std::pair<int64_t, int64_t>> sequence_rows(const GdnDims& d, const std::optional<at::Tensor>& cu_seqlens) {
  std::vector<std::pair<int64_t, int64_t>> rows(d.num_seqs);
  if (cu_seqlens.has_value()) {
    const at::Tensor cu = cu_seqlens->to(at::kLong).contiguous();
    const int64_t* c = cu.data_ptr<int64_t>();
    for (int64_t i = 0; i < d.num_seqs; ++i) rows[i] = {c[i], c[i + 1]};
  } else {
    for (int64_t i = 0; i < d.num_seqs; ++i) rows[i] = {i * d.seqlen, (i + 1) * d.seqlen};
  }
  return rows;
}

// fp32 contiguous copies of the inputs, with q and k l2-normalised when asked.
struct ScanInputs {
  at::Tensor q, k, v, g, beta;  // [B*T, H, K], [B*T, H, K], [B*T, HV, V], [B*T, HV], [B*T, HV]
};

at::Tensor l2norm_last_dim(const at::Tensor& x) { return x * at::rsqrt(x.square().sum(-1, true) + kL2NormEps); }

ScanInputs load_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                       const at::Tensor& beta, bool use_qk_l2norm, const GdnDims& d) {
  const int64_t rows = d.batch * d.seqlen;
  const at::ScalarType t = cpu_math_type(q);
  ScanInputs in;
  in.q = q.to(t).reshape({rows, d.heads_qk, d.dim_k});
  in.k = k.to(t).reshape({rows, d.heads_qk, d.dim_k});
  if (use_qk_l2norm) {
    in.q = l2norm_last_dim(in.q);
    in.k = l2norm_last_dim(in.k);
  }
  in.q = in.q.contiguous();
  in.k = in.k.contiguous();
  in.v = v.to(t).reshape({rows, d.heads_v, d.dim_v}).contiguous();
  in.g = g.to(t).reshape({rows, d.heads_v}).contiguous();
  in.beta = beta.to(t).reshape({rows, d.heads_v}).contiguous();
  return in;
}

// Copies one [K, V] state in or out of a state tensor in either layout.
template <typename T>
void load_state(const T* src, bool v_first, int64_t dk, int64_t dv, T* S) {
  for (int64_t i = 0; i < dk; ++i)
    for (int64_t j = 0; j < dv; ++j) S[i * dv + j] = v_first ? src[j * dk + i] : src[i * dv + j];
}
template <typename T>
void store_state(const T* S, bool v_first, int64_t dk, int64_t dv, T* dst) {
  for (int64_t i = 0; i < dk; ++i)
    for (int64_t j = 0; j < dv; ++j) (v_first ? dst[j * dk + i] : dst[i * dv + j]) = S[i * dv + j];
}

// One step in place: S <- exp(g) S, u = beta (v - S^T k), S <- S + k u^T.
template <typename T>
void step(T* S, const T* kt, const T* vt, T decay, T beta, int64_t dk, int64_t dv, T* u) {
  for (int64_t i = 0; i < dk * dv; ++i) S[i] *= decay;
  for (int64_t j = 0; j < dv; ++j) {
    T pred = 0;
    for (int64_t i = 0; i < dk; ++i) pred += S[i * dv + j] * kt[i];
    u[j] = beta * (vt[j] - pred);
  }
  for (int64_t i = 0; i < dk; ++i)
    for (int64_t j = 0; j < dv; ++j) S[i * dv + j] += kt[i] * u[j];
}

std::tuple<at::Tensor, at::Tensor> gdn_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& g, const at::Tensor& beta, double scale,
                                               const std::optional<at::Tensor>& initial_state, bool output_final_state,
                                               bool use_qk_l2norm, bool state_v_first,
                                               const std::optional<at::Tensor>& cu_seqlens,
                                               const std::optional<at::Tensor>& chunk_indices) {
  const GdnDims d = check_gdn_args(q, k, v, g, beta, initial_state, state_v_first, cu_seqlens, chunk_indices);
  const ScanInputs in = load_inputs(q, k, v, g, beta, use_qk_l2norm, d);
  const auto seqs = sequence_rows(d, cu_seqlens);
  const int64_t dk = d.dim_k, dv = d.dim_v, group = d.heads_v / d.heads_qk;
  const at::ScalarType math = cpu_math_type(q);
  // [B, T, HV, V] from the start: a reshape on return would hand out a view, and autograd refuses in-place edits of
  // an output that is a view (rows are read as (t * HV + hv) * V either way)
  at::Tensor o = at::zeros({d.batch, d.seqlen, d.heads_v, dv}, q.options().dtype(math));
  std::vector<int64_t> state_shape = {d.num_seqs, d.heads_v, state_v_first ? dv : dk, state_v_first ? dk : dv};
  at::Tensor ht = output_final_state ? at::empty(state_shape, o.options()) : at::empty({0}, o.options());
  const at::Tensor h0 = initial_state.has_value() ? initial_state->to(math).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(math, "gdn_fwd_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, d.num_seqs * d.heads_v, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> S(dk * dv), u(dv);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t seq = job / d.heads_v, hv = job % d.heads_v, h = hv / group;
        const int64_t state_off = job * dk * dv;
        if (h0.defined()) {
          load_state(h0.data_ptr<T>() + state_off, state_v_first, dk, dv, S.data());
        } else {
          std::fill(S.begin(), S.end(), T(0));
        }
        for (int64_t t = seqs[seq].first; t < seqs[seq].second; ++t) {
          const T* qt = in.q.data_ptr<T>() + (t * d.heads_qk + h) * dk;
          const T* kt = in.k.data_ptr<T>() + (t * d.heads_qk + h) * dk;
          const T* vt = in.v.data_ptr<T>() + (t * d.heads_v + hv) * dv;
          const T gt = in.g.data_ptr<T>()[t * d.heads_v + hv];
          const T bt = in.beta.data_ptr<T>()[t * d.heads_v + hv];
          step(S.data(), kt, vt, std::exp(gt), bt, dk, dv, u.data());
          T* ot = o.data_ptr<T>() + (t * d.heads_v + hv) * dv;
          for (int64_t j = 0; j < dv; ++j) {
            T acc = T(0);
            for (int64_t i = 0; i < dk; ++i) acc += S[i * dv + j] * qt[i];
            ot[j] = T(scale) * acc;
          }
        }
        if (output_final_state) store_state(S.data(), state_v_first, dk, dv, ht.data_ptr<T>() + state_off);
      }
    });
  });
  return {o.to(q.scalar_type()), ht};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gdn_bwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
    double scale, const std::optional<at::Tensor>& initial_state, const at::Tensor& grad_o,
    const std::optional<at::Tensor>& grad_final_state, bool use_qk_l2norm, bool state_v_first,
    const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& chunk_indices,
    const std::optional<at::Tensor>& /*chunk_states*/, const std::optional<at::Tensor>& /*w*/,
    const std::optional<at::Tensor>& /*v_new*/,
    const std::optional<at::Tensor>& /*t*/) {  // the CPU backward recomputes what the CUDA one saves
  const GdnDims d = check_gdn_args(q, k, v, g, beta, initial_state, state_v_first, cu_seqlens, chunk_indices);
  TORCH_CHECK_VALUE(grad_o.sizes() == v.sizes(), "grad_o must have the shape of v ", v.sizes(), ", got ",
                    grad_o.sizes());
  const int64_t dk = d.dim_k, dv = d.dim_v, group = d.heads_v / d.heads_qk, rows = d.batch * d.seqlen;
  std::vector<int64_t> state_shape = {d.num_seqs, d.heads_v, state_v_first ? dv : dk, state_v_first ? dk : dv};
  if (grad_final_state.has_value()) {
    TORCH_CHECK_VALUE(grad_final_state->sizes() == at::IntArrayRef(state_shape), "grad_final_state must have shape ",
                      at::IntArrayRef(state_shape), ", got ", grad_final_state->sizes());
  }
  const ScanInputs in = load_inputs(q, k, v, g, beta, use_qk_l2norm, d);
  const auto seqs = sequence_rows(d, cu_seqlens);
  const at::ScalarType math = cpu_math_type(q);
  const at::Tensor dout = grad_o.to(math).reshape({rows, d.heads_v, dv}).contiguous();
  const at::Tensor h0 = initial_state.has_value() ? initial_state->to(math).contiguous() : at::Tensor();
  const at::Tensor dht = grad_final_state.has_value() ? grad_final_state->to(math).contiguous() : at::Tensor();

  const auto opts = q.options().dtype(math);
  // in the inputs' shapes (the same row-major layout as [rows, heads, dim]): gradients that are not views
  at::Tensor dq = at::zeros(q.sizes(), opts), dk_ = at::zeros(k.sizes(), opts);
  at::Tensor dv_ = at::zeros(v.sizes(), opts), dg = at::zeros(g.sizes(), opts);
  at::Tensor db = at::zeros(beta.sizes(), opts);
  at::Tensor dh0 = h0.defined() ? at::empty(state_shape, opts) : at::empty({0}, opts);

  AT_DISPATCH_FLOATING_TYPES(math, "gdn_bwd_cpu", [&] {
    using T = scalar_t;
    // One job per (sequence, q/k head): the value heads of a group add into the same dq, dk rows.
    at::parallel_for(0, d.num_seqs * d.heads_qk, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> S(dk * dv), dS(dk * dv), Sd(dk * dv), u(dv), du(dv), dpred(dv), block;
      for (int64_t job = begin; job < end; ++job) {
        const int64_t seq = job / d.heads_qk, h = job % d.heads_qk;
        const int64_t t0 = seqs[seq].first, t1 = std::max(seqs[seq].second, t0);
        for (int64_t hv = h * group; hv < (h + 1) * group; ++hv) {
          const int64_t state_off = (seq * d.heads_v + hv) * dk * dv;
          auto q_at = [&](int64_t t) { return in.q.data_ptr<T>() + (t * d.heads_qk + h) * dk; };
          auto k_at = [&](int64_t t) { return in.k.data_ptr<T>() + (t * d.heads_qk + h) * dk; };
          auto v_at = [&](int64_t t) { return in.v.data_ptr<T>() + (t * d.heads_v + hv) * dv; };
          auto g_at = [&](int64_t t) { return in.g.data_ptr<T>()[t * d.heads_v + hv]; };
          auto b_at = [&](int64_t t) { return in.beta.data_ptr<T>()[t * d.heads_v + hv]; };
          // Forward pass keeping the state before every block of kCheckpointEvery steps.
          const int64_t num_blocks = (t1 - t0 + kCheckpointEvery - 1) / kCheckpointEvery;
          std::vector<T> checkpoints(num_blocks * dk * dv);
          if (h0.defined()) {
            load_state(h0.data_ptr<T>() + state_off, state_v_first, dk, dv, S.data());
          } else {
            std::fill(S.begin(), S.end(), T(0));
          }
          for (int64_t t = t0; t < t1; ++t) {
            if ((t - t0) % kCheckpointEvery == 0)
              std::copy(S.begin(), S.end(), checkpoints.begin() + (t - t0) / kCheckpointEvery * dk * dv);
            step(S.data(), k_at(t), v_at(t), std::exp(g_at(t)), b_at(t), dk, dv, u.data());
          }
          if (dht.defined()) {
            load_state(dht.data_ptr<T>() + state_off, state_v_first, dk, dv, dS.data());
          } else {
            std::fill(dS.begin(), dS.end(), T(0));
          }
          for (int64_t blk = num_blocks - 1; blk >= 0; --blk) {
            const int64_t b0 = t0 + blk * kCheckpointEvery, b1 = std::min(b0 + kCheckpointEvery, t1);
            // block[i] = state after step b0 + i - 1 (block[0] = state before the block).
            block.assign((b1 - b0 + 1) * dk * dv, T(0));
            std::copy(checkpoints.begin() + blk * dk * dv, checkpoints.begin() + (blk + 1) * dk * dv, block.begin());
            for (int64_t t = b0; t < b1; ++t) {
              T* next = block.data() + (t - b0 + 1) * dk * dv;
              std::copy(next - dk * dv, next, next);
              step(next, k_at(t), v_at(t), std::exp(g_at(t)), b_at(t), dk, dv, u.data());
            }
            for (int64_t t = b1 - 1; t >= b0; --t) {
              const T* prev = block.data() + (t - b0) * dk * dv;
              const T* cur = prev + dk * dv;
              const T* qt = q_at(t);
              const T* kt = k_at(t);
              const T* vt = v_at(t);
              const T* dot = dout.data_ptr<T>() + (t * d.heads_v + hv) * dv;
              const T decay = std::exp(g_at(t)), bt = b_at(t);
              T* dqt = dq.data_ptr<T>() + (t * d.heads_qk + h) * dk;
              T* dkt = dk_.data_ptr<T>() + (t * d.heads_qk + h) * dk;
              T* dvt = dv_.data_ptr<T>() + (t * d.heads_v + hv) * dv;
              // o = scale S^T q: dS += scale q do^T; dq += scale S do.
              for (int64_t i = 0; i < dk; ++i) {
                T acc = T(0);
                for (int64_t j = 0; j < dv; ++j) {
                  dS[i * dv + j] += T(scale) * qt[i] * dot[j];
                  acc += cur[i * dv + j] * dot[j];
                }
                dqt[i] += T(scale) * acc;
              }
              // Recompute S' and u of this step.
              for (int64_t i = 0; i < dk * dv; ++i) Sd[i] = decay * prev[i];
              T dbeta = T(0);
              for (int64_t j = 0; j < dv; ++j) {
                T pred = T(0), dkv = T(0);
                for (int64_t i = 0; i < dk; ++i) {
                  pred += Sd[i * dv + j] * kt[i];
                  dkv += dS[i * dv + j] * kt[i];
                }
                u[j] = bt * (vt[j] - pred);
                du[j] = dkv;                 // S = S' + k u^T: du = dS^T k
                dvt[j] += bt * du[j];        // u = beta (v - pred)
                dbeta += du[j] * (vt[j] - pred);
                dpred[j] = -bt * du[j];
              }
              db.data_ptr<T>()[t * d.heads_v + hv] = dbeta;
              // dk = dS u + S' dpred; dS' = dS + k dpred^T; dg = <S', dS'>; dS_prev = decay dS'.
              T dgt = T(0);
              for (int64_t i = 0; i < dk; ++i) {
                T acc = T(0);
                for (int64_t j = 0; j < dv; ++j) {
                  acc += dS[i * dv + j] * u[j] + Sd[i * dv + j] * dpred[j];
                  const T dSd = dS[i * dv + j] + kt[i] * dpred[j];
                  dgt += Sd[i * dv + j] * dSd;
                  dS[i * dv + j] = decay * dSd;
                }
                dkt[i] += acc;
              }
              dg.data_ptr<T>()[t * d.heads_v + hv] = dgt;
            }
          }
          if (h0.defined()) store_state(dS.data(), state_v_first, dk, dv, dh0.data_ptr<T>() + state_off);
        }
      }
    });

  });
  if (use_qk_l2norm) {
    dq = l2norm_backward(q.to(math), dq);
    dk_ = l2norm_backward(k.to(math), dk_);
  }
  return {dq.to(q.scalar_type()), dk_.to(k.scalar_type()), dv_.to(v.scalar_type()), dg.to(g.scalar_type()),
          db.to(beta.scalar_type()), dh0};
}

std::tuple<at::Tensor, at::Tensor> fused_recurrent_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& g,
                                                           const at::Tensor& beta, double scale,
                                                           const std::optional<at::Tensor>& initial_state,
                                                           bool output_final_state, bool use_qk_l2norm,
                                                           bool state_v_first,
                                                           const std::optional<at::Tensor>& cu_seqlens) {
  return gdn_fwd_cpu(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, state_v_first,
                     cu_seqlens, std::nullopt);
}

// The training forward on the CPU: nothing to save (the CPU backward recomputes the states).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gdn_fwd_train_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, const at::Tensor& beta,
    double scale, const std::optional<at::Tensor>& initial_state, bool output_final_state, bool use_qk_l2norm,
    bool state_v_first, const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& chunk_indices) {
  auto [o, ht] = gdn_fwd_cpu(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm,
                             state_v_first, cu_seqlens, chunk_indices);
  return {o, ht, q.new_empty({0}), q.new_empty({0}), q.new_empty({0}), q.new_empty({0})};
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CPU, m) {
  m.impl("chunk_gated_delta_rule_fwd", &gdn_fwd_cpu);
  m.impl("chunk_gated_delta_rule_bwd", &gdn_bwd_cpu);
  m.impl("chunk_gated_delta_rule_fwd_train", &gdn_fwd_train_cpu);
  m.impl("fused_recurrent_gated_delta_rule_fwd", &fused_recurrent_fwd_cpu);
}

}  // namespace mom_ops
