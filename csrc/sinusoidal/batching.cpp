// The family's vmap support (common/batching.h): every op computes sample by sample, and add_pe folds the vmapped
// dimension into its own batch dimension where that gives the same values in one call: x alone vmapped (per-sample
// gradients, batched backward formulas), no dropout (whose mask depends on an element's index in the call), and
// positions, if any, shared along the sequence.
#include <torch/library.h>

#include "common/autograd.h"
#include "common/batching.h"

namespace pe_ext::sinusoidal {
namespace {

using batching::BatchDims;

std::optional<std::vector<at::Tensor>> fold_add_pe(const autograd::OpArguments& args, const BatchDims& dims) {
  const size_t x_index = autograd::argument_index(args.op().schema(), "x");
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] && i != x_index) return std::nullopt;
  }
  const at::Tensor x = args.tensor("x").movedim(*dims[x_index], 0);  // (vmapped, *sample)
  const int64_t sample_dims = x.dim() - 1, seq_dim = args["seq_dim"].toInt();
  const at::Tensor positions = args.tensor("positions");
  const bool valid_seq_dim = seq_dim >= -sample_dims && seq_dim < sample_dims - 1 && seq_dim != -1;
  if (args["dropout"].toDouble() > 0 || (sample_dims != 2 && sample_dims != 3) || !valid_seq_dim ||
      (positions.defined() && positions.dim() != 1)) {
    return std::nullopt;  // computed sample by sample (where the op also reports bad arguments)
  }
  const int64_t vmapped = x.size(0), d_model = x.size(-1);
  if (sample_dims == 2) {  // (seq_len, d_model) samples: the vmapped dimension is the batch
    return std::vector<at::Tensor>{args.with({{"x", x}, {"seq_dim", int64_t{1}}}).call()};
  }
  if (seq_dim == 1 || seq_dim == -2) {  // (batch, seq_len, d_model) samples: (vmapped * batch, seq_len, d_model)
    const at::Tensor out = args.with({{"x", x.reshape({-1, x.size(2), d_model})}}).call();
    return std::vector<at::Tensor>{out.reshape(x.sizes())};
  }
  // (seq_len, batch, d_model) samples: (seq_len, vmapped * batch, d_model)
  const at::Tensor seq_first = x.transpose(0, 1).reshape({x.size(1), -1, d_model});
  const at::Tensor out = args.with({{"x", seq_first}}).call();
  return std::vector<at::Tensor>{out.reshape({x.size(1), vmapped, x.size(2), d_model}).transpose(0, 1)};
}

}  // namespace
}  // namespace pe_ext::sinusoidal

TORCH_LIBRARY_IMPL(pe_ext, FuncTorchBatched, m) {
  m.impl("add_pe", pe_ext::batching::by_fold<&pe_ext::sinusoidal::fold_add_pe>());
  for (const char* op : {"add_pe_", "add_pe_out", "fill_table_"}) m.impl(op, pe_ext::batching::by_loop());
}
