// The rotary family's schemas and the argument checks every backend shares (prepare_rotary), which normalize a call
// to a [batch, seq, heads, head_dim] RotaryProblem before anything is written.
#include "rotary/ops.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/div.h>
#include <ATen/ops/pow.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "common/checks.h"

namespace pe_ext::rotary {
namespace {

enum class Layout { kBHSD, kBSHD, kTHD };

Layout parse_layout(c10::string_view layout) {
  if (layout == "bhsd") return Layout::kBHSD;
  if (layout == "bshd") return Layout::kBSHD;
  TORCH_CHECK_VALUE(layout == "thd", "pe_ext: layout must be 'bhsd' (batch, heads, seq, head_dim), 'bshd' (batch, ",
                    "seq, heads, head_dim) or 'thd' (total_tokens, heads, head_dim), got '", layout, "'");
  return Layout::kTHD;
}

Style parse_style(c10::string_view style) {
  if (style == "neox") return Style::kNeox;
  TORCH_CHECK_VALUE(style == "gptj", "pe_ext: style must be 'neox' (rotate_half pairs (i, i + rotary_dim/2)) or ",
                    "'gptj' (interleaved pairs (2i, 2i + 1)), got '", style, "'");
  return Style::kGptj;
}

const char* layout_shape(Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return "(batch, heads, seq, head_dim)";
    case Layout::kBSHD:
      return "(batch, seq, heads, head_dim)";
    default:
      return "(total_tokens, heads, head_dim)";
  }
}

// t as [batch, seq, heads, head_dim].
at::Tensor canonical(const at::Tensor& t, Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return t.transpose(1, 2);
    case Layout::kBSHD:
      return t;
    default:
      return t.unsqueeze(0);
  }
}

void check_qk(const at::Tensor& q, const c10::optional<at::Tensor>& k, Layout layout, c10::string_view name) {
  const int64_t rank = layout == Layout::kTHD ? 3 : 4;
  TORCH_CHECK_VALUE(q.dim() == rank, "pe_ext: q must be ", rank, "-D ", layout_shape(layout), " for layout '", name,
                    "', got shape ", q.sizes());
  check_supported_dtype(q, "q");
  if (!k.has_value()) return;
  TORCH_CHECK_VALUE(k->dim() == rank, "pe_ext: k must be ", rank, "-D ", layout_shape(layout), " like q, got shape ",
                    k->sizes());
  TORCH_CHECK_TYPE(k->scalar_type() == q.scalar_type(), "pe_ext: k must have q's dtype (", q.scalar_type(), "), got ",
                   k->scalar_type());
  check_same_device(*k, "k", q, "q");
  const at::Tensor qc = canonical(q, layout), kc = canonical(*k, layout);
  TORCH_CHECK_VALUE(kc.size(0) == qc.size(0) && kc.size(1) == qc.size(1) && kc.size(3) == qc.size(3),
                    "pe_ext: k must match q in every dimension but heads (q has shape ", q.sizes(), ", k ", k->sizes(),
                    ")");
}

void check_writes(const at::Tensor& q, const c10::optional<at::Tensor>& k, bool in_place) {
  if (!in_place) return;
  check_distinct_elements(q, "q");
  if (!k.has_value()) return;
  check_distinct_elements(*k, "k");
  check_no_shared_memory(*k, "k", q, "q");
}

// Refuses an input the in-place op reads while it writes q or k.
void check_not_written(const RotaryOptions& o, const at::Tensor& q, const c10::optional<at::Tensor>& k) {
  for (const auto& [input, name] : {std::pair{o.cos, "cos"},
                                    {o.sin, "sin"},
                                    {o.inv_freq, "inv_freq"},
                                    {o.positions, "positions"},
                                    {o.cu_seqlens, "cu_seqlens"}}) {
    if (!input.has_value()) continue;
    check_no_shared_memory(q, "q", *input, name);
    if (k.has_value()) check_no_shared_memory(*k, "k", *input, name);
  }
}

