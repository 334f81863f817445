// Autograd for add_pe in C++, so that a call pays no Python autograd layer (decoding steps are overhead-bound).
// The pure-PyTorch fallback gets the same formulas from the torch ops it is made of. With out = x * scale +
// alpha * pe(position):
//   d/dx     = scale
//   d/dtable = alpha at each used row (position != padding_idx), summed over the elements that use it
//   d/dalpha = sum(grad * pe(position)), pe recomputed by the forward op itself
// with grad first multiplied by the dropout mask / (1 - dropout), which the forward op regenerates from its seed.
//
// The kernel is boxed: it sees add_pe's arguments as the dispatcher's stack and finds each by its name in the schema,
// so that it needs no edit when the family's options change.
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <iterator>
#include <utility>
#include <vector>

#include "sinusoidal/ops.h"

namespace pe_ext::sinusoidal {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const c10::OperatorHandle& add_pe_handle() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("pe_ext::add_pe", "");
  return op;
}

size_t argument_index(const char* name) {
  const auto index = add_pe_handle().schema().argumentIndexWithName(name);
  TORCH_INTERNAL_ASSERT(index.has_value(), "pe_ext::add_pe has no argument named ", name);
  return *index;
}

// add_pe's arguments as the dispatcher passes them, addressed by name.
class AddPeArguments {
 public:
  explicit AddPeArguments(std::vector<c10::IValue> values) : values_(std::move(values)) {}

  const c10::IValue& operator[](const char* name) const { return values_[argument_index(name)]; }
  std::optional<at::Tensor> tensor(const char* name) const { return (*this)[name].toOptional<at::Tensor>(); }

  // A copy with some arguments replaced.
  AddPeArguments with(std::initializer_list<std::pair<const char*, c10::IValue>> changes) const {
    AddPeArguments copy = *this;
    for (const auto& [name, value] : changes) copy.values_[argument_index(name)] = value;
    return copy;
  }

  // add_pe on these arguments, through the dispatcher (so that double backward records it too).
  at::Tensor call() const {
    torch::jit::Stack stack = values_;
    add_pe_handle().callBoxed(stack);
    return stack.back().toTensor();
  }

  c10::IValue to_list() const {
    c10::impl::GenericList list(c10::AnyType::get());
    for (const auto& value : values_) list.push_back(value);
    return list;
  }

 private:
  std::vector<c10::IValue> values_;
};

at::Tensor opmath_zero(const at::Tensor& like) {
  return at::zeros({}, like.options().dtype(at::toOpMathType(like.scalar_type())));
}

// grad * dropout mask / (1 - dropout): the forward op on grad with no pe (alpha 0) regenerates the mask.
at::Tensor through_dropout(const at::Tensor& grad, const AddPeArguments& args) {
  return args.with({{"x", grad}, {"table", c10::IValue()}, {"scale", 1.0}, {"alpha", opmath_zero(grad)}}).call();
}

// The table row each element of grad read, batch-first: (batch, seq_len) int64.
at::Tensor rows_read(const at::Tensor& grad, const AddPeArguments& args, int64_t seq_dim) {
  const int64_t dim = seq_dim < 0 ? seq_dim + grad.dim() : seq_dim;
  const int64_t batch = grad.dim() == 2 ? 1 : grad.size(1 - dim), seq_len = grad.size(grad.dim() == 2 ? 0 : dim);
  const c10::SymInt offset = args["offset"].toSymInt();
  const std::optional<at::Tensor> positions = args.tensor("positions");
  if (!positions.has_value()) {
    return at::arange(seq_len, grad.options().dtype(at::kLong)).add(offset).expand({batch, seq_len});
  }
  const at::Tensor& p = *positions;
  const at::Tensor ids = p.dim() == 1 || grad.dim() == 2 ? p.reshape({1, seq_len}) : (dim == 0 ? p.t() : p);
  return ids.to(at::kLong).expand({batch, seq_len}).add(offset);
}

