// The family's vmap support (common/batching.h): rotary_ computes sample by sample, and rotary folds the vmapped
// dimension into its own batch dimension where that gives the same values in one call: q and k alone vmapped (per-
// sample gradients, batched backward formulas), along the same dimension, with batch-first layouts and positions, if
// any, shared by the batch.
#include <torch/library.h>

#include "common/autograd.h"
#include "common/batching.h"

namespace pe_ext::rotary {
namespace {

using batching::BatchDims;

std::optional<std::vector<at::Tensor>> fold_rotary(const autograd::OpArguments& args, const BatchDims& dims) {
  const auto& schema = args.op().schema();
  const size_t q_index = autograd::argument_index(schema, "q"), k_index = autograd::argument_index(schema, "k");
  const bool has_k = args.tensor("k").defined();
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] && i != q_index && i != k_index) return std::nullopt;
  }
  const at::Tensor positions = args.tensor("positions");
  const bool batch_first = args["layout"].toStringRef() != "thd";
  if (!dims[q_index] || (has_k && !dims[k_index]) || !batch_first || (positions.defined() && positions.dim() != 1)) {
    return std::nullopt;  // computed sample by sample (where the op also reports bad arguments)
  }
  // (vmapped, batch, ...) samples -> (vmapped * batch, ...), and back.
  const at::Tensor q = args.tensor("q").movedim(*dims[q_index], 0);
  const at::Tensor k = has_k ? args.tensor("k").movedim(*dims[k_index], 0) : at::Tensor();
  if (q.dim() != 5 || (has_k && k.dim() != 5)) return std::nullopt;
  auto folded = [](const at::Tensor& t) { return t.flatten(0, 1); };
  const std::vector<at::Tensor> out =
      args.with({{"q", folded(q)}, {"k", has_k ? c10::IValue(folded(k)) : c10::IValue()}}).call_all();
  // Without k, the second output is an empty tensor per sample.
  return std::vector<at::Tensor>{out[0].unflatten(0, {q.size(0), q.size(1)}),
                                 has_k ? out[1].unflatten(0, {k.size(0), k.size(1)}) : out[1].expand({q.size(0), 0})};
}

}  // namespace
}  // namespace pe_ext::rotary

TORCH_LIBRARY_IMPL(pe_ext, FuncTorchBatched, m) {
  m.impl("rotary", pe_ext::batching::by_fold<&pe_ext::rotary::fold_rotary>());
  m.impl("rotary_", pe_ext::batching::by_loop());
}
