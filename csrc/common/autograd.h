// Autograd for pe_ext's ops, written as torch writes its own (the derivatives.yaml codegen): boxed kernels, generic
// over an op family, that find arguments by their schema names.
//   differentiable<D>()    Autograd kernel of a functional op: a graph node per call that saves what backward
//                          needs (with the version checks of torch's SavedVariable), and forward-mode tangents set
//                          on the outputs. Plain nodes, unlike torch::autograd::Function, work under torch.func.
//   in_place_as_copy<D>()  Autograd kernel of an in-place op: when autograd tracks any argument, the call is recorded
//                          as the out-of-place op followed by copy_ into the written tensor, so torch's in-place rules
//                          (leaf errors, views, version counters, forward AD) hold as they do for torch's own ops.
//   refuse_tracked_out()   Autograd kernel of an out= op: refuses tracked arguments, as torch's out= ops do.
//   bump_versions()        ADInplaceOrView kernel of any mutating op: refuses inference tensors outside inference
//                          mode before writing, then bumps the version counter of every argument the schema marks
//                          written (Tensor(a!)).
// Without anything to track, each Autograd kernel goes straight below autograd: no node, no saved state.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <cstddef>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace pe_ext::autograd {

using torch::autograd::variable_list;

// The index of the argument `name` in the op's schema (an internal error if it has none).
size_t argument_index(const c10::FunctionSchema& schema, const char* name);

// An op's arguments as the dispatcher passes them, addressed by name.
class OpArguments {
 public:
  OpArguments(c10::OperatorHandle op, std::vector<c10::IValue> values)
      : op_(std::move(op)), values_(std::move(values)) {}

  const c10::IValue& operator[](const char* name) const { return values_[index(name)]; }
  // The tensor argument `name`, undefined when it is None.
  at::Tensor tensor(const char* name) const;

  // A copy with some arguments replaced.
  OpArguments with(std::initializer_list<std::pair<const char*, c10::IValue>> changes) const;
  // Arguments for another op: each of its arguments taken from `changes`, else from the argument of the same name
  // here, else its schema default.
  OpArguments for_op(const c10::OperatorHandle& other,
                     std::initializer_list<std::pair<const char*, c10::IValue>> changes) const;

  // The op on these arguments through the dispatcher (so that autograd records it, for double backward), and its
  // result, or its first result.
  at::Tensor call() const;
  std::vector<at::Tensor> call_all() const;

  const c10::OperatorHandle& op() const { return op_; }
  const std::vector<c10::IValue>& values() const { return values_; }
  std::vector<c10::IValue>& values() { return values_; }

 private:
  size_t index(const char* name) const { return argument_index(op_.schema(), name); }

  c10::OperatorHandle op_;
  std::vector<c10::IValue> values_;
};

// torch 2.11 holds autograd nodes in std::shared_ptr, later versions in c10::intrusive_ptr: whichever Edge uses.
using NodePtr = decltype(torch::autograd::Edge::function);

template <typename T>
NodePtr make_node() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<T>();
  } else {
    return c10::make_intrusive<T>();
  }
}

namespace detail {

// Where D's argument names sit in the op's schema.
struct Signature {
  size_t num_arguments;
  std::vector<size_t> inputs;  // D::kInputs, in order
  std::vector<bool> saved;     // per argument: whether backward keeps it (all but D::kUnsaved)
};

template <typename D>
Signature signature_of(const c10::FunctionSchema& schema) {
  Signature s{schema.arguments().size(), {}, std::vector<bool>(schema.arguments().size(), true)};
  for (const char* name : D::kInputs) s.inputs.push_back(argument_index(schema, name));
  for (const char* name : D::kUnsaved) s.saved[argument_index(schema, name)] = false;
  return s;
}

// Whether any tensor argument on the stack requires grad (with grad mode on) or carries a forward-mode tangent.
bool tracked(const torch::jit::Stack& stack, size_t num_arguments, const std::vector<size_t>& indices);
bool any_tracked(const torch::jit::Stack& stack, size_t num_arguments);

// The graph node of one call: the op's arguments (tensors in SavedVariables, unless unsaved) and the formula.
class SavedArguments {
 public:
  void save(const OpArguments& args, const std::vector<bool>& saved);
  OpArguments unpack() const;
  void release();  // after backward without retain_graph: a second backward then raises torch's error

 private:
  std::optional<c10::OperatorHandle> op_;
  std::vector<c10::IValue> values_;  // tensors replaced by None
  std::vector<std::pair<size_t, torch::autograd::SavedVariable>> tensors_;
};

template <typename D>
struct DerivativeNode : torch::autograd::Node {
  SavedArguments saved;
  std::string op_name;

  std::string name() const override { return op_name + "Backward"; }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<bool> wanted(num_outputs());
    bool any_wanted = false;
    for (size_t i = 0; i < wanted.size(); ++i) any_wanted |= wanted[i] = task_should_compute_output(i);
    if (!any_wanted) return variable_list(num_outputs());
    for (size_t k = 0; k < grads.size(); ++k) {
      if (!grads[k].defined()) grads[k] = input_metadata(k).zeros_like();
    }
    return D::backward(saved.unpack(), grads, wanted);
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    saved.release();
  }
};

