// CPU implementation of segment_conv (fwd, bwd): plain loops in fp32 (fp64 for fp64 inputs, for gradcheck).
//   y[r] = act(sum_i weight[:, W-1-i] * x(r - i)), x(r - i) = x[r - i] inside r's segment, else the segment's
//   history row W-1-i+(r-start) (zeros without history); rows past cu_seqlens[-1] give 0.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "common/cpu_math.h"
#include "conv/conv_checks.h"

namespace mom_ops {
namespace {

template <typename acc_t>
acc_t silu_of(acc_t z) { return z / (acc_t(1) + std::exp(-z)); }

template <typename acc_t>
acc_t silu_grad(acc_t z) {
  const acc_t s = acc_t(1) / (acc_t(1) + std::exp(-z));
  return s * (acc_t(1) + z * (acc_t(1) - s));
}

// The inputs in the math dtype and the segment bounds, for both directions.
struct ConvCpu {
  at::Tensor x, w, hist;   // [R, C], [C, W], [S, W-1, C] (undefined without history)
  std::vector<int64_t> cu;  // [S+1]
};

ConvCpu prepare(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& cu_seqlens,
                const std::optional<at::Tensor>& history) {
  const at::ScalarType math = cpu_math_type(x);
  ConvCpu c;
  c.x = x.to(math).contiguous();
  c.w = weight.to(math).contiguous();
  if (history.has_value()) c.hist = history->to(math).contiguous();
  const at::Tensor cu = cu_seqlens.to(at::kLong).contiguous();
  c.cu.assign(cu.data_ptr<int64_t>(), cu.data_ptr<int64_t>() + cu.numel());
  return c;
}

template <typename acc_t>
void conv_fwd_loop(const ConvCpu& c, bool activation, at::Tensor& y) {
  const int64_t C = c.x.size(1), W = c.w.size(1), S = int64_t(c.cu.size()) - 1;
  const acc_t* x = c.x.data_ptr<acc_t>();
  const acc_t* w = c.w.data_ptr<acc_t>();
  const acc_t* hist = c.hist.defined() ? c.hist.data_ptr<acc_t>() : nullptr;
  acc_t* out = y.data_ptr<acc_t>();
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t r = c.cu[s]; r < c.cu[s + 1]; ++r) {
      for (int64_t ch = 0; ch < C; ++ch) {
        acc_t acc = 0;
        for (int64_t i = 0; i < W; ++i) {
          const int64_t src = r - i;
          acc_t xv = 0;
          if (src >= c.cu[s]) {
            xv = x[src * C + ch];
          } else if (hist != nullptr) {
            xv = hist[(s * (W - 1) + (W - 1) - (c.cu[s] - src)) * C + ch];
          }
          acc += w[ch * W + (W - 1 - i)] * xv;
        }
        out[r * C + ch] = activation ? silu_of(acc) : acc;
      }
    }
  }
}

// The conv's input rows: x, or with the plan's maps permute(x) (mom_ops::permute's CPU kernel, which also checks the
// maps' values).
at::Tensor conv_input_rows(const at::Tensor& x, const std::optional<at::Tensor>& dst_row,
                           const std::optional<at::Tensor>& src_pair) {
  if (!src_pair.has_value()) return x;
  static const auto permute = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("mom_ops::permute", "")
                                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return permute.call(x, *dst_row, *src_pair);
}

at::Tensor segment_conv_fwd_cpu(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& cu_seqlens,
                                const std::optional<at::Tensor>& history, bool activation,
                                const std::optional<at::Tensor>& dst_row, const std::optional<at::Tensor>& src_pair) {
  check_segment_conv_args(x_in, weight, cu_seqlens, history, dst_row, src_pair);
  const at::Tensor x = conv_input_rows(x_in, dst_row, src_pair);
  const ConvCpu c = prepare(x, weight, cu_seqlens, history);
  at::Tensor y = at::zeros_like(c.x);  // rows past the last segment stay 0
  AT_DISPATCH_FLOATING_TYPES(c.x.scalar_type(), "segment_conv_fwd_cpu", [&] { conv_fwd_loop<scalar_t>(c, activation, y); });
  return y.to(x.scalar_type());
}

