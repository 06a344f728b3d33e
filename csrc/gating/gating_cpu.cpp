// CPU implementation of gdn_gating (fwd, bwd): plain loops in fp32 (fp64 for fp64 inputs, for gradcheck).
//   x = a + dt_bias, g = -exp(A_log) * softplus(x) (torch's softplus: x above 20 passes through), beta = sigmoid(b).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "common/cpu_math.h"
#include "gating/gating_checks.h"

namespace mom_ops {
namespace {

constexpr double kSoftplusThreshold = 20.0;  // torch.nn.functional.softplus's default

template <typename acc_t>
acc_t softplus_of(acc_t x) { return x > acc_t(kSoftplusThreshold) ? x : std::log1p(std::exp(x)); }

template <typename acc_t>
acc_t sigmoid_of(acc_t x) { return acc_t(1) / (acc_t(1) + std::exp(-x)); }

std::tuple<at::Tensor, at::Tensor> gdn_gating_fwd_cpu(const at::Tensor& a, const at::Tensor& b,
                                                      const at::Tensor& A_log, const at::Tensor& dt_bias) {
  check_gdn_gating_args(a, b, A_log, dt_bias);
  const at::ScalarType math = cpu_math_type(a);
  const at::Tensor a_m = a.to(math).contiguous(), b_m = b.to(math).contiguous();
  const at::Tensor A_m = A_log.to(math).contiguous(), dt_m = dt_bias.to(math).contiguous();
  at::Tensor g = at::empty(a.sizes(), a.options().dtype(math));
  at::Tensor beta = at::empty(a.sizes(), a.options().dtype(math));
  const int64_t R = a.size(0), H = a.size(1);
  AT_DISPATCH_FLOATING_TYPES(math, "gdn_gating_fwd_cpu", [&] {
    const scalar_t *av = a_m.data_ptr<scalar_t>(), *bv = b_m.data_ptr<scalar_t>();
    const scalar_t *A = A_m.data_ptr<scalar_t>(), *dt = dt_m.data_ptr<scalar_t>();
    scalar_t *gv = g.data_ptr<scalar_t>(), *betav = beta.data_ptr<scalar_t>();
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t i = r * H + h;
        gv[i] = -std::exp(A[h]) * softplus_of(av[i] + dt[h]);
        betav[i] = sigmoid_of(bv[i]);
      }
    }
  });
  return {g, beta.to(b.scalar_type())};
}

// grad_x = grad_g * -exp(A_log) * softplus'(x), grad_b = grad_beta * s (1 - s) with s = sigmoid(b) in the math
// dtype; returns [grad_A_log, grad_dt_bias] ([2, H]): the sums over rows of grad_g * g and of grad_a.
at::Tensor gdn_gating_bwd_cpu(const at::Tensor& grad_g, const at::Tensor& grad_beta,
                                                      const at::Tensor& a, const at::Tensor& b,
                                                      const at::Tensor& A_log, const at::Tensor& dt_bias,
                                                      at::Tensor& grad_a, at::Tensor& grad_b) {
  check_gdn_gating_args(a, b, A_log, dt_bias);
  const at::ScalarType math = cpu_math_type(a);
  check_gdn_gating_grads(grad_g, grad_beta, a, b, grad_a, grad_b, math);
  const at::Tensor a_m = a.to(math).contiguous(), b_m = b.to(math).contiguous();
  const at::Tensor dg_m = grad_g.to(math).contiguous(), dbeta_m = grad_beta.to(math).contiguous();
  const at::Tensor A_m = A_log.to(math).contiguous(), dt_m = dt_bias.to(math).contiguous();
  const int64_t R = a.size(0), H = a.size(1);
  at::Tensor da = at::empty({R, H}, a.options().dtype(math)), db = at::empty({R, H}, a.options().dtype(math));
  at::Tensor dA = at::zeros({H}, a.options().dtype(math)), ddt = at::zeros({H}, a.options().dtype(math));
  AT_DISPATCH_FLOATING_TYPES(math, "gdn_gating_bwd_cpu", [&] {
    const scalar_t *av = a_m.data_ptr<scalar_t>(), *bv = b_m.data_ptr<scalar_t>();
    const scalar_t *dg = dg_m.data_ptr<scalar_t>(), *dbeta = dbeta_m.data_ptr<scalar_t>();
    const scalar_t *A = A_m.data_ptr<scalar_t>(), *dt = dt_m.data_ptr<scalar_t>();
    scalar_t *dav = da.data_ptr<scalar_t>(), *dbv = db.data_ptr<scalar_t>();
    scalar_t *dAv = dA.data_ptr<scalar_t>(), *ddtv = ddt.data_ptr<scalar_t>();
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t i = r * H + h;
        const scalar_t x = av[i] + dt[h], decay = -std::exp(A[h]);
        const scalar_t dsoftplus = x > scalar_t(kSoftplusThreshold) ? scalar_t(1) : sigmoid_of(x);
        dav[i] = dg[i] * decay * dsoftplus;
        const scalar_t s = sigmoid_of(bv[i]);
        dbv[i] = dbeta[i] * s * (scalar_t(1) - s);
        dAv[h] += dg[i] * decay * softplus_of(x);
        ddtv[h] += dav[i];
      }
    }
  });
  grad_a.copy_(da);
  grad_b.copy_(db);
  return at::stack({dA, ddt}).to(A_log.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CPU, m) {
  m.impl("gdn_gating_fwd", &gdn_gating_fwd_cpu);
  m.impl("gdn_gating_bwd", &gdn_gating_bwd_cpu);
}

}  // namespace mom_ops
