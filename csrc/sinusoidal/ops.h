// The sinusoidal family's ops: their keyword options (spelled once, below), the checked form of one call that every
// backend computes, and the op entry points built on it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include "common/options.h"
#include "sinusoidal/frequencies.h"
#include "sinusoidal/math.h"

namespace pe_ext::sinusoidal {

// The keyword options every op of the family ends with, in schema order:
//   X(C++ parameter type, name, schema type, schema default)
// They drive the schemas' tails (ops.cpp), the kernels' parameter lists and SinusoidalOptions; autograd finds
// arguments in the schema by name. The Python twin of this list is pe_ext/sinusoidal/schema.py's OPTIONS.
//   base               frequencies = "paper": div_term = exp(arange(0, d_model, 2) * -(log(base) / d_model))
//   layout             "interleaved" (sin, cos, sin, cos, ...), "concatenated" (all sin, then all cos) or
//                      "concatenated_cos_first" (all cos, then all sin)
//   frequencies        "paper" (base) or "timescales" (fairseq, tensor2tensor: periods from min_timescale to
//   min/max_timescale  max_timescale, geometrically); sinusoidal/frequencies.h has the formulas
//   frequency_rounding "float32": the formula evaluated in float32 as PyTorch does (the classic module's values);
//                      "correct": evaluated in float64 and rounded once
//   inv_freq           a 1-D float tensor of the frequencies, used as given instead of the four options above
//   precise_angle      form and reduce the angle in double, with frequencies evaluated in float64, before the float32
//                      sin/cos (accurate at any position)
//   positions          position ids shaped like x without d_model, or (seq_len,) for the whole batch: int (table rows
//                      or on the fly) or float (fractional, on the fly); the position of an element is offset + its id
//                      (default: offset + its index along seq_dim). Negative positions are computed on the fly.
//   padding_idx        the position whose pe is zero (fairseq's padding), -1 for none
//   alpha              a 0-dim tensor multiplying pe (ESPnet's learnable alpha), None for 1
//   dropout, seed      fused dropout of the result: the mask is a function of (seed, element), so backward
//                      recomputes it and CPU and CUDA agree. seed is a one-element int64 tensor (needed when
//                      dropout > 0), on the CPU or on x's device, so that torch.compile, torch.export and CUDA
//                      graphs trace the op that draws it and replay draws a fresh one
#define PE_SINUSOIDAL_OPTIONS(X)                                    \
  X(double, base, "float", "10000.0")                               \
  X(c10::string_view, layout, "str", "\"interleaved\"")             \
  X(c10::string_view, frequencies, "str", "\"paper\"")              \
  X(double, min_timescale, "float", "1.0")                          \
  X(double, max_timescale, "float", "10000.0")                      \
  X(c10::string_view, frequency_rounding, "str", "\"float32\"")     \
  X(const c10::optional<at::Tensor>&, inv_freq, "Tensor?", "None")  \
  X(bool, precise_angle, "bool", "False")                           \
  X(const c10::optional<at::Tensor>&, positions, "Tensor?", "None") \
  X(int64_t, padding_idx, "int", "-1")                              \
  X(const c10::optional<at::Tensor>&, alpha, "Tensor?", "None")     \
  X(double, dropout, "float", "0.0")                                \
  X(const c10::optional<at::Tensor>&, seed, "Tensor?", "None")

// The list's expansions (common/options.h).
#define PE_SINUSOIDAL_OPTIONS_SCHEMA PE_SINUSOIDAL_OPTIONS(PE_OPTION_SCHEMA)
#define PE_SINUSOIDAL_OPTIONS_PARAMS PE_SINUSOIDAL_OPTIONS(PE_OPTION_PARAM)
#define PE_SINUSOIDAL_OPTIONS_ARGS PE_SINUSOIDAL_OPTIONS(PE_OPTION_ARG)

// The options of one call, as passed (they refer to the caller's arguments).
struct SinusoidalOptions {
  PE_SINUSOIDAL_OPTIONS(PE_OPTION_FIELD)
};
#define PE_SINUSOIDAL_OPTIONS_STRUCT \
  SinusoidalOptions { PE_SINUSOIDAL_OPTIONS(PE_OPTION_INIT) }

// One call, checked and seen batch-first: out[b, l, :] = x[b, l, :] * scale + alpha * pe(position(b, l), :), with
// position(b, l) = offset + (positions[b, l] if given, else l), and pe(padding_idx, :) = 0; then, with dropout > 0,
// each element is zeroed with probability dropout (common/philox.h's mask) or scaled by 1 / (1 - dropout).
// x is undefined when building a table (x taken as 0); table is undefined when pe is computed on the fly, and then
// freqs holds the frequencies.
struct SinusoidalProblem {
  at::Tensor x;            // [batch, seq_len, d_model], any strides, or undefined
  at::Tensor out;          // [batch, seq_len, d_model], any non-overlapping strides
  at::Tensor table;        // [rows > every position, d_model] or [1, rows, d_model], float32 or x's dtype, or undefined
  at::Tensor positions;    // int64, or float64 (fractional, no table), [batch, seq_len] (batch stride 0 when shared by
                           // the batch), or undefined
  at::Tensor alpha;        // 0-dim, in the math dtype, or undefined (1)
  at::Tensor freqs;        // float64 [spec.num_freqs] on out's device, each exactly as the angle uses it; or undefined
                           // (a table; a caller's frequencies on a GPU under a float32 angle)
  at::Tensor float_freqs;  // the same as float32 for a float32 angle (what the CUDA kernels read); or undefined
  double max_abs_freq = 0.0;  // the largest |freqs[i]|, NaN when unknown
  int64_t offset = 0;
  int64_t padding_idx = -1;
  double scale = 1.0;
  double dropout = 0.0;
  uint64_t seed = 0;          // read on the host from a CPU seed tensor
  at::Tensor seed_on_device;  // 0-dim int64 on x's (non-CPU) device, read by the kernel; or undefined (seed)
  EncodingSpec spec;