// dpre = dy * act'(pre); dx[src] += w * dpre, d_hist for sources before the segment start, dw += dpre * x(src).
template <typename acc_t>
void conv_bwd_loop(const ConvCpu& c, const at::Tensor& dy_t, bool activation, at::Tensor& dx_t, at::Tensor& dw_t,
                   at::Tensor& dh_t) {
  const int64_t C = c.x.size(1), W = c.w.size(1), S = int64_t(c.cu.size()) - 1;
  const acc_t* x = c.x.data_ptr<acc_t>();
  const acc_t* w = c.w.data_ptr<acc_t>();
  const acc_t* hist = c.hist.defined() ? c.hist.data_ptr<acc_t>() : nullptr;
  const acc_t* dy = dy_t.data_ptr<acc_t>();
  acc_t* dx = dx_t.data_ptr<acc_t>();
  acc_t* dw = dw_t.data_ptr<acc_t>();
  acc_t* dh = dh_t.defined() ? dh_t.data_ptr<acc_t>() : nullptr;
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t r = c.cu[s]; r < c.cu[s + 1]; ++r) {
      for (int64_t ch = 0; ch < C; ++ch) {
        auto source = [&](int64_t i) -> acc_t {  // x(r - i)
          const int64_t src = r - i;
          if (src >= c.cu[s]) return x[src * C + ch];
          return hist != nullptr ? hist[(s * (W - 1) + (W - 1) - (c.cu[s] - src)) * C + ch] : acc_t(0);
        };
        acc_t pre = 0;
        for (int64_t i = 0; i < W; ++i) pre += w[ch * W + (W - 1 - i)] * source(i);
        const acc_t dpre = dy[r * C + ch] * (activation ? silu_grad(pre) : acc_t(1));
        for (int64_t i = 0; i < W; ++i) {
          const int64_t src = r - i;
          dw[ch * W + (W - 1 - i)] += dpre * source(i);
          const acc_t g = w[ch * W + (W - 1 - i)] * dpre;
          if (src >= c.cu[s]) {
            dx[src * C + ch] += g;
          } else if (dh != nullptr) {
            dh[(s * (W - 1) + (W - 1) - (c.cu[s] - src)) * C + ch] += g;
          }
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_conv_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x_in,
                                                                   const at::Tensor& weight,
                                                                   const at::Tensor& cu_seqlens,
                                                                   const std::optional<at::Tensor>& history,
                                                                   bool activation,
                                                                   const std::optional<at::Tensor>& dst_row,
                                                                   const std::optional<at::Tensor>& src_pair) {
  const ConvDims d = check_segment_conv_args(x_in, weight, cu_seqlens, history, dst_row, src_pair);
  CHECK_SHAPE(grad_y, d.rows, d.channels);
  CHECK_DEVICE(grad_y, x_in);
  const at::Tensor x = conv_input_rows(x_in, dst_row, src_pair);
  const ConvCpu c = prepare(x, weight, cu_seqlens, history);
  const at::Tensor dy = grad_y.to(c.x.scalar_type()).contiguous();
  at::Tensor dx = at::zeros_like(c.x), dw = at::zeros_like(c.w);
  at::Tensor dh = history.has_value() ? at::zeros_like(c.hist) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(c.x.scalar_type(), "segment_conv_bwd_cpu",
                             [&] { conv_bwd_loop<scalar_t>(c, dy, activation, dx, dw, dh); });
  const at::Tensor none = at::empty({0}, x.options().dtype(at::kFloat));
  return {dx.to(x.scalar_type()), dw.to(weight.scalar_type()).contiguous(),  // (as the CUDA kernels: contiguous)
          history.has_value() ? dh.to(history->scalar_type()).contiguous() : none};
}

std::tuple<at::Tensor, at::Tensor> segment_conv_bwd_into_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                            const at::Tensor& weight, const at::Tensor& cu_seqlens,
                                                            const std::optional<at::Tensor>& history, bool activation,
                                                            at::Tensor& grad_x) {
  const ConvDims d = check_segment_conv_args(x, weight, cu_seqlens, history);
  check_conv_grad_x_out(grad_x, x, grad_y, d);
  auto [dx, dw, dh] = segment_conv_bwd_cpu(grad_y, x, weight, cu_seqlens, history, activation, std::nullopt,
                                           std::nullopt);
  grad_x.copy_(dx);
  return {dw, dh};
}

}  // namespace

TORCH_LIBRARY_IMPL(mom_ops, CPU, m) {
  m.impl("segment_conv_fwd", &segment_conv_fwd_cpu);
  m.impl("segment_conv_bwd", &segment_conv_bwd_cpu);
  m.impl("segment_conv_bwd_into", &segment_conv_bwd_into_cpu);
}

}  // namespace mom_ops
