// The op schemas, the argument checks every backend shares, and the Python module's build information.
#include "sinusoidal/ops.h"

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/aminmax.h>
#include <torch/library.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "sinusoidal/math.h"

namespace pe_ext {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

PeSpec make_spec(const KeywordArgs& e, int64_t d_model) {
  TORCH_CHECK_VALUE(e.layout == "interleaved" || e.layout == "concatenated",
                    "pe_ext: layout must be 'interleaved' or 'concatenated', got '", e.layout, "'");
  const Layout layout = e.layout == "interleaved" ? Layout::kInterleaved : Layout::kConcatenated;
  if (e.frequencies == "paper") {
    TORCH_CHECK_VALUE(std::isfinite(e.base) && e.base > 0, "pe_ext: base must be a positive finite number, got ",
                      e.base);
    return paper_spec(d_model, e.base, layout, e.precise_angle);
  }
  TORCH_CHECK_VALUE(e.frequencies == "timescales", "pe_ext: frequencies must be 'paper' or 'timescales', got '",
                    e.frequencies, "'");
  TORCH_CHECK_VALUE(std::isfinite(e.min_timescale) && std::isfinite(e.max_timescale) && e.min_timescale > 0 &&
                        e.max_timescale >= e.min_timescale,
                    "pe_ext: timescales need finite 0 < min_timescale <= max_timescale, got min_timescale=",
                    e.min_timescale, ", max_timescale=", e.max_timescale);
  return timescale_spec(d_model, e.min_timescale, e.max_timescale, layout, e.precise_angle);
}

void check_offset(int64_t offset, int64_t seq_len) {
  TORCH_CHECK_VALUE(offset >= 0, "pe_ext: offset must be >= 0, got ", offset);
  TORCH_CHECK_VALUE(offset <= std::numeric_limits<int64_t>::max() - seq_len, "pe_ext: offset (", offset,
                    ") + seq_len (", seq_len, ") overflows int64");
}

// Adds the keyword arguments about positions and alpha to p (whose out is already batch-first) and returns one past
// the largest position the call uses. `like` is x (or out when building a table) in its own layout; to_batch_first
// views a tensor shaped like its leading dimensions the way p's tensors are viewed. Explicit positions are read
// here (one device sync on CUDA) so that bad ones are refused before anything is written.
template <typename ToBatchFirst>
int64_t attach_keywords(AddPeProblem& p, const KeywordArgs& k, const at::Tensor& like, ToBatchFirst to_batch_first) {
  TORCH_CHECK_VALUE(k.padding_idx >= -1, "pe_ext: padding_idx must be >= 0, or -1 for none; got ", k.padding_idx);
  p.padding_idx = k.padding_idx;
  TORCH_CHECK_VALUE(k.dropout >= 0 && k.dropout < 1, "pe_ext: dropout must be in [0, 1), got ", k.dropout);
  p.dropout = k.dropout;
  p.seed = static_cast<uint64_t>(k.seed);
  if (k.alpha.has_value() && k.alpha->defined()) {
    const at::Tensor& alpha = *k.alpha;
    TORCH_CHECK_VALUE(alpha.numel() == 1, "pe_ext: alpha must hold one value (a 0-dim tensor), got shape ",
                      alpha.sizes());
    TORCH_CHECK_TYPE(is_supported_dtype(alpha.scalar_type()), "pe_ext: alpha must be a floating tensor, got ",
                     alpha.scalar_type());
    TORCH_CHECK_VALUE(alpha.device() == like.device(), "pe_ext: alpha is on ", alpha.device(), " but x is on ",
                      like.device());
    p.alpha = alpha.reshape({}).to(like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  }
  check_offset(p.offset, p.seq_len());
  if (!k.positions.has_value() || !k.positions->defined()) return p.offset + p.seq_len();

  const at::Tensor& positions = *k.positions;
  const at::IntArrayRef leading = like.sizes().slice(0, like.dim() - 1);
  TORCH_CHECK_TYPE(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt,
                   "pe_ext: positions must be an int64 or int32 tensor, got ", positions.scalar_type());
  TORCH_CHECK_VALUE(positions.device() == like.device(), "pe_ext: positions is on ", positions.device(),
                    " but x is on ", like.device());
  const bool per_element = positions.sizes() == leading;
  TORCH_CHECK_VALUE(per_element || (positions.dim() == 1 && positions.size(0) == p.seq_len()),
                    "pe_ext: positions must have shape ", leading, " (one per element of x but d_model) or (",
                    p.seq_len(), ",) (shared by the batch), got ", positions.sizes());
  const at::Tensor ids = positions.to(at::kLong);
  p.positions = per_element ? to_batch_first(ids) : ids.unsqueeze(0).expand({p.batch(), p.seq_len()});
  if (ids.numel() == 0) return p.offset;
  const auto [low, high] = at::aminmax(ids);
  const int64_t min_id = low.item<int64_t>(), max_id = high.item<int64_t>();
  TORCH_CHECK_VALUE(min_id >= 0, "pe_ext: positions must be >= 0, got ", min_id);
  TORCH_CHECK_VALUE(max_id < std::numeric_limits<int64_t>::max() - p.offset, "pe_ext: offset (", p.offset,
                    ") + positions (up to ", max_id, ") overflows int64");
  return p.offset + max_id + 1;
}

// Whether t's elements provably lie at distinct addresses: with its dimensions of size > 1 sorted by stride, each
// stride steps past everything the smaller ones reach. Expanded (stride 0) and overlapping as_strided views fail;
// so do a few exotic non-overlapping layouts, which are refused rather than guessed at.
bool has_distinct_elements(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;  // the largest element offset the smaller dimensions reach
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) return false;
    reach += (size - 1) * stride;
  }
  return true;
}

