// The mom_ops operator library: one schema per op. Each family registers its CPU and CUDA kernels with
// TORCH_LIBRARY_IMPL in its own folder; Python adds fake kernels and autograd (mom_ops/_ops.py).
//
// Conventions shared by the schemas (see DESIGN.md §1-2):
//   N tokens, M memories, k = topk slots per token, R = N*k rows of the packed memory-major stream.
//   dst_row[N, k]  int32: row of pair (n, j) in the packed stream, -1 if the token routes nowhere.
//   src_pair[R]    int32: pair index n*k + j of a packed row, -1 for unused rows at the end.
//   Scan tensors are sequence-first [B, T, H, D]; states fp32 [N, HV, K, V] ([N, HV, V, K] if state_v_first).
//   An optional output that was not asked for is returned as an empty tensor.

#include <Python.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

namespace mom_ops {
void add_build_info(PyObject* module);  // build_info.cpp
}

extern "C" {
// The ops register through static initialisers when the library loads; the module itself only carries
// build_info(). Importing mom_ops._C from Python is what loads the library.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) mom_ops::add_build_info(module);
  return module;
}
}

TORCH_LIBRARY(mom_ops, m) {
  // ---- routing ----
  // router_logits [N, M] -> the k largest logits and the softmax over them (fp64, one rounding to fp32),
  // and the memory-major plan.
  // Tokens belong to sequence b: n // (N / batch_size), or by cu_seqlens [B+1] when given.
  m.def(
      "route(Tensor router_logits, int topk, SymInt batch_size, Tensor? cu_seqlens, Tensor? token_mask, "
      "int chunk_size) -> (Tensor weights, Tensor memory_ids, Tensor dst_row, Tensor src_pair, "
      "Tensor seg_cu_seqlens, Tensor chunk_indices)");
  // route's backward: w = softmax over the kept logits, so grad_logits[n, m] = w_j (grad_w_j - sum_i w_i grad_w_i)
  // where m = memory_ids[n, j], 0 for memories not kept (and masked tokens). grad_weights, weights [N, k] fp32
  // (fp64 on CPU), memory_ids [N, k] int32 -> [N, num_memories] in `dtype` (the logits' dtype).
  m.def("route_backward(Tensor grad_weights, Tensor weights, Tensor memory_ids, int num_memories, ScalarType dtype) "
        "-> Tensor");
  // Both index maps of the plan travel with each op (one is the op's, the other its backward's).
  // y[r] = x[src_pair[r] // k] (0 for unused rows).                  x [N, D] -> y [R, D]
  m.def("permute(Tensor x, Tensor dst_row, Tensor src_pair) -> Tensor");
  // x[n] = sum_j w[n, j] * y[dst_row[n, j]] (w = 1 when weights is None). y [R, D] -> x [N, D]
  m.def("unpermute(Tensor y, Tensor dst_row, Tensor src_pair, Tensor? weights) -> Tensor");
  // grad_y[r] = w[p] * grad_x[p // k];  grad_weights[p] = <grad_x[p // k], y[r]>  (p = src_pair[r])
  m.def(
      "unpermute_backward(Tensor grad_x, Tensor y, Tensor dst_row, Tensor src_pair, Tensor? weights, "
      "bool need_grad_weights) -> (Tensor grad_y, Tensor grad_weights)");

  // ---- gated delta rule scan ----
  // q, k [B, T, H, K]; v [B, T, HV, V]; g, beta [B, T, HV]; -> o [B, T, HV, V], final_state (fp32).
  m.def(
      "chunk_gated_delta_rule_fwd(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, float scale, "
      "Tensor? initial_state, bool output_final_state, bool use_qk_l2norm, bool state_v_first, "
      "Tensor? cu_seqlens, Tensor? chunk_indices) -> (Tensor o, Tensor final_state)");
  m.def(
      "chunk_gated_delta_rule_bwd(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, float scale, "
      "Tensor? initial_state, Tensor grad_o, Tensor? grad_final_state, bool use_qk_l2norm, bool state_v_first, "
      "Tensor? cu_seqlens, Tensor? chunk_indices, Tensor? chunk_states=None, Tensor? w=None, Tensor? v_new=None, "
      "Tensor? t=None) "
      "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dg, Tensor dbeta, Tensor dh0)");
  // The forward for training: also returns what the backward reads (CUDA: chunk_states [rows // 64 + N + 1, HV, K,
  // V], w [B * T, HV, K], v_new [B * T, HV, V], t [B * T, HV, 64] (the rows of each chunk's (I + A)^-1) in q's
  // dtype; CPU: empty tensors, its backward recomputes).
  m.def(
      "chunk_gated_delta_rule_fwd_train(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, float scale, "
      "Tensor? initial_state, bool output_final_state, bool use_qk_l2norm, bool state_v_first, "
      "Tensor? cu_seqlens, Tensor? chunk_indices) -> (Tensor o, Tensor final_state, Tensor chunk_states, Tensor w, "
      "Tensor v_new, Tensor t)");
  // Token-by-token form for short inputs (decode, speculative steps); forward only.
  m.def(
      "fused_recurrent_gated_delta_rule_fwd(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, float scale, "
      "Tensor? initial_state, bool output_final_state, bool use_qk_l2norm, bool state_v_first, "
      "Tensor? cu_seqlens) -> (Tensor o, Tensor final_state)");

  // ---- gating ----
  // The scan's decay and write strength from raw per-head projections (fla's / vLLM's GDN gating):
  // g = -exp(A_log) * softplus(a + dt_bias) (softplus passes x > 20 through), beta = sigmoid(b).
  // a, b [R, H] (rows any stride apart, dense heads), A_log, dt_bias [H] -> g [R, H] fp32 (fp64 for fp64 inputs on
  // CPU), beta [R, H] in b's dtype.
  m.def("gdn_gating_fwd(Tensor a, Tensor b, Tensor A_log, Tensor dt_bias) -> (Tensor g, Tensor beta)");
  // grad_a, grad_b written into given [R, H] tensors (a's dtype, dense heads, rows any stride apart: column slices
  // of one gradient); returns [grad_A_log, grad_dt_bias] as one [2, H] tensor in A_log's dtype.
  m.def(
      "gdn_gating_bwd(Tensor grad_g, Tensor grad_beta, Tensor a, Tensor b, Tensor A_log, Tensor dt_bias, "
      "Tensor(a!) grad_a, Tensor(b!) grad_b) -> Tensor grad_params");

  // ---- readout ----
  // out[n, h] = norm(sum_j w[n, j] * o_routed[dst_row[n, j], h] + shared[n, h]); norm = gated RMSNorm
  // rmsnorm(o) * norm_weight * silu(gate) when norm_weight is given (gate optional).
  // o_routed [R, H, V], shared/gate/out [N, H, V], norm_weight [V], weights fp32 [N, k].
  m.def(
      "memory_mix_fwd(Tensor o_routed, Tensor dst_row, Tensor src_pair, Tensor weights, Tensor? shared, "
      "Tensor? norm_weight, Tensor? gate, float eps) -> Tensor");
  m.def(
      "memory_mix_bwd(Tensor grad_out, Tensor o_routed, Tensor dst_row, Tensor src_pair, Tensor weights, "
      "Tensor? shared, Tensor? norm_weight, Tensor? gate, float eps) -> (Tensor grad_o_routed, "
      "Tensor grad_weights, Tensor grad_shared, Tensor grad_norm_weight, Tensor grad_gate)");

  // ---- conv ----
  // Depthwise causal conv (+ SiLU when activation) inside each segment of a packed stream, never across segments:
  // y[r] = act(sum_i weight[c, W-1-i] * x(r - i)), x(r - i) = x[r - i] while r - i is in r's segment s, else
  // history[s, W-1-(start_s - (r - i))] (zeros when history is None). Rows past cu_seqlens[-1] give y = 0.
  // x [R, C], weight [C, W] (1 <= W <= 8), cu_seqlens [S+1], history [S, W-1, C].
  // With a routing plan's maps dst_row [N, k] and src_pair [R] (permute's arguments), x is [N, C] and the conv runs
  // on permute(x) without materialising it: the input of row r is x[src_pair[r] // k] (0 for unused rows); the
  // bwd's grad_x is then the gradient of those [R, C] rows (unpermute takes it to x's).
  m.def(
      "segment_conv_fwd(Tensor x, Tensor weight, Tensor cu_seqlens, Tensor? history, bool activation, "
      "Tensor? dst_row=None, Tensor? src_pair=None) -> Tensor");
  m.def(
      "segment_conv_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor cu_seqlens, Tensor? history, "
      "bool activation, Tensor? dst_row=None, Tensor? src_pair=None) -> (Tensor grad_x, Tensor grad_weight, "
      "Tensor grad_history)");
  // The bwd with grad_x written into a given [R, C] tensor (x's dtype, dense channels, rows any stride apart: a
  // column slice of one gradient for several inputs, which saves the concatenation autograd would do).
  m.def(
      "segment_conv_bwd_into(Tensor grad_y, Tensor x, Tensor weight, Tensor cu_seqlens, Tensor? history, "
      "bool activation, Tensor(a!) grad_x) -> (Tensor grad_weight, Tensor grad_history)");

  // ---- decode ----
  // One token per row n and J memory slots (routed + shared): for each j with slots[n, j] >= 0 the pool state
  // S = state_pool[slots[n, j]] takes one gated-delta step with k[n, j], v[n, j], g[n, j], beta[n, j] (in place),
  // and out[n] = sum_j weights[n, j] * scale * S^T q[n] (q[n, j] when q has a slot axis).
  // q [N, H, K] or [N, J, H, K]; k [N, J, H, K]; v [N, J, HV, V]; g, beta [N, J, HV]; weights [N, J] fp32; slots [N, J] int;
  // state_pool [P, HV, K, V] fp32 ([P, HV, V, K] if state_v_first) -> out [N, HV, V].
  m.def(
      "mom_decode_step(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor weights, Tensor slots, "
      "Tensor(a!) state_pool, float scale, bool use_qk_l2norm, bool state_v_first) -> Tensor");
}

// The ops that write an argument in place (Tensor(a!)) bump its version counter, as torch's in-place ops do: a
// tensor autograd saved before the write then raises at backward instead of giving gradients of the new values.
// (torch's autogradNotImplementedInplaceOrViewFallback bumps written returns only; ours return fresh tensors.)
namespace mom_ops {
void bump_written_arguments(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t first = stack->size() - arguments.size();
  std::vector<at::Tensor> written;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const at::AliasInfo* alias = arguments[i].alias_info();
    if (alias != nullptr && alias->isWrite() && (*stack)[first + i].isTensor()) {
      written.push_back((*stack)[first + i].toTensor());
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  for (const at::Tensor& t : written) torch::autograd::increment_version(t);
}
}  // namespace mom_ops

TORCH_LIBRARY_IMPL(mom_ops, ADInplaceOrView, m) {
  for (const char* op : {"gdn_gating_bwd", "segment_conv_bwd_into", "mom_decode_step"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&mom_ops::bump_written_arguments>());
  }
}
