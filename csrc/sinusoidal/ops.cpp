// The family's schemas and the argument checks every backend shares (prepare_*), which normalize a call to a
// batch-first SinusoidalProblem before anything is written.
#include "sinusoidal/ops.h"

#include <ATen/OpMathType.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/aminmax.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/checks.h"
#include "sinusoidal/frequencies.h"
#include "sinusoidal/math.h"

namespace pe_ext::sinusoidal {
namespace {

Layout parse_layout(c10::string_view layout) {
  if (layout == "interleaved") return Layout::kInterleaved;
  if (layout == "concatenated") return Layout::kConcatenated;
  TORCH_CHECK_VALUE(layout == "concatenated_cos_first",
                    "pe_ext: layout must be 'interleaved', 'concatenated' or 'concatenated_cos_first', got '", layout,
                    "'");
  return Layout::kConcatenatedCosFirst;
}

FrequencyRecipe make_recipe(const SinusoidalOptions& o) {
  FrequencyRecipe r;
  TORCH_CHECK_VALUE(o.frequency_rounding == "float32" || o.frequency_rounding == "correct",
                    "pe_ext: frequency_rounding must be 'float32' or 'correct', got '", o.frequency_rounding, "'");
  r.rounding = o.frequency_rounding == "float32" ? FrequencyRounding::kFloat32 : FrequencyRounding::kCorrect;
  if (o.frequencies == "paper") {
    TORCH_CHECK_VALUE(std::isfinite(o.base) && o.base > 0, "pe_ext: base must be a positive finite number, got ",
                      o.base);
    r.base = o.base;
    return r;
  }
  TORCH_CHECK_VALUE(o.frequencies == "timescales", "pe_ext: frequencies must be 'paper' or 'timescales', got '",
                    o.frequencies, "'");
  TORCH_CHECK_VALUE(std::isfinite(o.min_timescale) && std::isfinite(o.max_timescale) && o.min_timescale > 0 &&
                        o.max_timescale >= o.min_timescale,
                    "pe_ext: timescales need finite 0 < min_timescale <= max_timescale, got min_timescale=",
                    o.min_timescale, ", max_timescale=", o.max_timescale);
  r.formula = FrequencyFormula::kTimescales;
  r.min_timescale = o.min_timescale;
  r.max_timescale = o.max_timescale;
  return r;
}

void check_frequencies_untracked(const c10::optional<at::Tensor>& inv_freq) {
  TORCH_CHECK(!(inv_freq.has_value() && inv_freq->defined() && at::GradMode::is_enabled() && inv_freq->requires_grad()),
              "pe_ext: inv_freq requires grad, but pe_ext does not differentiate with respect to the frequencies; "
              "pass inv_freq.detach()");
}

// A caller's frequencies replace the recipe: the options that make one must keep their defaults (schema.py's).
void check_inv_freq(const SinusoidalOptions& o, const EncodingSpec& s, const at::Tensor& like, const char* like_name) {
  if (!o.inv_freq.has_value() || !o.inv_freq->defined()) return;
  const at::Tensor& f = *o.inv_freq;
  TORCH_CHECK_VALUE(o.frequencies == "paper" && o.base == 10000.0 && o.min_timescale == 1.0 &&
                        o.max_timescale == 10000.0 && o.frequency_rounding == "float32",
                    "pe_ext: inv_freq gives the frequencies, so base, frequencies, min_timescale, max_timescale and "
                    "frequency_rounding must keep their defaults");
  TORCH_CHECK_TYPE(is_supported_dtype(f.scalar_type()),
                   "pe_ext: inv_freq must be float32, float64, float16 or bfloat16, got ", f.scalar_type());
  TORCH_CHECK_VALUE(f.dim() == 1 && f.size(0) == s.num_freqs, "pe_ext: inv_freq must have shape (", s.num_freqs,
                    ",) (one frequency per sin/cos pair of d_model ", s.d_model, " in this layout), got ", f.sizes());
  check_same_device(f, "inv_freq", like, like_name);
  check_frequencies_untracked(o.inv_freq);
}

struct Encoding {
  EncodingSpec spec;
  FrequencyRecipe recipe;
};

// `like` is x (or out when building a table): d_model is its last dimension.
Encoding checked_encoding(const SinusoidalOptions& o, const at::Tensor& like, const char* like_name) {
  Encoding e;
  e.spec.d_model = like.size(-1);
  e.spec.layout = parse_layout(o.layout);
  e.spec.num_freqs = num_frequencies(e.spec.d_model, e.spec.layout);
  e.spec.precise_angle = o.precise_angle;
  e.recipe = make_recipe(o);
  check_inv_freq(o, e.spec, like, like_name);
  return e;
}

// The frequencies the kernels read when pe is computed (not read from a table). float64 data and precise_angle use
// float64 angles, whose frequencies are evaluated in float64: a float32 frequency's rounding (~6e-8 relative) would
// cost precise_angle its accuracy far out (~1 radian at position 16M).
void attach_frequencies(SinusoidalProblem& p, const Encoding& e, const SinusoidalOptions& o) {
  if (p.table.defined()) return;
  const bool double_angle = e.spec.precise_angle || at::toOpMathType(p.out.scalar_type()) == at::kDouble;
  const FrequencyTable t =
      o.inv_freq.has_value() && o.inv_freq->defined()
          ? given_frequencies(*o.inv_freq, double_angle)
          : recipe_frequencies(e.recipe, e.spec.d_model, e.spec.num_freqs, double_angle, p.out.device());
  p.freqs = t.values;
  p.float_freqs = t.float_values;
  p.max_abs_freq = t.max_abs;
}

// `like` is x (or out when building a table). A CPU seed is read here; one on x's device is read by the kernel, so
// that a captured CUDA graph reads the seed each replay draws.
void attach_padding_and_dropout(SinusoidalProblem& p, const SinusoidalOptions& o, const at::Tensor& like) {
  TORCH_CHECK_VALUE(o.padding_idx >= -1, "pe_ext: padding_idx must be >= 0, or -1 for none; got ", o.padding_idx);
  TORCH_CHECK_VALUE(o.dropout >= 0 && o.dropout < 1, "pe_ext: dropout must be in [0, 1), got ", o.dropout);
  p.padding_idx = o.padding_idx;
  p.dropout = o.dropout;
  const bool has_seed = o.seed.has_value() && o.seed->defined();
  TORCH_CHECK_VALUE(has_seed || o.dropout == 0,
                    "pe_ext: dropout > 0 needs seed, a one-element int64 tensor, e.g. torch.randint(2**63 - 1, ())");
  if (!has_seed) return;
  const at::Tensor& seed = *o.seed;
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "pe_ext: seed must be an int64 tensor, got ", seed.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() == 1, "pe_ext: seed must hold one value, got shape ", seed.sizes());
  TORCH_CHECK_VALUE(seed.is_cpu() || seed.device() == like.device(), "pe_ext: seed is on ", seed.device(),
                    " but must be on the CPU or on x's device (", like.device(), ")");
  if (o.dropout == 0) return;
  if (seed.is_cpu()) {
    TORCH_CHECK_VALUE(values_readable(like), "pe_ext: while a CUDA graph is captured, seed must be on x's device (",
                      like.device(),
                      "), e.g. torch.randint(2**63 - 1, (), device=x.device): a CPU seed is read once, "
                      "so every replay would reuse its mask");
    p.seed = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
  } else {
    p.seed_on_device = seed.reshape({});
  }
}

// `like` is x (or out when building a table): alpha lives on its device and is kept in its math dtype.
void attach_alpha(SinusoidalProblem& p, const c10::optional<at::Tensor>& alpha, const at::Tensor& like) {
  if (!alpha.has_value() || !alpha->defined()) return;
  TORCH_CHECK_VALUE(alpha->numel() == 1, "pe_ext: alpha must hold one value (a 0-dim tensor), got shape ",
                    alpha->sizes());
  TORCH_CHECK_TYPE(is_supported_dtype(alpha->scalar_type()), "pe_ext: alpha must be a floating tensor, got ",
                   alpha->scalar_type());
  check_same_device(*alpha, "alpha", like, "x");
  p.alpha = alpha->reshape({}).to(at::toOpMathType(like.scalar_type()));
}

// The positions a call uses: the range of its integer positions (offset included) or, for fractional positions, none
// (they index no table row).
struct PositionRange {
  int64_t first = 0;  // the smallest position, or offset when there are none
  int64_t end = 0;    // one past the largest position, or offset when there are none
  bool fractional = false;
  bool read = true;  // false: explicit positions the host could not read (CUDA graph capture); first and end unknown
};

// offset + every id, and one past the largest, fit in int64.
void check_sum_fits(int64_t offset, int64_t min_id, int64_t max_id) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max(), kMin = std::numeric_limits<int64_t>::min();
  const bool fits = offset >= 0 ? max_id < kMax - offset : min_id >= kMin - offset;
  TORCH_CHECK_VALUE(fits, "pe_ext: offset (", offset, ") + positions (", offset >= 0 ? max_id : min_id,
                    ") overflows int64");
}