void check_distinct_elements(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(has_distinct_elements(t), "pe_ext: ", name,
                    " has elements that share memory (an expanded or overlapping view); it cannot be written to. "
                    "Pass a tensor with distinct elements, e.g. ", name, ".contiguous()");
}

// Whether the address ranges a and b span in one storage intersect. Conservative: interleaved views of one buffer
// count as overlapping.
bool share_memory(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || !a.storage().is_alias_of(b.storage())) return false;
  auto span = [](const at::Tensor& t) {
    int64_t last = 0;
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    const auto start = reinterpret_cast<std::uintptr_t>(t.const_data_ptr());
    return std::make_pair(start, start + static_cast<std::uintptr_t>((last + 1) * t.element_size()));
  };
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

void check_no_shared_memory(const at::Tensor& written, const char* name, const at::Tensor& read,
                            const char* read_name) {
  TORCH_CHECK_VALUE(!share_memory(written, read), "pe_ext: ", name, "'s memory overlaps ", read_name,
                    "'s, which the op still reads while writing ", name, "; pass a separate tensor (e.g. ",
                    read_name, ".clone())");
}

// add_pe_, add_pe_out and fill_table_ have no autograd formula: writing a tensor autograd tracks, or filling one
// from tracked inputs, would silently lose gradients, so they refuse while grad mode is on (as torch's out= ops do).
void check_untracked(const c10::optional<at::Tensor>& t, const char* name, const char* op) {
  TORCH_CHECK(!(t.has_value() && t->defined() && at::GradMode::is_enabled() && t->requires_grad()), "pe_ext: ",
              name, " requires grad, but ", op,
              " has no autograd formula; use the out-of-place add_sinusoidal_pe, or run under torch.no_grad()");
}