int64_t checked_rotary_dim(int64_t rotary_dim, int64_t head_dim, const char* source) {
  TORCH_CHECK_VALUE(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim, "pe_ext: rotary_dim (", source,
                    ") must be even and in [2, head_dim = ", head_dim, "], got ", rotary_dim);
  return rotary_dim;
}

// Hugging Face's default inv_freq, `1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`, computed with the same
// torch ops on the CPU so that it is bitwise HF's (float64 for float64 data). Kept per thread for the last spec: a
// decoding step would pay the ops every call.
at::Tensor host_frequencies(double base, int64_t rotary_dim, at::ScalarType acc) {
  struct Cached {
    double base = 0;
    int64_t rotary_dim = 0;
    at::ScalarType acc = at::kFloat;
    at::Tensor freqs;
  };
  thread_local Cached cached;
  if (!cached.freqs.defined() || cached.base != base || cached.rotary_dim != rotary_dim || cached.acc != acc) {
    const at::Tensor exponents =
        at::arange(0, rotary_dim, 2, at::TensorOptions().dtype(at::kLong)).to(acc).div(rotary_dim);
    cached = {base, rotary_dim, acc, at::pow(base, exponents).reciprocal().contiguous()};
  }
  return cached.freqs;
}

void attach_frequencies(RotaryProblem& p, const RotaryOptions& o, const at::Tensor& q) {
  const at::ScalarType acc = at::toOpMathType(q.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(o.attention_scaling), "pe_ext: attention_scaling must be finite, got ",
                    o.attention_scaling);
  p.attention_scaling = o.attention_scaling;
  if (o.inv_freq.has_value()) {
    const at::Tensor& f = *o.inv_freq;
    TORCH_CHECK_VALUE(f.dim() == 1, "pe_ext: inv_freq must be 1-D (rotary_dim / 2,), got shape ", f.sizes());
    TORCH_CHECK_TYPE(f.scalar_type() == at::kFloat || f.scalar_type() == at::kDouble,
                     "pe_ext: inv_freq must be float32 or float64, got ", f.scalar_type());
    check_same_device(f, "inv_freq", q, "q");
    p.rotary_dim = checked_rotary_dim(o.rotary_dim.value_or(2 * f.size(0)), p.head_dim(), "rotary_dim");
    TORCH_CHECK_VALUE(f.size(0) == p.num_pairs(), "pe_ext: inv_freq must hold rotary_dim / 2 = ", p.num_pairs(),
                      " frequencies, got ", f.size(0));
    p.freqs = f.to(acc).contiguous();
    return;
  }
  TORCH_CHECK_VALUE(std::isfinite(o.base) && o.base > 0, "pe_ext: base must be a positive finite number, got ", o.base);
  p.rotary_dim = checked_rotary_dim(o.rotary_dim.value_or(p.head_dim()), p.head_dim(), "rotary_dim");
  p.freqs = host_frequencies(o.base, p.rotary_dim, acc);
  p.freqs_from_base = true;
}

void check_table(const at::Tensor& t, const char* name, const RotaryProblem& p) {
  TORCH_CHECK_VALUE(t.dim() == 2 || t.dim() == 3, "pe_ext: ", name,
                    " must be (rows, rotary_dim) or (batch or 1, rows, rotary_dim), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.dim() == 2 || t.size(0) == 1 || t.size(0) == p.batch(), "pe_ext: ", name, "'s first dimension (",
                    t.size(0), ") must be 1 or q's batch (", p.batch(), ")");
  check_supported_dtype(t, name);
  check_same_device(t, name, p.q, "q");
}

