// The generic FuncTorchBatched kernel of common/batching.h.
#include "common/batching.h"

#include <ATen/functorch/BatchedTensorImpl.h>
#include <ATen/ops/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <utility>

namespace pe_ext::batching::detail {
namespace {

// The op on the index-th sample of every vmapped argument.
std::vector<at::Tensor> call_sample(const autograd::OpArguments& args, const BatchDims& dims, int64_t index) {
  autograd::OpArguments sample = args;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i]) sample.values()[i] = sample.values()[i].toTensor().select(*dims[i], index);
  }
  return sample.call_all();
}

std::vector<at::Tensor> loop(const autograd::OpArguments& args, const BatchDims& dims, int64_t batch_size) {
  std::vector<std::vector<at::Tensor>> samples;
  for (int64_t index = 0; index < batch_size; ++index) samples.push_back(call_sample(args, dims, index));
  std::vector<at::Tensor> outputs;
  for (size_t k = 0; k < (samples.empty() ? 0 : samples[0].size()); ++k) {
    std::vector<at::Tensor> parts;
    for (const auto& sample : samples) parts.push_back(sample[k]);
    outputs.push_back(at::stack(parts));
  }
  return outputs;
}

// The innermost vmap level among the arguments: the level being computed (functorch's own plumbing reads it from
// its layer stack, whose header this build cannot include; an outer level's turn comes when the call below pops
// the inner ones).
int64_t innermost_level(const std::vector<c10::IValue>& values) {
  int64_t level = -1;
  for (const c10::IValue& value : values) {
    if (!value.isTensor()) continue;
    if (const auto* batched = at::functorch::maybeGetBatchedImpl(value.toTensor())) {
      level = std::max(level, batched->level());
    }
  }
  return level;
}

}  // namespace

void batched_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack, FoldRule fold) {
  c10::impl::ExcludeDispatchKeyGuard guard(c10::DispatchKey::FuncTorchBatched);
  const auto& arguments = op.schema().arguments();
  autograd::OpArguments args(op, torch::jit::pop(*stack, arguments.size()));
  const int64_t level = innermost_level(args.values());
  BatchDims dims(arguments.size());
  int64_t batch_size = -1;
  for (size_t i = 0; i < arguments.size(); ++i) {
    c10::IValue& value = args.values()[i];
    const auto* batched = value.isTensor() ? at::functorch::maybeGetBatchedImpl(value.toTensor()) : nullptr;
    if (batched == nullptr || batched->level() != level) continue;
    at::Tensor unwrapped = batched->value();  // before `value` (which owns *batched) is replaced
    dims[i] = batched->bdim();
    batch_size = unwrapped.size(*dims[i]);
    value = std::move(unwrapped);
  }
  for (size_t i = 0; i < arguments.size(); ++i) {
    const c10::AliasInfo* alias = arguments[i].alias_info();
    const bool written = alias != nullptr && alias->isWrite() && args.values()[i].isTensor();  // None: nothing written
    TORCH_CHECK(batch_size < 0 || !written || dims[i].has_value(), "pe_ext: vmap of ", op.schema().name(), " writes ",
                arguments[i].name(),
                ", which is not vmapped while other arguments are; vmap over it too, or write into a batched tensor");
  }
  std::optional<std::vector<at::Tensor>> outputs;
  if (batch_size < 0) {
    outputs = args.call_all();
  } else {
    if (fold != nullptr) outputs = fold(args, dims);
    if (!outputs) outputs = loop(args, dims, batch_size);
    for (auto& output : *outputs) output = at::functorch::makeBatched(output, 0, level);
  }
  for (auto& output : *outputs) torch::jit::push(*stack, std::move(output));
}

}  // namespace pe_ext::batching::detail