// The (rows, d_model) view of a table given as (rows, d_model) or as the module's (1, rows, d_model) buffer.
at::Tensor checked_table(const at::Tensor& table, const at::Tensor& x, int64_t d_model, int64_t last_position) {
  TORCH_CHECK_VALUE(table.dim() == 2 || (table.dim() == 3 && table.size(0) == 1),
                    "pe_ext: table must have shape (rows, d_model) or (1, rows, d_model), got ", table.sizes());
  at::Tensor rows = table.dim() == 3 ? table.select(0, 0) : table;
  TORCH_CHECK_VALUE(rows.size(1) == d_model, "pe_ext: table's last dimension (", rows.size(1),
                    ") must equal x's last dimension d_model (", d_model, ")");
  TORCH_CHECK_VALUE(table.device() == x.device(), "pe_ext: table is on ", table.device(), " but x is on ",
                    x.device(), "; move them to the same device (module.to(x.device))");
  TORCH_CHECK_TYPE(table.scalar_type() == x.scalar_type() || table.scalar_type() == at::kFloat,
                   "pe_ext: table must be float32 or x's dtype (", x.scalar_type(), "), got ",
                   table.scalar_type());
  TORCH_CHECK_VALUE(last_position <= rows.size(0), "pe_ext: positions up to ", last_position - 1, " need ",
                    last_position, " table rows, but the table has ", rows.size(0),
                    " (max_len); raise max_len or compute on the fly (no table)");
  return rows;
}

}  // namespace

AddPeProblem prepare_add_pe(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset,
                            double scale, int64_t seq_dim, const KeywordArgs& keywords, const at::Tensor& out,
                            Write write) {
  TORCH_CHECK_VALUE(x.dim() == 2 || x.dim() == 3,
                    "pe_ext: x must be 2-D (seq_len, d_model) or 3-D (batch, seq_len, d_model) or "
                    "(seq_len, batch, d_model), got a ", x.dim(), "-D tensor of shape ", x.sizes());
  TORCH_CHECK_TYPE(is_supported_dtype(x.scalar_type()),
                   "pe_ext: x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  const int64_t allowed_seq_dims = x.dim() - 1;  // the position dimension is never the last (d_model) one
  TORCH_CHECK_VALUE(seq_dim >= -x.dim() && seq_dim < allowed_seq_dims && seq_dim != -1,
                    "pe_ext: seq_dim must index a dimension of x other than the last (d_model); got ", seq_dim,
                    " for a ", x.dim(), "-D x");
  TORCH_CHECK_VALUE(std::isfinite(scale), "pe_ext: scale must be finite, got ", scale);
  const PeSpec spec = make_spec(keywords, x.size(-1));
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), "pe_ext: out must have x's shape ", x.sizes(), ", got ", out.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == x.scalar_type(), "pe_ext: out must have x's dtype (", x.scalar_type(),
                   "), got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == x.device(), "pe_ext: out is on ", out.device(), " but x is on ", x.device());
  const bool has_table = table.has_value() && table->defined();
  if (write != Write::kNew) {
    const char* op = write == Write::kInPlace ? "add_pe_ (in place)" : "add_pe_out (out=)";
    check_untracked(x, "x", op);
    check_untracked(table, "table", op);
    check_untracked(keywords.alpha, "alpha", op);
    if (write == Write::kOut) check_untracked(out, "out", op);
  }
  const char* out_name = write == Write::kInPlace ? "x" : "out";
  check_distinct_elements(out, out_name);
  if (write != Write::kInPlace) check_no_shared_memory(out, "out", x, "x");

  // Batch-first (batch, seq_len, d_model) views.
  const int64_t dim = seq_dim < 0 ? seq_dim + x.dim() : seq_dim;
  auto batch_first = [&](const at::Tensor& t) {
    if (t.dim() == 2) return t.unsqueeze(0);
    return dim == 0 ? t.transpose(0, 1) : t;
  };
  AddPeProblem p;
  p.x = batch_first(x);
  p.out = batch_first(out);
  p.offset = offset;
  p.scale = scale;
  p.spec = spec;
  const int64_t last_position = attach_keywords(p, keywords, x, [&](const at::Tensor& ids) {
    return ids.dim() == 1 ? ids.unsqueeze(0) : (dim == 0 ? ids.transpose(0, 1) : ids);
  });
  if (has_table) {
    p.table = checked_table(*table, x, p.d_model(), last_position);
    check_no_shared_memory(out, out_name, *table, "table");
  }
  return p;
}