// alpha times grad summed into the rows it read (padding_idx's row gets nothing), in the table's dtype, so that a
// float32 table under bfloat16 activations keeps a float32 sum. Out-of-place ops without boolean indexing, so that
// vmap (batched gradients) and double backward work.
at::Tensor table_gradient(const at::Tensor& grad, const AddPeArguments& args, const at::Tensor& table) {
  const int64_t seq_dim = args["seq_dim"].toInt();
  const at::Tensor ids = rows_read(grad, args, seq_dim).reshape(-1);
  const int64_t dim = seq_dim < 0 ? seq_dim + grad.dim() : seq_dim;
  const at::Tensor batch_first = grad.dim() == 2 ? grad : (dim == 0 ? grad.transpose(0, 1) : grad);
  at::Tensor contributions = batch_first.reshape({ids.size(0), -1});
  if (const auto alpha = args.tensor("alpha")) contributions = contributions.mul(*alpha);
  contributions = contributions.to(table.scalar_type());
  const at::Tensor used = ids.reshape({-1, 1}).ne(args["padding_idx"].toInt()).to(contributions.scalar_type());
  const int64_t rows = table.dim() == 3 ? table.size(1) : table.size(0);
  const at::Tensor grad_rows =
      at::zeros({rows, table.size(-1)}, contributions.options()).index_add(0, ids, contributions.mul(used));
  return table.dim() == 3 ? grad_rows.unsqueeze(0) : grad_rows;
}

// sum(grad * pe), pe at every element from the forward op on zeros with alpha and dropout left out.
at::Tensor alpha_gradient(const at::Tensor& grad, const AddPeArguments& args, const at::Tensor& alpha) {
  const at::Tensor pe = args.with({{"x", at::zeros_like(grad)},
                                   {"scale", 0.0},
                                   {"alpha", c10::IValue()},
                                   {"dropout", 0.0},
                                   {"seed", int64_t{0}}})
                            .call();
  const auto acc = at::toOpMathType(alpha.scalar_type());
  return grad.to(acc).mul(pe.to(acc)).sum().reshape(alpha.sizes()).to(alpha.scalar_type());
}

class AddPe : public torch::autograd::Function<AddPe> {
 public:
  // x, table and alpha are the differentiable inputs; `args` holds every argument, addressed by name.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& table,
                            const std::optional<at::Tensor>& alpha, const AddPeArguments& args) {
    // Which gradients are wanted is read here: needs_input_grad counts only the tensors given, not the arguments.
    ctx->saved_data["table_requires_grad"] = table.has_value() && table->requires_grad();
    ctx->saved_data["alpha_requires_grad"] = alpha.has_value() && alpha->requires_grad();
    // Backward needs everything but x; the tensors are kept detached, as autograd's own saved copies would be.
    ctx->saved_data["arguments"] = args.with({{"x", c10::IValue()},
                                              {"table", table ? c10::IValue(table->detach()) : c10::IValue()},
                                              {"alpha", alpha ? c10::IValue(alpha->detach()) : c10::IValue()}})
                                       .to_list();
    at::AutoDispatchBelowADInplaceOrView guard;
    return args.call();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const AddPeArguments args(ctx->saved_data["arguments"].toList().vec());
    at::Tensor grad = grads[0];
    if (args["dropout"].toDouble() > 0) grad = through_dropout(grad, args);
    variable_list result(4);  // one per forward argument: x, table, alpha, args
    result[0] = grad.mul(args["scale"].toDouble());
    if (ctx->saved_data["table_requires_grad"].toBool()) result[1] = table_gradient(grad, args, *args.tensor("table"));
    if (ctx->saved_data["alpha_requires_grad"].toBool()) result[2] = alpha_gradient(grad, args, *args.tensor("alpha"));
    return result;
  }
};

void add_pe_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  static const size_t num_arguments = op.schema().arguments().size();
  static const size_t differentiable[] = {argument_index("x"), argument_index("table"), argument_index("alpha")};
  const auto tracked = [&](size_t index) {
    const c10::IValue& value = torch::jit::peek(*stack, index, num_arguments);
    return value.isTensor() && value.toTensor().requires_grad();
  };
  static const size_t inv_freq = argument_index("inv_freq");
  check_frequencies_untracked(torch::jit::peek(*stack, inv_freq, num_arguments).toOptional<at::Tensor>());
  if (!at::GradMode::is_enabled() || std::none_of(std::begin(differentiable), std::end(differentiable), tracked)) {
    // Nothing to differentiate (inference, decoding): no graph node and no saved state.
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(*stack);
    return;
  }
  const AddPeArguments args(torch::jit::pop(*stack, num_arguments));
  torch::jit::push(*stack, AddPe::apply(args["x"].toTensor(), args.tensor("table"), args.tensor("alpha"), args));
}

}  // namespace
}  // namespace pe_ext::sinusoidal

TORCH_LIBRARY_IMPL(pe_ext, Autograd, m) {
  m.impl("add_pe", torch::CppFunction::makeFromBoxedFunction<&pe_ext::sinusoidal::add_pe_autograd>());
}
