// Autograd for add_pe in C++, so that a call pays no Python autograd layer (decoding steps are overhead-bound).
// The pure-PyTorch fallback registers the same formulas from Python (pe_ext/ops.py).
//   d out / d x     = scale
//   d out / d table = 1 at rows offset .. offset + seq_len, summed over the batch
#include <torch/autograd.h>
#include <torch/library.h>

#include "pe_ops.h"

namespace pe_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor add_pe_below_autograd(const at::Tensor& x, const std::optional<at::Tensor>& table, int64_t offset,
                                 double scale, int64_t seq_dim, PE_ENCODING_PARAMS) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pe_ext::add_pe", "")
                             .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double,
                                               int64_t, double, c10::string_view, c10::string_view, double, double,
                                               bool)>();
  return op.call(x, table, offset, scale, seq_dim, base, layout, frequencies, min_timescale, max_timescale,
                 precise_angle);
}

class AddPe : public torch::autograd::Function<AddPe> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& table,
                            int64_t offset, double scale, int64_t seq_dim, PE_ENCODING_PARAMS) {
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["offset"] = offset;
    // The batch dimension of a 3-D x, or -1 for a 2-D x (no batch to sum over).
    ctx->saved_data["batch_dim"] = x.dim() == 3 ? 1 - (seq_dim < 0 ? seq_dim + 3 : seq_dim) : int64_t{-1};
    if (table.has_value() && table->defined()) {
      ctx->saved_data["table_sizes"] = table->sizes().vec();
      ctx->saved_data["table_dtype"] = table->scalar_type();
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    return add_pe_below_autograd(x, table, offset, scale, seq_dim, base, layout, frequencies, min_timescale,
                                 max_timescale, precise_angle);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad = grads[0];
    at::Tensor grad_x, grad_table;
    if (ctx->needs_input_grad(0)) grad_x = grad.mul(ctx->saved_data["scale"].toDouble());
    // needs_input_grad counts tensor inputs only: the table is input 1 when it was given.
    if (ctx->saved_data.count("table_sizes") > 0 && ctx->needs_input_grad(1)) {
      const int64_t batch_dim = ctx->saved_data["batch_dim"].toInt();
      const at::Tensor per_position = batch_dim >= 0 ? grad.sum(batch_dim) : grad;
      grad_table = at::zeros(ctx->saved_data["table_sizes"].toIntVector(),
                             grad.options().dtype(ctx->saved_data["table_dtype"].toScalarType()));
      at::Tensor rows = grad_table.dim() == 3 ? grad_table.select(0, 0) : grad_table;
      rows.narrow(0, ctx->saved_data["offset"].toInt(), per_position.size(0)).copy_(per_position);
    }
    variable_list result(11);  // one per argument of add_pe; only x and table are differentiable
    result[0] = grad_x;
    result[1] = grad_table;
    return result;
  }
};

at::Tensor add_pe_autograd(const at::Tensor& x, const std::optional<at::Tensor>& table, int64_t offset, double scale,
                           int64_t seq_dim, PE_ENCODING_PARAMS) {
  return AddPe::apply(x, table, offset, scale, seq_dim, base, layout, frequencies, min_timescale, max_timescale,
                      precise_angle);
}

}  // namespace
}  // namespace pe_ext

TORCH_LIBRARY_IMPL(pe_ext, Autograd, m) {
  m.impl("add_pe", &pe_ext::add_pe_autograd);
}