AddPeProblem prepare_fill_table(const at::Tensor& out, int64_t offset, const KeywordArgs& keywords) {
  TORCH_CHECK_VALUE(out.dim() == 2, "pe_ext: out must be 2-D (num_positions, d_model), got shape ", out.sizes());
  TORCH_CHECK_TYPE(is_supported_dtype(out.scalar_type()),
                   "pe_ext: out must be float32, float64, float16 or bfloat16, got ", out.scalar_type());
  const PeSpec spec = make_spec(keywords, out.size(1));
  check_untracked(out, "out", "fill_table_");
  check_untracked(keywords.alpha, "alpha", "fill_table_");
  check_distinct_elements(out, "out");
  AddPeProblem p;
  p.out = out.unsqueeze(0);
  p.offset = offset;
  p.spec = spec;
  attach_keywords(p, keywords, out, [](const at::Tensor& ids) { return ids.unsqueeze(0); });
  return p;
}

}  // namespace pe_ext

// The schemas, declared once. Backends register kernels with TORCH_LIBRARY_IMPL beside their code.
// The keyword arguments every op ends with:
//   base               frequencies = "paper": freq(i) = base^(-2i / d_model)
//   min/max_timescale  frequencies = "timescales" (tensor2tensor, fairseq): periods from min to max, geometrically
//   layout             "interleaved" (sin, cos, sin, cos, ...) or "concatenated" (all sin, then all cos)
//   precise_angle      form and reduce the angle in double before the float32 sin/cos (accurate at any position)
//   positions          int position ids shaped like x without d_model, or (seq_len,) for the whole batch; the
//                      position of an element is offset + its id (default: offset + its index along seq_dim)
//   padding_idx        the position whose pe is zero (fairseq's padding), -1 for none
//   alpha              a 0-dim tensor multiplying pe (ESPnet's learnable alpha), None for 1
//   dropout, seed      fused dropout of the result: the mask is a function of (seed, element), so backward
//                      recomputes it and CPU and CUDA agree
#define PE_KEYWORD_SCHEMA                                                                                     \
  "float base=10000.0, str layout=\"interleaved\", str frequencies=\"paper\", float min_timescale=1.0, " \
  "float max_timescale=10000.0, bool precise_angle=False, Tensor? positions=None, int padding_idx=-1, "    \
  "Tensor? alpha=None, float dropout=0.0, int seed=0"

TORCH_LIBRARY(pe_ext, m) {
  // out = x * scale + pe(offset + l) along dimension seq_dim of x; pe read from table when given, else computed.
  m.def("add_pe(Tensor x, Tensor? table=None, SymInt offset=0, float scale=1.0, int seq_dim=1, *, " PE_KEYWORD_SCHEMA
        ") -> Tensor");
  // The same, written into x.
  m.def("add_pe_(Tensor(a!) x, Tensor? table=None, SymInt offset=0, float scale=1.0, int seq_dim=1, *, "
        PE_KEYWORD_SCHEMA ") -> ()");
  // The same, written into a preallocated out of x's shape and dtype that does not overlap x.
  m.def("add_pe_out(Tensor x, Tensor? table, SymInt offset, float scale, int seq_dim, Tensor(a!) out, *, "
        PE_KEYWORD_SCHEMA ") -> ()");
  // out[p, :] = pe(offset + p, :): the table, built where out lives.
  m.def("fill_table_(Tensor(a!) out, SymInt offset=0, *, " PE_KEYWORD_SCHEMA ") -> ()");
  // Test only: runs the CUDA kernel's per-thread body over the CUDA launch grid, on the CPU.
  m.def("_cuda_grid_emulator(Tensor(a!) out, Tensor? x, Tensor? table, SymInt offset, float scale, int seq_dim, "
        "int num_sms, *, " PE_KEYWORD_SCHEMA ") -> ()");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pe_ext compiled ops; loading this module registers torch.ops.pe_ext.*";
  m.def("built_with_cuda", [] {
#ifdef PE_EXT_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA kernels were compiled into this build");
}
