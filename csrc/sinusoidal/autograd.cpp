// Autograd for add_pe in C++, so that a call pays no Python autograd layer (decoding steps are overhead-bound).
// The pure-PyTorch fallback registers the same formulas from Python (pe_ext/ops.py). With out = x * scale +
// alpha * pe(position):
//   d/dx     = scale
//   d/dtable = alpha at each used row (position != padding_idx), summed over the elements that use it
//   d/dalpha = sum(grad * pe(position)), pe recomputed by the forward op itself
// with grad first multiplied by the dropout mask / (1 - dropout), which the forward op regenerates from its seed.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "sinusoidal/ops.h"

namespace pe_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr size_t kNumArguments = 16;  // of add_pe's schema
constexpr size_t kTableArgument = 1, kAlphaArgument = 13;

// offset is a SymInt here, as in the schema, so that torch.compile keeps it symbolic through this kernel (a new
// offset in a decoding loop then compiles nothing new); the backend kernels see a plain integer.
at::Tensor call_add_pe(const at::Tensor& x, const std::optional<at::Tensor>& table, c10::SymInt offset,
                       double scale, int64_t seq_dim, PE_KEYWORD_PARAMS) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pe_ext::add_pe", "")
                             .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, c10::SymInt, double,
                                               int64_t, double, c10::string_view, c10::string_view, double, double,
                                               bool, const std::optional<at::Tensor>&, int64_t,
                                               const std::optional<at::Tensor>&, double, int64_t)>();
  return op.call(x, table, offset, scale, seq_dim, base, layout, frequencies, min_timescale, max_timescale,
                 precise_angle, positions, padding_idx, alpha, dropout, seed);
}

