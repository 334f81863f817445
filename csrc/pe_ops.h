// What every backend shares: the checked, normalized form of one call, and the op entry points built on it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include "pe_math.h"

namespace pe_ext {

// The schema's keyword arguments that choose the encoding (see ops.cpp), as passed.
struct EncodingArgs {
  double base;
  c10::string_view layout;       // "interleaved" or "concatenated"
  c10::string_view frequencies;  // "paper" (base) or "timescales" (min_timescale, max_timescale)
  double min_timescale;
  double max_timescale;
  bool precise_angle;
};

// One call, checked and seen batch-first: out[b, l, :] = x[b, l, :] * scale + pe(offset + l, :).
// x is undefined when building a table (x taken as 0); table is undefined when pe is computed on the fly.
struct AddPeProblem {
  at::Tensor x;      // [batch, seq_len, d_model], any strides, or undefined
  at::Tensor out;    // [batch, seq_len, d_model], any non-overlapping strides
  at::Tensor table;  // [rows >= offset + seq_len, d_model], float32 or x's dtype, or undefined
  int64_t offset = 0;
  double scale = 1.0;
  PeSpec spec;

  int64_t batch() const { return out.size(0); }
  int64_t seq_len() const { return out.size(1); }
  int64_t d_model() const { return out.size(2); }
};

// Check the arguments of add_pe / add_pe_ / add_pe_out (out is x for the in-place op) and view them batch-first.
// Every check runs before anything is written.
AddPeProblem prepare_add_pe(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset,
                            double scale, int64_t seq_dim, const EncodingArgs& encoding, const at::Tensor& out);

// Check the arguments of fill_table_ (out: [num_positions, d_model]) and view them as a problem with no x.
AddPeProblem prepare_fill_table(const at::Tensor& out, int64_t offset, const EncodingArgs& encoding);

// The ops, for a backend whose kernel computes one prepared problem.
using ProblemKernel = void (*)(const AddPeProblem&);

// Every op ends with the encoding's keyword arguments: base, layout, frequencies, min/max_timescale, precise_angle.
#define PE_ENCODING_PARAMS                                                                                     \
  double base, c10::string_view layout, c10::string_view frequencies, double min_timescale, double max_timescale, \
      bool precise_angle
#define PE_ENCODING_ARGS \
  EncodingArgs { base, layout, frequencies, min_timescale, max_timescale, precise_angle }

template <ProblemKernel kernel>
at::Tensor add_pe_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset, double scale,
                     int64_t seq_dim, PE_ENCODING_PARAMS) {
  at::Tensor out = at::empty_like(x);
  kernel(prepare_add_pe(x, table, offset, scale, seq_dim, PE_ENCODING_ARGS, out));
  return out;
}

template <ProblemKernel kernel>
void add_pe_inplace_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset, double scale,
                       int64_t seq_dim, PE_ENCODING_PARAMS) {
  kernel(prepare_add_pe(x, table, offset, scale, seq_dim, PE_ENCODING_ARGS, x));
}

template <ProblemKernel kernel>
void add_pe_out_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset, double scale,
                   int64_t seq_dim, const at::Tensor& out, PE_ENCODING_PARAMS) {
  kernel(prepare_add_pe(x, table, offset, scale, seq_dim, PE_ENCODING_ARGS, out));
}

template <ProblemKernel kernel>
void fill_table_op(const at::Tensor& out, int64_t offset, PE_ENCODING_PARAMS) {
  kernel(prepare_fill_table(out, offset, PE_ENCODING_ARGS));
}

}  // namespace pe_ext