void attach_tables(RotaryProblem& p, const RotaryOptions& o) {
  TORCH_CHECK_VALUE(o.cos.has_value() && o.sin.has_value(), "pe_ext: give both cos and sin, or neither");
  TORCH_CHECK_VALUE(!o.inv_freq.has_value() && !o.precise_angle && o.attention_scaling == 1.0,
                    "pe_ext: with cos and sin tables, inv_freq, precise_angle and attention_scaling do not apply (the "
                    "tables hold the values); leave them at their defaults");
  check_table(*o.cos, "cos", p);
  check_table(*o.sin, "sin", p);
  TORCH_CHECK_VALUE(o.sin->sizes() == o.cos->sizes(), "pe_ext: sin must have cos's shape ", o.cos->sizes(), ", got ",
                    o.sin->sizes());
  p.rotary_dim = checked_rotary_dim(o.cos->size(-1), p.head_dim(), "cos's last dimension");
  TORCH_CHECK_VALUE(!o.rotary_dim.has_value() || *o.rotary_dim == p.rotary_dim, "pe_ext: rotary_dim (",
                    o.rotary_dim.value_or(0), ") must equal cos's last dimension (", p.rotary_dim, ")");
  auto batched = [&](const at::Tensor& t) {
    const at::Tensor rows = t.dim() == 2 ? t.unsqueeze(0) : t;
    return rows.expand({p.batch(), rows.size(1), rows.size(2)});
  };
  p.cos = batched(*o.cos);
  p.sin = batched(*o.sin);
}

// cu_seqlens: (num_seqs + 1,) from 0 to total_tokens, non-decreasing. Returns the longest sequence's length, or -1
// where the values cannot be read (CUDA graph capture: the kernel's search stays in bounds whatever they are).
int64_t attach_cu_seqlens(RotaryProblem& p, const at::Tensor& cu, Layout layout) {
  TORCH_CHECK_VALUE(layout == Layout::kTHD, "pe_ext: cu_seqlens needs packed tokens (layout 'thd', q of shape ",
                    "(total_tokens, heads, head_dim))");
  TORCH_CHECK_TYPE(cu.scalar_type() == at::kLong || cu.scalar_type() == at::kInt,
                   "pe_ext: cu_seqlens must be an int32 or int64 tensor, got ", cu.scalar_type());
  TORCH_CHECK_VALUE(cu.dim() == 1 && cu.size(0) >= 2, "pe_ext: cu_seqlens must be 1-D (num_seqs + 1,) with at least ",
                    "one sequence, got shape ", cu.sizes());
  check_same_device(cu, "cu_seqlens", p.q, "q");
  p.cu_seqlens = cu.to(at::kLong).contiguous();
  if (!values_readable(cu)) return -1;
  const at::Tensor host = p.cu_seqlens.cpu();
  const int64_t* v = host.const_data_ptr<int64_t>();
  const int64_t n = host.size(0);
  int64_t longest = 0;
  for (int64_t i = 1; i < n; ++i) {
    TORCH_CHECK_VALUE(v[i] >= v[i - 1], "pe_ext: cu_seqlens must be non-decreasing, got ", v[i - 1], " then ", v[i],
                      " at index ", i);
    longest = std::max(longest, v[i] - v[i - 1]);
  }
  TORCH_CHECK_VALUE(v[0] == 0 && v[n - 1] == p.seq_len(), "pe_ext: cu_seqlens must run from 0 to total_tokens (",
                    p.seq_len(), "), got ", v[0], " .. ", v[n - 1]);
  return longest;
}

// positions: (seq,) shared by the batch or (batch, seq); (total_tokens,) for packed tokens.
void attach_positions(RotaryProblem& p, const at::Tensor& ids, Layout layout) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
                   "pe_ext: positions must be an int64 or int32 tensor, got ", ids.scalar_type());
  check_same_device(ids, "positions", p.q, "q");
  const bool shared = ids.dim() == 1 && ids.size(0) == p.seq_len();
  const bool per_row =
      layout != Layout::kTHD && ids.dim() == 2 && ids.size(0) == p.batch() && ids.size(1) == p.seq_len();
  TORCH_CHECK_VALUE(shared || per_row, "pe_ext: positions must have shape (", p.seq_len(), ",)",
                    layout == Layout::kTHD ? " (one per token)" : " (shared by the batch) or (batch, seq)", ", got ",
                    ids.sizes());
  const at::Tensor wide = ids.to(at::kLong);
  p.positions = shared ? wide.unsqueeze(0).expand({p.batch(), p.seq_len()}) : wide;
}