  int64_t batch() const { return out.size(0); }
  int64_t seq_len() const { return out.size(1); }
  int64_t d_model() const { return out.size(2); }
  // The table's rows are its last two dimensions.
  int64_t table_rows() const { return table.size(-2); }
  int64_t table_stride_l() const { return table.stride(-2); }
  int64_t table_stride_d() const { return table.stride(-1); }
};

// Where a call writes its result: a fresh tensor (add_pe), x itself (add_pe_), or a caller's tensor (add_pe_out).
enum class Write { kNew, kInPlace, kOut };

// Check the arguments of add_pe / add_pe_ / add_pe_out (out is x for the in-place op) and view them batch-first.
// Every check runs before anything is written.
SinusoidalProblem prepare_add_pe(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset,
                                 double scale, int64_t seq_dim, const SinusoidalOptions& options, const at::Tensor& out,
                                 Write write);

// Check the arguments of fill_table_ (out: [num_positions, d_model]) and view them as a problem with no x.
SinusoidalProblem prepare_fill_table(const at::Tensor& out, int64_t offset, const SinusoidalOptions& options);

// Declares the family's ops (csrc/library.cpp calls it inside the one TORCH_LIBRARY block).
void define(torch::Library& m);

// --- The ops, for a backend whose kernel computes one prepared problem. The schemas type offset as SymInt
// (torch.compile keeps it symbolic instead of recompiling per value); every kernel of an op must share one C++
// signature, and a backend kernel only ever sees a concrete value.
using ProblemKernel = void (*)(const SinusoidalProblem&);

template <ProblemKernel kernel>
at::Tensor add_pe_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale,
                     int64_t seq_dim PE_SINUSOIDAL_OPTIONS_PARAMS) {
  at::Tensor out = at::empty_like(x);
  kernel(prepare_add_pe(x, table, offset.expect_int(), scale, seq_dim, PE_SINUSOIDAL_OPTIONS_STRUCT, out, Write::kNew));
  return out;
}

template <ProblemKernel kernel>
void add_pe_inplace_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale,
                       int64_t seq_dim PE_SINUSOIDAL_OPTIONS_PARAMS) {
  kernel(
      prepare_add_pe(x, table, offset.expect_int(), scale, seq_dim, PE_SINUSOIDAL_OPTIONS_STRUCT, x, Write::kInPlace));
}

template <ProblemKernel kernel>
void add_pe_out_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale,
                   int64_t seq_dim, const at::Tensor& out PE_SINUSOIDAL_OPTIONS_PARAMS) {
  kernel(prepare_add_pe(x, table, offset.expect_int(), scale, seq_dim, PE_SINUSOIDAL_OPTIONS_STRUCT, out, Write::kOut));
}

template <ProblemKernel kernel>
void fill_table_op(const at::Tensor& out, c10::SymInt offset PE_SINUSOIDAL_OPTIONS_PARAMS) {
  kernel(prepare_fill_table(out, offset.expect_int(), PE_SINUSOIDAL_OPTIONS_STRUCT));
}

// Registers a backend's kernel for every op of the family under `m` (a TORCH_LIBRARY_IMPL block).
template <ProblemKernel kernel>
void register_kernels(torch::Library& m) {
  m.impl("add_pe", &add_pe_op<kernel>);
  m.impl("add_pe_", &add_pe_inplace_op<kernel>);
  m.impl("add_pe_out", &add_pe_out_op<kernel>);
  m.impl("fill_table_", &fill_table_op<kernel>);
}

}  // namespace pe_ext::sinusoidal
