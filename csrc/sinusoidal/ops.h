// What every backend shares: the checked, normalized form of one call, and the op entry points built on it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include "sinusoidal/math.h"

namespace pe_ext {

// The schema's keyword arguments (see ops.cpp), as passed: the encoding, and where and how strongly pe is added.
struct KeywordArgs {
  double base;
  c10::string_view layout;       // "interleaved" or "concatenated"
  c10::string_view frequencies;  // "paper" (base) or "timescales" (min_timescale, max_timescale)
  double min_timescale;
  double max_timescale;
  bool precise_angle;
  const c10::optional<at::Tensor>& positions;  // explicit position ids, or none: offset + l
  int64_t padding_idx;                         // this position gets a zero pe; -1: none
  const c10::optional<at::Tensor>& alpha;      // 0-dim factor on pe, or none: 1
  double dropout;                              // probability of zeroing an element of the result
  int64_t seed;                                // the dropout mask's Philox key
};

// One call, checked and seen batch-first: out[b, l, :] = x[b, l, :] * scale + alpha * pe(position(b, l), :), with
// position(b, l) = offset + (positions[b, l] if given, else l), and pe(padding_idx, :) = 0; then, with dropout > 0,
// each element is zeroed with probability dropout (pe_math.h's Philox mask) or scaled by 1 / (1 - dropout).
// x is undefined when building a table (x taken as 0); table is undefined when pe is computed on the fly.
struct AddPeProblem {
  at::Tensor x;          // [batch, seq_len, d_model], any strides, or undefined
  at::Tensor out;        // [batch, seq_len, d_model], any non-overlapping strides
  at::Tensor table;      // [rows > every position, d_model], float32 or x's dtype, or undefined
  at::Tensor positions;  // int64 [batch, seq_len] (batch stride 0 when shared by the batch), or undefined
  at::Tensor alpha;      // 0-dim, in the math dtype, or undefined (1)
  int64_t offset = 0;
  int64_t padding_idx = -1;
  double scale = 1.0;
  double dropout = 0.0;
  uint64_t seed = 0;
  PeSpec spec;

  int64_t batch() const { return out.size(0); }
  int64_t seq_len() const { return out.size(1); }
  int64_t d_model() const { return out.size(2); }
};

// Where a call writes its result: a fresh tensor (add_pe), x itself (add_pe_), or a caller's tensor (add_pe_out).
enum class Write { kNew, kInPlace, kOut };

// Check the arguments of add_pe / add_pe_ / add_pe_out (out is x for the in-place op) and view them batch-first.
// Every check runs before anything is written.
AddPeProblem prepare_add_pe(const at::Tensor& x, const c10::optional<at::Tensor>& table, int64_t offset,
                            double scale, int64_t seq_dim, const KeywordArgs& keywords, const at::Tensor& out,
                            Write write);

// Check the arguments of fill_table_ (out: [num_positions, d_model]) and view them as a problem with no x.
AddPeProblem prepare_fill_table(const at::Tensor& out, int64_t offset, const KeywordArgs& keywords);

// The ops, for a backend whose kernel computes one prepared problem.
using ProblemKernel = void (*)(const AddPeProblem&);

// Every op ends with the same keyword arguments (ops.cpp, PE_KEYWORD_SCHEMA).
#define PE_KEYWORD_PARAMS                                                                                      \
  double base, c10::string_view layout, c10::string_view frequencies, double min_timescale, double max_timescale, \
      bool precise_angle, const c10::optional<at::Tensor>&positions, int64_t padding_idx,                       \
      const c10::optional<at::Tensor>&alpha, double dropout, int64_t seed
#define PE_KEYWORD_ARGS                                                                                     \
  KeywordArgs {                                                                                            \
    base, layout, frequencies, min_timescale, max_timescale, precise_angle, positions, padding_idx, alpha, \
        dropout, seed                                                                                    \
  }

// The schema types offset as SymInt (torch.compile keeps it symbolic instead of recompiling per value); every kernel
// of an op must share one C++ signature, and a backend kernel only ever sees a concrete one.
template <ProblemKernel kernel>
at::Tensor add_pe_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale,
                     int64_t seq_dim, PE_KEYWORD_PARAMS) {
  at::Tensor out = at::empty_like(x);
  kernel(prepare_add_pe(x, table, offset.expect_int(), scale, seq_dim, PE_KEYWORD_ARGS, out, Write::kNew));
  return out;
}

template <ProblemKernel kernel>
void add_pe_inplace_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale,
                       int64_t seq_dim, PE_KEYWORD_PARAMS) {
  kernel(prepare_add_pe(x, table, offset.expect_int(), scale, seq_dim, PE_KEYWORD_ARGS, x, Write::kInPlace));
}

template <ProblemKernel kernel>
void add_pe_out_op(const at::Tensor& x, const c10::optional<at::Tensor>& table, c10::SymInt offset, double scale,
                   int64_t seq_dim, const at::Tensor& out, PE_KEYWORD_PARAMS) {
  kernel(prepare_add_pe(x, table, offset.expect_int(), scale, seq_dim, PE_KEYWORD_ARGS, out, Write::kOut));
}

template <ProblemKernel kernel>
void fill_table_op(const at::Tensor& out, c10::SymInt offset, PE_KEYWORD_PARAMS) {
  kernel(prepare_fill_table(out, offset.expect_int(), PE_KEYWORD_ARGS));
}

}  // namespace pe_ext