class AddPe : public torch::autograd::Function<AddPe> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& table,
                            c10::SymInt offset, double scale, int64_t seq_dim, PE_KEYWORD_PARAMS) {
    auto& saved = ctx->saved_data;
    saved["scale"] = scale;
    saved["offset"] = offset;
    saved["seq_dim"] = seq_dim;
    saved["padding_idx"] = padding_idx;
    saved["base"] = base;
    saved["layout"] = std::string(layout);
    saved["frequencies"] = std::string(frequencies);
    saved["min_timescale"] = min_timescale;
    saved["max_timescale"] = max_timescale;
    saved["precise_angle"] = precise_angle;
    saved["dropout"] = dropout;
    saved["seed"] = seed;
    if (positions.has_value() && positions->defined()) saved["positions"] = *positions;
    // Which gradients are wanted is read here: needs_input_grad counts only the tensors given, not the arguments.
    const bool has_table = table.has_value() && table->defined(), has_alpha = alpha.has_value() && alpha->defined();
    saved["table_requires_grad"] = has_table && table->requires_grad();
    saved["alpha_requires_grad"] = has_alpha && alpha->requires_grad();
    if (has_table) saved["table"] = table->detach();
    if (has_alpha) saved["alpha"] = alpha->detach();
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_add_pe(x, table, offset, scale, seq_dim, base, layout, frequencies, min_timescale, max_timescale,
                       precise_angle, positions, padding_idx, alpha, dropout, seed);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& saved = ctx->saved_data;
    at::Tensor grad = grads[0];
    const auto optional_saved = [&](const char* key) {
      return saved.count(key) > 0 ? std::optional<at::Tensor>(saved[key].toTensor()) : std::nullopt;
    };
    const std::optional<at::Tensor> table = optional_saved("table"), alpha = optional_saved("alpha"),
                                    positions = optional_saved("positions");
    const c10::SymInt offset = saved["offset"].toSymInt();
    const int64_t padding_idx = saved["padding_idx"].toInt();
    const int64_t seq_dim = saved["seq_dim"].toInt();
    const double dropout = saved["dropout"].toDouble();
    if (dropout > 0) {
      // grad * mask / (1 - dropout): the forward op on grad with alpha 0 regenerates the same mask.
      grad = call_add_pe(grad, std::nullopt, offset, 1.0, seq_dim, saved["base"].toDouble(),
                         saved["layout"].toStringRef(), saved["frequencies"].toStringRef(),
                         saved["min_timescale"].toDouble(), saved["max_timescale"].toDouble(),
                         saved["precise_angle"].toBool(), positions, padding_idx,
                         at::zeros({}, grad.options().dtype(grad.scalar_type() == at::kDouble ? at::kDouble
                                                                                             : at::kFloat)),
                         dropout, saved["seed"].toInt());
    }
    variable_list result(kNumArguments);
    result[0] = grad.mul(saved["scale"].toDouble());

    if (saved["table_requires_grad"].toBool()) {
      // Batch-first (batch, seq_len, d_model) view of grad, and the row each element read.
      const int64_t dim = seq_dim < 0 ? seq_dim + grad.dim() : seq_dim;
      const at::Tensor g = grad.dim() == 2 ? grad.unsqueeze(0) : (dim == 0 ? grad.transpose(0, 1) : grad);
      const int64_t batch = g.size(0), seq_len = g.size(1);
      at::Tensor ids;
      if (positions.has_value()) {
        const at::Tensor& p = *positions;
        ids = p.dim() == 1 || grad.dim() == 2 ? p.reshape({1, seq_len}) : (dim == 0 ? p.transpose(0, 1) : p);
        ids = ids.to(at::kLong).expand({batch, seq_len}).add(offset);
      } else {
        ids = at::arange(seq_len, grad.options().dtype(at::kLong)).add(offset).expand({batch, seq_len});
      }
      at::Tensor contributions = g.reshape({batch * seq_len, -1});
      if (alpha.has_value()) contributions = contributions.mul(*alpha);
      contributions = contributions.to(table->scalar_type());
      // Out-of-place ops without boolean indexing, so that vmap (batched gradients) and double backward work.
      const at::Tensor used = ids.reshape({-1, 1}).ne(padding_idx).to(contributions.scalar_type());
      const int64_t rows = table->dim() == 3 ? table->size(1) : table->size(0);
      const at::Tensor grad_rows = at::zeros({rows, table->size(-1)}, contributions.options())
                                       .index_add(0, ids.reshape(-1), contributions.mul(used));
      result[kTableArgument] = table->dim() == 3 ? grad_rows.unsqueeze(0) : grad_rows;
    }
    if (saved["alpha_requires_grad"].toBool()) {
      // pe at every element: the forward op on zeros, with alpha left out.
      const at::Tensor pe = call_add_pe(at::zeros_like(grad), table, offset, 0.0, seq_dim, saved["base"].toDouble(),
                                        saved["layout"].toStringRef(), saved["frequencies"].toStringRef(),
                                        saved["min_timescale"].toDouble(), saved["max_timescale"].toDouble(),
                                        saved["precise_angle"].toBool(), positions, padding_idx, std::nullopt, 0.0, 0);
      const auto acc = alpha->scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      result[kAlphaArgument] =
          grad.to(acc).mul(pe.to(acc)).sum().reshape(alpha->sizes()).to(alpha->scalar_type());
    }
    return result;
  }
};

at::Tensor add_pe_autograd(const at::Tensor& x, const std::optional<at::Tensor>& table, c10::SymInt offset,
                           double scale, int64_t seq_dim, PE_KEYWORD_PARAMS) {
  const auto tracked = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->requires_grad(); };
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || tracked(table) || tracked(alpha))) {
    // Nothing to differentiate (inference, decoding): skip building the graph node and its saved state.
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_add_pe(x, table, offset, scale, seq_dim, base, layout, frequencies, min_timescale, max_timescale,
                       precise_angle, positions, padding_idx, alpha, dropout, seed);
  }
  return AddPe::apply(x, table, offset, scale, seq_dim, base, layout, frequencies, min_timescale, max_timescale,
                      precise_angle, positions, padding_idx, alpha, dropout, seed);
}

}  // namespace
}  // namespace pe_ext

TORCH_LIBRARY_IMPL(pe_ext, Autograd, m) {
  m.impl("add_pe", &pe_ext::add_pe_autograd);
}
