// The non-template parts of common/autograd.h.
#include "common/autograd.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>

namespace pe_ext::autograd {

size_t argument_index(const c10::FunctionSchema& schema, const char* name) {
  const auto index = schema.argumentIndexWithName(name);
  TORCH_INTERNAL_ASSERT(index.has_value(), schema.name(), " has no argument named ", name);
  return *index;
}

at::Tensor OpArguments::tensor(const char* name) const {
  const c10::IValue& value = (*this)[name];
  return value.isTensor() ? value.toTensor() : at::Tensor();
}

OpArguments OpArguments::with(std::initializer_list<std::pair<const char*, c10::IValue>> changes) const {
  OpArguments copy = *this;
  for (const auto& [name, value] : changes) copy.values_[index(name)] = value;
  return copy;
}

OpArguments OpArguments::for_op(const c10::OperatorHandle& other,
                                std::initializer_list<std::pair<const char*, c10::IValue>> changes) const {
  const auto& schema = op_.schema();
  std::vector<c10::IValue> values;
  for (const c10::Argument& argument : other.schema().arguments()) {
    const auto own = schema.argumentIndexWithName(argument.name());
    values.push_back(own ? values_[*own] : argument.default_value().value_or(c10::IValue()));
  }
  OpArguments result(other, std::move(values));
  return result.with(changes);
}

std::vector<at::Tensor> OpArguments::call_all() const {
  torch::jit::Stack stack = values_;
  op_.callBoxed(stack);
  std::vector<at::Tensor> outputs;
  for (auto& value : stack) outputs.push_back(std::move(value).toTensor());
  return outputs;
}

at::Tensor OpArguments::call() const { return call_all().at(0); }

namespace detail {
namespace {

bool is_tracked(const c10::IValue& value) {
  if (!value.isTensor()) return false;
  const at::Tensor& t = value.toTensor();
  return (t.requires_grad() && at::GradMode::is_enabled()) || torch::autograd::isFwGradDefined(t);
}

}  // namespace

bool tracked(const torch::jit::Stack& stack, size_t num_arguments, const std::vector<size_t>& indices) {
  for (size_t i : indices) {
    if (is_tracked(torch::jit::peek(stack, i, num_arguments))) return true;
  }
  return false;
}

bool any_tracked(const torch::jit::Stack& stack, size_t num_arguments) {
  for (size_t i = 0; i < num_arguments; ++i) {
    if (is_tracked(torch::jit::peek(stack, i, num_arguments))) return true;
  }
  return false;
}

void SavedArguments::save(const OpArguments& args, const std::vector<bool>& saved) {
  op_.emplace(args.op());
  values_ = args.values();
  for (size_t i = 0; i < values_.size(); ++i) {
    if (!values_[i].isTensor()) continue;
    if (saved[i]) tensors_.emplace_back(i, torch::autograd::SavedVariable(values_[i].toTensor(), /*is_output=*/false));
    values_[i] = c10::IValue();
  }
}

OpArguments SavedArguments::unpack() const {
  std::vector<c10::IValue> values = values_;
  for (const auto& [index, tensor] : tensors_) values[index] = tensor.unpack();
  return OpArguments(*op_, std::move(values));
}

void SavedArguments::release() {
  for (auto& [index, tensor] : tensors_) tensor.reset_data();
}

void refuse_tracked_out_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  for (size_t i = 0; i < arguments.size(); ++i) {
    TORCH_CHECK(!is_tracked(torch::jit::peek(*stack, i, arguments.size())), "pe_ext: ", arguments[i].name(),
                " requires grad, but ", op.schema().name(),
                " (out=) has no autograd formula, as torch's out= forms have none; call the op without out=, or "
                "run under torch.no_grad()");
  }
  at::AutoDispatchBelowAutograd guard;
  op.callBoxed(*stack);
}

void bump_versions_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  std::vector<at::Tensor> written;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const c10::AliasInfo* alias = arguments[i].alias_info();
    const c10::IValue& value = torch::jit::peek(*stack, i, arguments.size());
    if (alias == nullptr || !alias->isWrite() || !value.isTensor()) continue;
    const at::Tensor& t = value.toTensor();
    TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(), "pe_ext: ", arguments[i].name(),
                " is an inference tensor (made under torch.inference_mode()), which can be written only inside "
                "inference mode; write into a clone, or call under torch.inference_mode()");
    written.push_back(t);
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(*stack);
  }
  for (const at::Tensor& t : written) torch::autograd::increment_version(t);
}

}  // namespace detail
}  // namespace pe_ext::autograd