// Attaches explicit positions (viewed batch-first by to_batch_first, which takes a tensor shaped like `like`'s
// leading dimensions): integer ids as int64, fractional ones as float64. The positions are read here (one device sync
// on CUDA) so that bad ones are refused before anything is written; except while a CUDA graph is captured, where no
// value can be read: then the kernel checks that every position names a table row (a device-side assert, as torch's
// indexing kernels raise), and values that are wrong without being unsafe (offset + id past int64, non-finite
// fractional positions) go unchecked.
template <typename ToBatchFirst>
PositionRange attach_positions(SinusoidalProblem& p, const c10::optional<at::Tensor>& positions, const at::Tensor& like,
                               const char* like_name, ToBatchFirst to_batch_first) {
  check_offset_fits(p.offset, p.seq_len());
  if (!positions.has_value() || !positions->defined()) return {p.offset, p.offset + p.seq_len()};

  const at::IntArrayRef leading = like.sizes().slice(0, like.dim() - 1);
  const bool fractional = positions->is_floating_point();
  TORCH_CHECK_TYPE(positions->scalar_type() == at::kLong || positions->scalar_type() == at::kInt ||
                       (fractional && is_supported_dtype(positions->scalar_type())),
                   "pe_ext: positions must be an int64 or int32 tensor (ids), or a float32, float64, float16 or "
                   "bfloat16 tensor (fractional positions), got ",
                   positions->scalar_type());
  check_same_device(*positions, "positions", like, like_name);
  const bool per_element = positions->sizes() == leading;
  TORCH_CHECK_VALUE(per_element || (positions->dim() == 1 && positions->size(0) == p.seq_len()),
                    "pe_ext: positions must have shape ", leading, " (one per element of x but d_model) or (",
                    p.seq_len(), ",) (shared by the batch), got ", positions->sizes());
  const at::Tensor ids = positions->to(fractional ? at::kDouble : at::kLong);
  p.positions = per_element ? to_batch_first(ids) : ids.unsqueeze(0).expand({p.batch(), p.seq_len()});
  if (ids.numel() == 0) return {p.offset, p.offset, fractional};
  if (!values_readable(ids)) return {p.offset, p.offset, fractional, /*read=*/false};
  const auto [low, high] = at::aminmax(ids);
  if (fractional) {
    const double min_value = low.item<double>(), max_value = high.item<double>();
    TORCH_CHECK_VALUE(std::isfinite(min_value) && std::isfinite(max_value),
                      "pe_ext: positions must be finite, got values from ", min_value, " to ", max_value);
    return {p.offset, p.offset, true};
  }
  const int64_t min_id = low.item<int64_t>(), max_id = high.item<int64_t>();
  check_sum_fits(p.offset, min_id, max_id);
  return {p.offset + min_id, p.offset + max_id + 1};
}

