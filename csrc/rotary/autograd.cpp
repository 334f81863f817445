// Autograd for rotary in C++, so that a call pays no Python autograd layer (decoding steps are overhead-bound). The
// op is linear in q and k: each head row is multiplied by a block-diagonal matrix R(angles) (times attention_scaling),
// so the gradients are R^T applied to the output gradients: the forward op itself with `transpose` flipped. cos, sin
// and inv_freq are constants (as Hugging Face's buffers are): tensors of them that require grad are refused rather
// than silently given no gradient. The pure-PyTorch fallback gets its gradients from the torch ops it is made of.
//
// The kernel is boxed: it sees rotary's arguments as the dispatcher's stack and finds each by its name in the schema,
// so that it needs no edit when the family's options change.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <initializer_list>
#include <utility>
#include <vector>

namespace pe_ext::rotary {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const c10::OperatorHandle& rotary_handle() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("pe_ext::rotary", "");
  return op;
}

size_t argument_index(const char* name) {
  const auto index = rotary_handle().schema().argumentIndexWithName(name);
  TORCH_INTERNAL_ASSERT(index.has_value(), "pe_ext::rotary has no argument named ", name);
  return *index;
}

// rotary's arguments as the dispatcher passes them, addressed by name.
class RotaryArguments {
 public:
  explicit RotaryArguments(std::vector<c10::IValue> values) : values_(std::move(values)) {}

  const c10::IValue& operator[](const char* name) const { return values_[argument_index(name)]; }

  // A copy with some arguments replaced.
  RotaryArguments with(std::initializer_list<std::pair<const char*, c10::IValue>> changes) const {
    RotaryArguments copy = *this;
    for (const auto& [name, value] : changes) copy.values_[argument_index(name)] = value;
    return copy;
  }

  // rotary on these arguments, through the dispatcher (so that double backward records it too).
  std::pair<at::Tensor, at::Tensor> call() const {
    torch::jit::Stack stack = values_;
    rotary_handle().callBoxed(stack);
    return {stack[0].toTensor(), stack[1].toTensor()};
  }

  c10::IValue to_list() const {
    c10::impl::GenericList list(c10::AnyType::get());
    for (const auto& value : values_) list.push_back(value);
    return list;
  }

 private:
  std::vector<c10::IValue> values_;
};

class Rotary : public torch::autograd::Function<Rotary> {
 public:
  // q and k are the differentiable inputs; `args` holds every argument, addressed by name.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const std::optional<at::Tensor>& k,
                               const RotaryArguments& args) {
    // Backward needs everything but q and k (the tensors detached, as autograd's own saved copies would be).
    ctx->saved_data["arguments"] = args.with({{"q", c10::IValue()}, {"k", c10::IValue()}}).to_list();
    ctx->saved_data["has_k"] = k.has_value();
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto [q_out, k_out] = args.call();
    if (!k.has_value()) ctx->mark_non_differentiable({k_out});
    return {q_out, k_out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const RotaryArguments args(ctx->saved_data["arguments"].toList().vec());
    const bool has_k = ctx->saved_data["has_k"].toBool();
    // R^T g: the forward op with the rotation transposed (autograd materializes an unused output's gradient as zeros).
    const auto [q_grad, k_grad] = args.with({{"q", grads[0]},
                                             {"k", has_k ? c10::IValue(grads[1]) : c10::IValue()},
                                             {"transpose", !args["transpose"].toBool()}})
                                      .call();
    return {q_grad, has_k ? k_grad : at::Tensor(), at::Tensor()};
  }
};

void refuse_tracked_constants(const c10::OperatorHandle& op, const torch::jit::Stack& stack, size_t num_arguments) {
  for (const char* name : {"inv_freq", "cos", "sin"}) {
    const c10::IValue& value = torch::jit::peek(stack, argument_index(name), num_arguments);
    TORCH_CHECK(!(value.isTensor() && value.toTensor().requires_grad()), "pe_ext: ", name,
                " requires grad, but rotary treats cos, sin and inv_freq as constants (as Hugging Face's buffers are) ",
                "and computes no gradient for them; pass ", name, ".detach()");
  }
}

void rotary_autograd(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  static const size_t num_arguments = op.schema().arguments().size();
  const auto tracked = [&](const char* name) {
    const c10::IValue& value = torch::jit::peek(*stack, argument_index(name), num_arguments);
    return value.isTensor() && value.toTensor().requires_grad();
  };
  if (!at::GradMode::is_enabled() || (!tracked("q") && !tracked("k"))) {
    if (at::GradMode::is_enabled()) refuse_tracked_constants(op, *stack, num_arguments);
    // Nothing to differentiate (inference, decoding): no graph node and no saved state.
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(*stack);
    return;
  }
  refuse_tracked_constants(op, *stack, num_arguments);
  const RotaryArguments args(torch::jit::pop(*stack, num_arguments));
  const c10::IValue& k = args["k"];
  const variable_list outputs =
      Rotary::apply(args["q"].toTensor(), k.isTensor() ? std::optional<at::Tensor>(k.toTensor()) : std::nullopt, args);
  torch::jit::push(*stack, outputs[0], outputs[1]);
}

}  // namespace
}  // namespace pe_ext::rotary

TORCH_LIBRARY_IMPL(pe_ext, Autograd, m) {
  m.impl("rotary", torch::CppFunction::makeFromBoxedFunction<&pe_ext::rotary::rotary_autograd>());
}
