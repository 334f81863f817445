// The family's autograd, on common/autograd.h's kernels: C++, so that a call pays no Python autograd layer
// (decoding steps are overhead-bound), and plain graph nodes, so that torch.func's transforms work. The pure-PyTorch
// fallback gets the same formulas from the torch ops it is made of. With out = dropout(x * scale + alpha * pe):
//   d/dx     = scale
//   d/dtable = alpha at each used row (position != padding_idx), summed over the elements that use it
//   d/dalpha = sum(grad * pe), pe recomputed by the forward op itself
// with grad first multiplied by the dropout mask / (1 - dropout), which the forward op regenerates from its seed.
// The tangent (forward mode) is the same linear map applied to the inputs' tangents.
// add_pe_ and fill_table_ are recorded as add_pe followed by copy_; add_pe_out refuses tracked tensors.
#include "common/autograd.h"

#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "sinusoidal/ops.h"

namespace pe_ext::sinusoidal {
namespace {

using autograd::OpArguments;
using torch::autograd::variable_list;

const c10::OperatorHandle& add_pe_handle() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("pe_ext::add_pe", "");
  return op;
}

at::Tensor opmath_zero(const at::Tensor& like) {
  return at::zeros({}, like.options().dtype(at::toOpMathType(like.scalar_type())));
}

// grad * dropout mask / (1 - dropout): the forward op on grad with no pe (alpha 0) regenerates the mask.
at::Tensor through_dropout(const at::Tensor& grad, const OpArguments& args) {
  return args.with({{"x", grad}, {"table", c10::IValue()}, {"scale", 1.0}, {"alpha", opmath_zero(grad)}}).call();
}

// The table row each element of grad read, batch-first: (batch, seq_len) int64.
at::Tensor rows_read(const at::Tensor& grad, const OpArguments& args, int64_t seq_dim) {
  const int64_t dim = seq_dim < 0 ? seq_dim + grad.dim() : seq_dim;
  const int64_t batch = grad.dim() == 2 ? 1 : grad.size(1 - dim), seq_len = grad.size(grad.dim() == 2 ? 0 : dim);
  const c10::SymInt offset = args["offset"].toSymInt();
  const at::Tensor positions = args.tensor("positions");
  if (!positions.defined()) {
    return at::arange(seq_len, grad.options().dtype(at::kLong)).add(offset).expand({batch, seq_len});
  }
  const at::Tensor ids = positions.dim() == 1 || grad.dim() == 2 ? positions.reshape({1, seq_len})
                                                                 : (dim == 0 ? positions.t() : positions);
  return ids.to(at::kLong).expand({batch, seq_len}).add(offset);
}

// alpha times grad summed into the rows it read (padding_idx's row gets nothing), in the table's dtype, so that a
// float32 table under bfloat16 activations keeps a float32 sum. Out-of-place ops without boolean indexing, so that
// vmap (batched gradients) and double backward work.
at::Tensor table_gradient(const at::Tensor& grad, const OpArguments& args, const at::Tensor& table) {
  const int64_t seq_dim = args["seq_dim"].toInt();
  const at::Tensor ids = rows_read(grad, args, seq_dim).reshape(-1);
  const int64_t dim = seq_dim < 0 ? seq_dim + grad.dim() : seq_dim;
  const at::Tensor batch_first = grad.dim() == 2 ? grad : (dim == 0 ? grad.transpose(0, 1) : grad);
  at::Tensor contributions = batch_first.reshape({ids.size(0), -1});
  if (const at::Tensor alpha = args.tensor("alpha"); alpha.defined()) contributions = contributions.mul(alpha);
  contributions = contributions.to(table.scalar_type());
  const at::Tensor used = ids.reshape({-1, 1}).ne(args["padding_idx"].toInt()).to(contributions.scalar_type());
  const int64_t rows = table.dim() == 3 ? table.size(1) : table.size(0);
  const at::Tensor grad_rows =
      at::zeros({rows, table.size(-1)}, contributions.options()).index_add(0, ids, contributions.mul(used));
  return table.dim() == 3 ? grad_rows.unsqueeze(0) : grad_rows;
}

// alpha * pe (alpha 1 when None) at every element, without x and dropout: the forward op on zeros.
at::Tensor scaled_pe(const at::Tensor& like, const OpArguments& args, const c10::IValue& alpha) {
  return args.with({{"x", at::zeros_like(like)}, {"scale", 0.0}, {"alpha", alpha}, {"dropout", 0.0}}).call();
}

// sum(grad * pe).
at::Tensor alpha_gradient(const at::Tensor& grad, const OpArguments& args, const at::Tensor& alpha) {
  const at::Tensor pe = scaled_pe(grad, args, c10::IValue());
  const auto acc = at::toOpMathType(alpha.scalar_type());
  return grad.to(acc).mul(pe.to(acc)).sum().reshape(alpha.sizes()).to(alpha.scalar_type());
}

struct AddPeDerivatives {
  static constexpr const char* kInputs[] = {"x", "table", "alpha"};
  static constexpr const char* kUnsaved[] = {"x"};