// A table given as (rows, d_model) or as the module's (1, rows, d_model) buffer, checked; kept as given (its rows are
// its last two dimensions), since a (rows, d_model) view would cost each call ~0.4 us.
const at::Tensor& checked_table(const at::Tensor& table, const at::Tensor& x, int64_t d_model,
                                const PositionRange& used) {
  TORCH_CHECK_VALUE(table.dim() == 2 || (table.dim() == 3 && table.size(0) == 1),
                    "pe_ext: table must have shape (rows, d_model) or (1, rows, d_model), got ", table.sizes());
  TORCH_CHECK_VALUE(table.size(-1) == d_model, "pe_ext: table's last dimension (", table.size(-1),
                    ") must equal x's last dimension d_model (", d_model, ")");
  TORCH_CHECK_VALUE(table.device() == x.device(), "pe_ext: table is on ", table.device(), " but x is on ", x.device(),
                    "; move them to the same device (module.to(x.device))");
  TORCH_CHECK_TYPE(table.scalar_type() == x.scalar_type() || table.scalar_type() == at::kFloat,
                   "pe_ext: table must be float32 or x's dtype (", x.scalar_type(), "), got ", table.scalar_type());
  TORCH_CHECK_VALUE(!used.fractional,
                    "pe_ext: fractional (floating-point) positions index no table row; compute them on the fly (no "
                    "table)");
  if (!used.read) return table;  // the kernel checks each position against the rows
  TORCH_CHECK_VALUE(used.first >= 0, "pe_ext: table rows start at position 0, but the call uses position ", used.first,
                    " (offset + positions); compute negative positions on the fly (no table)");
  TORCH_CHECK_VALUE(used.end <= table.size(-2), "pe_ext: positions up to ", used.end - 1, " need ", used.end,
                    " table rows, but the table has ", table.size(-2),
                    " (max_len); raise max_len or compute on the fly (no table)");
  return table;
}

