// The family's autograd, on common/autograd.h's kernels: C++, so that a call pays no Python autograd layer
// (decoding steps are overhead-bound), and plain graph nodes, so that torch.func's transforms work. The pure-PyTorch
// fallback gets the same formulas from the torch ops it is made of. The op is linear in q and k: each head row is
// multiplied by a block-diagonal matrix R (2x2 rotations by the position's angles, times attention_scaling), so
//   d/dq, d/dk = R^T grad: the forward op on the output gradients with `transpose` flipped
//   tangents   = R tangent: the forward op on the inputs' tangents
// cos, sin and inv_freq are constants (as Hugging Face's buffers are): tensors of them that require grad are refused
// rather than silently given no gradient. rotary_ is recorded as rotary followed by copy_ into q and k.
#include "common/autograd.h"

#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <vector>

namespace pe_ext::rotary {
namespace {

using autograd::OpArguments;
using torch::autograd::variable_list;

const c10::OperatorHandle& rotary_handle() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("pe_ext::rotary", "");
  return op;
}

// The op on (q, k) with the other arguments as given; k's result undefined without k.
std::vector<at::Tensor> rotate(const OpArguments& args, const at::Tensor& q, const at::Tensor& k, bool transpose) {
  const std::vector<at::Tensor> out =
      args.with({{"q", q}, {"k", k.defined() ? c10::IValue(k) : c10::IValue()}, {"transpose", transpose}}).call_all();
  return {out[0], k.defined() ? out[1] : at::Tensor()};
}

struct RotaryDerivatives {
  static constexpr const char* kInputs[] = {"q", "k"};
  static constexpr const char* kUnsaved[] = {"q", "k"};  // the map does not depend on them

  static variable_list backward(const OpArguments& args, const variable_list& grads, const std::vector<bool>& wanted) {
    // k is not saved; its gradient is wanted only where k was given and is tracked.
    variable_list result = rotate(args, grads[0], wanted[1] ? grads[1] : at::Tensor(), !args["transpose"].toBool());
    if (!wanted[0]) result[0] = at::Tensor();
    return result;
  }

  static std::vector<at::Tensor> jvp(const OpArguments& args, const std::vector<at::Tensor>& tangents) {
    const at::Tensor q = args.tensor("q"), k = args.tensor("k");
    const at::Tensor q_t = tangents[0].defined() ? tangents[0] : at::zeros_like(q);
    const at::Tensor k_t = !k.defined() || tangents[1].defined() ? tangents[1] : at::zeros_like(k);
    std::vector<at::Tensor> out = rotate(args, q_t, k_t, args["transpose"].toBool());
    if (!k.defined()) out[1] = at::Tensor();  // the empty second output has no tangent
    return out;
  }
};

// rotary_: (q, k) = rotary(q, k, ...).
struct RotaryInPlace {
  static constexpr const char* kWritten[] = {"q", "k"};
  static std::vector<at::Tensor> out_of_place(const OpArguments& args) {
    return args.for_op(rotary_handle(), {}).call_all();
  }
};

void refuse_tracked_constants(const c10::OperatorHandle& op, const torch::jit::Stack& stack) {
  const size_t num_arguments = op.schema().arguments().size();
  for (const char* name : {"inv_freq", "cos", "sin"}) {
    const c10::IValue& value = torch::jit::peek(stack, autograd::argument_index(op.schema(), name), num_arguments);
    TORCH_CHECK(!(at::GradMode::is_enabled() && value.isTensor() && value.toTensor().requires_grad()), "pe_ext: ", name,
                " requires grad, but rotary treats cos, sin and inv_freq as constants (as Hugging Face's ",
                "buffers are) and computes no gradient for them; pass ", name, ".detach()");
  }
}

template <void (*kernel)(const c10::OperatorHandle&, torch::jit::Stack*)>
void with_constants_refused(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  refuse_tracked_constants(op, *stack);
  kernel(op, stack);
}

}  // namespace
}  // namespace pe_ext::rotary

TORCH_LIBRARY_IMPL(pe_ext, Autograd, m) {
  using pe_ext::rotary::RotaryDerivatives, pe_ext::rotary::RotaryInPlace, pe_ext::rotary::with_constants_refused;
  namespace detail = pe_ext::autograd::detail;
  m.impl("rotary", torch::CppFunction::makeFromBoxedFunction<
                       &with_constants_refused<&detail::differentiable_kernel<RotaryDerivatives>>>());
  m.impl("rotary_", torch::CppFunction::makeFromBoxedFunction<
                        &with_constants_refused<&detail::in_place_as_copy_kernel<RotaryInPlace>>>());
}

TORCH_LIBRARY_IMPL(pe_ext, ADInplaceOrView, m) { m.impl("rotary_", pe_ext::autograd::bump_versions()); }