  static variable_list backward(const OpArguments& args, const variable_list& grads, const std::vector<bool>& wanted) {
    at::Tensor grad = grads[0];
    if (args["dropout"].toDouble() > 0) grad = through_dropout(grad, args);
    variable_list result(3);
    if (wanted[0]) result[0] = grad.mul(args["scale"].toDouble());
    if (wanted[1]) result[1] = table_gradient(grad, args, args.tensor("table"));
    if (wanted[2]) result[2] = alpha_gradient(grad, args, args.tensor("alpha"));
    return result;
  }

  // dropout(x_t * scale + alpha * table_t[rows] + alpha_t * pe): the op itself on the tangents, the dropout mask
  // being the same for the same seed.
  static std::vector<at::Tensor> jvp(const OpArguments& args, const std::vector<at::Tensor>& tangents) {
    const at::Tensor &x_t = tangents[0], &table_t = tangents[1], &alpha_t = tangents[2];
    const at::Tensor x = args.tensor("x");
    at::Tensor tangent;
    if (x_t.defined() || table_t.defined()) {
      tangent = args.with({{"x", x_t.defined() ? x_t : at::zeros_like(x)},
                           {"table", table_t.defined() ? c10::IValue(table_t) : c10::IValue()},
                           {"alpha", table_t.defined() ? args["alpha"] : c10::IValue(opmath_zero(x))}})
                    .call();
    }
    if (alpha_t.defined()) {
      const at::Tensor alpha_term = args.with({{"x", at::zeros_like(x)}, {"scale", 0.0}, {"alpha", alpha_t}}).call();
      tangent = tangent.defined() ? tangent.add(alpha_term) : alpha_term;
    }
    return {tangent};
  }
};

// add_pe_: x = add_pe(x, ...).
struct AddPeInPlace {
  static constexpr const char* kWritten = "x";
  static at::Tensor out_of_place(const OpArguments& args) { return args.for_op(add_pe_handle(), {}).call(); }
};

// fill_table_: out = add_pe of zeros shaped like out, its rows along dimension 0.
struct FillTable {
  static constexpr const char* kWritten = "out";
  static at::Tensor out_of_place(const OpArguments& args) {
    return args.for_op(add_pe_handle(), {{"x", at::zeros_like(args.tensor("out"))}, {"seq_dim", int64_t{0}}}).call();
  }
};

}  // namespace
}  // namespace pe_ext::sinusoidal

TORCH_LIBRARY_IMPL(pe_ext, Autograd, m) {
  using pe_ext::sinusoidal::AddPeDerivatives, pe_ext::sinusoidal::AddPeInPlace, pe_ext::sinusoidal::FillTable;
  m.impl("add_pe", pe_ext::autograd::differentiable<AddPeDerivatives>());
  m.impl("add_pe_", pe_ext::autograd::in_place_as_copy<AddPeInPlace>());
  m.impl("add_pe_out", pe_ext::autograd::refuse_tracked_out());
  m.impl("fill_table_", pe_ext::autograd::in_place_as_copy<FillTable>());
}

TORCH_LIBRARY_IMPL(pe_ext, ADInplaceOrView, m) {
  for (const char* op : {"add_pe_", "add_pe_out", "fill_table_"}) m.impl(op, pe_ext::autograd::bump_versions());
}