void check_x(const at::Tensor& x, int64_t seq_dim, double scale) {
  TORCH_CHECK_VALUE(x.dim() == 2 || x.dim() == 3,
                    "pe_ext: x must be 2-D (seq_len, d_model) or 3-D (batch, seq_len, d_model) or "
                    "(seq_len, batch, d_model), got a ",
                    x.dim(), "-D tensor of shape ", x.sizes());
  check_supported_dtype(x, "x");
  const int64_t allowed_seq_dims = x.dim() - 1;  // the position dimension is never the last (d_model) one
  TORCH_CHECK_VALUE(seq_dim >= -x.dim() && seq_dim < allowed_seq_dims && seq_dim != -1,
                    "pe_ext: seq_dim must index a dimension of x other than the last (d_model); got ", seq_dim,
                    " for a ", x.dim(), "-D x");
  TORCH_CHECK_VALUE(std::isfinite(scale), "pe_ext: scale must be finite, got ", scale);
}

void check_out(const at::Tensor& out, const at::Tensor& x) {
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), "pe_ext: out must have x's shape ", x.sizes(), ", got ", out.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == x.scalar_type(), "pe_ext: out must have x's dtype (", x.scalar_type(),
                   "), got ", out.scalar_type());
  check_same_device(out, "out", x, "x");
}

}  // namespace

SinusoidalProblem prepare_add_pe(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset,
                                 double scale, int64_t seq_dim, const SinusoidalOptions& options, const at::Tensor& out,
                                 Write write) {
  check_x(x, seq_dim, scale);
  const Encoding encoding = checked_encoding(options, x, "x");
  check_out(out, x);
  const char* out_name = write == Write::kInPlace ? "x" : "out";
  check_distinct_elements(out, out_name);
  if (write != Write::kInPlace) check_no_shared_memory(out, "out", x, "x");

  // Batch-first (batch, seq_len, d_model) views.
  const int64_t dim = seq_dim < 0 ? seq_dim + x.dim() : seq_dim;
  auto batch_first = [&](const at::Tensor& t) {
    if (t.dim() == 2) return t.unsqueeze(0);
    return dim == 0 ? t.transpose(0, 1) : t;
  };
  SinusoidalProblem p;
  p.x = batch_first(x);
  p.out = batch_first(out);
  p.offset = offset;
  p.scale = scale;
  p.spec = encoding.spec;
  attach_padding_and_dropout(p, options, x);
  attach_alpha(p, options.alpha, x);
  const PositionRange used = attach_positions(p, options.positions, x, "x", [&](const at::Tensor& ids) {
    return ids.dim() == 1 ? ids.unsqueeze(0) : (dim == 0 ? ids.transpose(0, 1) : ids);
  });
  if (table.has_value() && table->defined()) {
    p.table = checked_table(*table, x, p.d_model(), used);
    check_no_shared_memory(out, out_name, *table, "table");
  }
  attach_frequencies(p, encoding, options);
  return p;
}

SinusoidalProblem prepare_fill_table(const at::Tensor& out, int64_t offset, const SinusoidalOptions& options) {
  TORCH_CHECK_VALUE(out.dim() == 2, "pe_ext: out must be 2-D (num_positions, d_model), got shape ", out.sizes());
  check_supported_dtype(out, "out");
  const Encoding encoding = checked_encoding(options, out, "out");
  check_distinct_elements(out, "out");
  SinusoidalProblem p;
  p.out = out.unsqueeze(0);
  p.offset = offset;
  p.spec = encoding.spec;
  attach_padding_and_dropout(p, options, out);
  attach_alpha(p, options.alpha, out);
  attach_positions(p, options.positions, out, "out", [](const at::Tensor& ids) { return ids.unsqueeze(0); });
  attach_frequencies(p, encoding, options);
  return p;
}

void define(torch::Library& m) {
  // out = x * scale + pe(offset + l) along dimension seq_dim of x; pe read from table when given, else computed.
  m.def(
      "add_pe(Tensor x, Tensor? table=None, SymInt offset=0, float scale=1.0, int seq_dim=1, "
      "*" PE_SINUSOIDAL_OPTIONS_SCHEMA ") -> Tensor");
  // The same, written into x.
  m.def(
      "add_pe_(Tensor(a!) x, Tensor? table=None, SymInt offset=0, float scale=1.0, int seq_dim=1, "
      "*" PE_SINUSOIDAL_OPTIONS_SCHEMA ") -> ()");
  // The same, written into a preallocated out of x's shape and dtype that does not overlap x.
  m.def(
      "add_pe_out(Tensor x, Tensor? table, SymInt offset, float scale, int seq_dim, Tensor(a!) out, "
      "*" PE_SINUSOIDAL_OPTIONS_SCHEMA ") -> ()");
  // out[p, :] = pe(offset + p, :): the table, built where out lives.
  m.def("fill_table_(Tensor(a!) out, SymInt offset=0, *" PE_SINUSOIDAL_OPTIONS_SCHEMA ") -> ()");
}

}  // namespace pe_ext::sinusoidal
