// vmap (torch.func) for pe_ext's ops: a boxed FuncTorchBatched kernel, generic over an op family, that unwraps the
// arguments vmapped at the current level and then either
//   - calls the family's fold rule, which computes the whole batch in one call of the op (the vmapped dimension
//     folded into the op's own batch dimension), where the rule applies, or
//   - calls the op once per vmapped sample and stacks the results: vmap's definition, for any op, mutating ones
//     included (each sample's slice of a written tensor is a view, written in place).
// torch's own loop fallback refuses ops that write their arguments, and warns on the others.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "common/autograd.h"

namespace pe_ext::batching {

// The vmapped dimension of each argument (nullopt: not vmapped, or not a tensor).
using BatchDims = std::vector<std::optional<int64_t>>;

// A fold rule: the op's outputs with the vmapped dimension first, or nullopt where the rule does not apply. `args`
// hold the unwrapped arguments.
using FoldRule = std::optional<std::vector<at::Tensor>> (*)(const autograd::OpArguments& args, const BatchDims& dims);

namespace detail {
void batched_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack, FoldRule fold);

template <FoldRule fold>
void batched_kernel_with(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  batched_kernel(op, stack, fold);
}
}  // namespace detail

// The FuncTorchBatched kernel that computes sample by sample.
inline torch::CppFunction by_loop() {
  return torch::CppFunction::makeFromBoxedFunction<&detail::batched_kernel_with<nullptr>>();
}

// The FuncTorchBatched kernel that folds the batch with `fold` where it applies, else computes sample by sample.
template <FoldRule fold>
torch::CppFunction by_fold() {
  return torch::CppFunction::makeFromBoxedFunction<&detail::batched_kernel_with<fold>>();
}

}  // namespace pe_ext::batching