// Tables are indexed by position: every position must name a row.
void check_table_rows(const RotaryProblem& p, int64_t longest_sequence) {
  const int64_t rows = p.cos.size(1);
  int64_t low = p.offset, high = p.offset + p.seq_len() - 1;  // without positions
  if (p.positions.defined() || p.cu_seqlens.defined()) {
    TORCH_CHECK_VALUE(values_readable(p.q), "pe_ext: cos and sin tables with positions or cu_seqlens need their ",
                      "values checked against the tables' rows, which cannot be read during CUDA graph capture; ",
                      "capture the computed form (no cos/sin) instead");
  }
  if (p.positions.defined()) {
    if (p.positions.numel() == 0) return;
    const auto [min_id, max_id] = at::aminmax(p.positions);
    const int64_t lo = min_id.item<int64_t>(), hi = max_id.item<int64_t>();
    TORCH_CHECK_VALUE(hi <= std::numeric_limits<int64_t>::max() - p.offset, "pe_ext: offset (", p.offset,
                      ") + positions (up to ", hi, ") overflows int64");
    low = p.offset + lo;
    high = p.offset + hi;
  } else if (p.cu_seqlens.defined()) {
    high = p.offset + longest_sequence - 1;
  }
  if (p.seq_len() == 0) return;
  TORCH_CHECK_VALUE(low >= 0 && high < rows, "pe_ext: positions ", low, " .. ", high,
                    " must index rows of cos and sin, which have ", rows);
}

}  // namespace

Positions RotaryProblem::positions_view() const {
  Positions v{};
  if (positions.defined()) {
    v.ids = positions.const_data_ptr<int64_t>();
    v.ids_stride_b = positions.stride(0);
    v.ids_stride_l = positions.stride(1);
  }
  if (cu_seqlens.defined()) {
    v.cu_seqlens = cu_seqlens.const_data_ptr<int64_t>();
    v.num_seqs = cu_seqlens.size(0) - 1;
  }
  v.offset = offset;
  return v;
}

RotaryProblem prepare_rotary(const at::Tensor& q, const c10::optional<at::Tensor>& k_arg, const RotaryOptions& o,
                             const at::Tensor& q_out, const at::Tensor& k_out, bool in_place) {
  const c10::optional<at::Tensor> k = k_arg.has_value() && k_arg->defined() ? k_arg : c10::nullopt;
  const Layout layout = parse_layout(o.layout);
  check_qk(q, k, layout, o.layout);
  RotaryProblem p;
  p.style = parse_style(o.style);
  check_writes(q, k, in_place);
  if (in_place) check_not_written(o, q, k);
  p.q = canonical(q, layout);
  p.q_out = canonical(q_out, layout);
  if (k.has_value()) {
    p.k = canonical(*k, layout);
    p.k_out = canonical(k_out, layout);
  }
  p.in_place = in_place;
  p.transpose = o.transpose;
  p.precise_angle = o.precise_angle;
  p.offset = o.offset.expect_int();
  check_offset(p.offset, p.seq_len());
  if (o.cos.has_value() || o.sin.has_value()) {
    attach_tables(p, o);
  } else {
    attach_frequencies(p, o, q);
  }
  TORCH_CHECK_VALUE(!(o.positions.has_value() && o.cu_seqlens.has_value()),
                    "pe_ext: give positions or cu_seqlens, not both");
  int64_t longest_sequence = -1;
  if (o.cu_seqlens.has_value()) longest_sequence = attach_cu_seqlens(p, *o.cu_seqlens, layout);
  if (o.positions.has_value()) attach_positions(p, *o.positions, layout);
  if (p.cos.defined()) check_table_rows(p, longest_sequence);
  return p;
}

void define(torch::Library& m) {
  // (q', k'): q and k with every head of each token rotated by its position's angles; k' is empty when k is None.
  m.def("rotary(Tensor q, Tensor? k=None, *" PE_ROTARY_OPTIONS_SCHEMA ") -> (Tensor, Tensor)");
  // The same, written into q and k.
  m.def("rotary_(Tensor(a!) q, Tensor(b!)? k=None, *" PE_ROTARY_OPTIONS_SCHEMA ") -> ()");
}

}  // namespace pe_ext::rotary