// The outputs' tangents, from D::jvp on the primal arguments and the inputs' tangents (undefined: zero).
template <typename D>
void set_tangents(const OpArguments& args, const Signature& s, const std::vector<at::Tensor>& outputs) {
  OpArguments primals = args;
  std::vector<at::Tensor> tangents(s.inputs.size());
  for (size_t i = 0; i < s.inputs.size(); ++i) {
    c10::IValue& value = primals.values()[s.inputs[i]];
    if (!value.isTensor() || !torch::autograd::isFwGradDefined(value.toTensor())) continue;
    tangents[i] = value.toTensor()._fw_grad(/*level=*/0);
    value = value.toTensor()._fw_primal(/*level=*/0);
  }
  const std::vector<at::Tensor> output_tangents = D::jvp(primals, tangents);
  for (size_t k = 0; k < outputs.size(); ++k) {
    if (output_tangents[k].defined()) outputs[k]._set_fw_grad(output_tangents[k], /*level=*/0, /*is_inplace_op=*/false);
  }
}

template <typename D>
void differentiable_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  static const Signature s = signature_of<D>(op.schema());
  if (!tracked(*stack, s.num_arguments, s.inputs)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.callBoxed(*stack);
    return;
  }
  const OpArguments args(op, torch::jit::pop(*stack, s.num_arguments));
  bool requires_grad = false, has_tangent = false;
  torch::autograd::edge_list edges;
  for (size_t i : s.inputs) {
    const c10::IValue& value = args.values()[i];
    const at::Tensor t = value.isTensor() ? value.toTensor() : at::Tensor();
    requires_grad |= t.defined() && t.requires_grad();
    has_tangent |= torch::autograd::isFwGradDefined(t);
    edges.push_back(t.defined() ? torch::autograd::impl::gradient_edge(t) : torch::autograd::Edge());
  }
  NodePtr node;
  if (requires_grad && at::GradMode::is_enabled()) {
    node = make_node<DerivativeNode<D>>();
    auto& derivative = static_cast<DerivativeNode<D>&>(*node);
    derivative.op_name = op.schema().name();
    derivative.saved.save(args, s.saved);
    node->set_next_edges(std::move(edges));
  }
  std::vector<at::Tensor> outputs;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    outputs = args.call_all();
  }
  if (node) torch::autograd::set_history(outputs, node);
  if (has_tangent) set_tangents<D>(args, s, outputs);
  for (auto& output : outputs) torch::jit::push(*stack, std::move(output));
}

template <typename D>
void in_place_as_copy_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t num_arguments = op.schema().arguments().size();
  if (!any_tracked(*stack, num_arguments)) {
    at::AutoDispatchBelowAutograd guard;  // the ADInplaceOrView kernel still bumps the version
    op.callBoxed(*stack);
    return;
  }
  const OpArguments args(op, torch::jit::pop(*stack, num_arguments));
  if constexpr (std::is_array_v<decltype(D::kWritten)>) {  // several written arguments: all values first
    const std::vector<at::Tensor> values = D::out_of_place(args);
    for (size_t i = 0; i < std::size(D::kWritten); ++i) {
      const at::Tensor written = args.tensor(D::kWritten[i]);
      if (written.defined()) written.copy_(values[i]);
    }
  } else {
    args.tensor(D::kWritten).copy_(D::out_of_place(args));
  }
}

void refuse_tracked_out_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack);
void bump_versions_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack);

}  // namespace detail

// The Autograd kernel of a functional op. D supplies:
//   static constexpr const char* kInputs[]   its differentiable Tensor / Tensor? arguments
//   static constexpr const char* kUnsaved[]  arguments backward never reads (not kept alive by the graph)
//   static variable_list backward(const OpArguments& saved, const variable_list& grads,
//                                 const std::vector<bool>& wanted)
//       a gradient per kInputs entry (undefined where not wanted); grads: one per output, zeros where unused
//   static std::vector<at::Tensor> jvp(const OpArguments& primals, const std::vector<at::Tensor>& tangents)
//       a tangent per output, from a tangent per kInputs entry (undefined: zero)
// Both formulas should call ops through the dispatcher, so that they are differentiable in turn.
template <typename D>
torch::CppFunction differentiable() {
  return torch::CppFunction::makeFromBoxedFunction<&detail::differentiable_kernel<D>>();
}

// The Autograd kernel of an in-place op. D supplies:
//   static constexpr const char* kWritten   the argument written
//   static at::Tensor out_of_place(const OpArguments& args)   the value written, from a differentiable op
// or, for an op that writes several arguments:
//   static constexpr const char* kWritten[]   the arguments written (those passed as None are skipped)
//   static std::vector<at::Tensor> out_of_place(const OpArguments& args)   a value per kWritten entry
template <typename D>
torch::CppFunction in_place_as_copy() {
  return torch::CppFunction::makeFromBoxedFunction<&detail::in_place_as_copy_kernel<D>>();
}

inline torch::CppFunction refuse_tracked_out() {
  return torch::CppFunction::makeFromBoxedFunction<&detail::refuse_tracked_out_kernel>();
}

inline torch::CppFunction bump_versions() {
  return torch::CppFunction::makeFromBoxedFunction<&detail::bump_versions_kernel>();
}

}  // namespace pe_ext::autograd
