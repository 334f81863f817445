// CPU kernel, in two passes. First the per-pair cos and sin of every token (computed with rotary/math.h, or read from
// the tables), once per position pattern: for the whole batch when positions are shared. Then every row of q and k is
// rotated with its token's values, walking runs of rows along whichever of the sequence and the heads lies closer
// together in memory (a head's tokens in HF's layout, a token's heads in flash-attn's), so that each task streams
// long contiguous runs. Rows are rotated by per-dtype loops that the compiler vectorizes, cloned for AVX-512 and AVX2
// machines and chosen at load time.
#include "common/no_fp_contract.h"  // first: every product and sum rounded once, as Hugging Face's torch ops round them

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "common/cpu_rows.h"
#include "common/cpu_sincos.h"
#include "rotary/math.h"
#include "rotary/ops.h"

namespace pe_ext::rotary {
namespace {

using pe_ext::cpu::bits_of;
using pe_ext::cpu::Element;
using pe_ext::cpu::storage_t;

constexpr int64_t kElementsPerTask = 1 << 15;  // enough work per parallel task to pay for its start (as ATen's grain)
constexpr int64_t kRunElements = 1 << 17;      // elements per run of rows: long enough for the prefetchers to follow

// The per-pair cos and sin of a run of rows: row r uses c1[r * stride + i] for pair i, and so on.
template <typename acc_t>
struct Coefficients {
  const acc_t *c1, *s1, *c2, *s2;
  int64_t stride;  // 0: every row of the run has the same (the heads of one token)
};

// --- Row functions over contiguous storage bits (common/cpu_rows.h), which the compiler vectorizes. In place, x and
// out are the same rows: each iteration reads its pair before writing it, and no other iteration touches it (ivdep).
template <typename scalar_t, Style kStyle, typename E = Element<scalar_t>>
PE_ROW_CLONES void rotate_rows(const typename E::storage* x, int64_t x_stride, typename E::storage* out,
                               int64_t out_stride, Coefficients<typename E::acc> c, int64_t rows, int64_t n) {
  using acc_t = typename E::acc;
  for (int64_t r = 0; r < rows; ++r) {
    const typename E::storage* src = x + r * x_stride;
    typename E::storage* dst = out + r * out_stride;
    const acc_t *c1 = c.c1 + r * c.stride, *s1 = c.s1 + r * c.stride;
    const acc_t *c2 = c.c2 + r * c.stride, *s2 = c.s2 + r * c.stride;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) {
      const int64_t ia = pair_first(kStyle, i), ib = pair_second(kStyle, i, n);
      const acc_t a = E::load(src[ia]), b = E::load(src[ib]);
      dst[ia] = E::store(rotated_first(a, b, c1[i], s1[i]));
      dst[ib] = E::store(rotated_second(a, b, c2[i], s2[i]));
    }
  }
}

// The general form, for rows whose columns are strided.
template <typename scalar_t, typename acc_t>
void rotate_rows_strided(const scalar_t* x, int64_t x_stride, int64_t x_stride_d, scalar_t* out, int64_t out_stride,
                         int64_t out_stride_d, Coefficients<acc_t> c, int64_t rows, int64_t n, Style style) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* src = x + r * x_stride;
    scalar_t* dst = out + r * out_stride;
    const int64_t k = r * c.stride;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t ia = pair_first(style, i), ib = pair_second(style, i, n);
      const acc_t a = static_cast<acc_t>(src[ia * x_stride_d]), b = static_cast<acc_t>(src[ib * x_stride_d]);
      dst[ia * out_stride_d] = static_cast<scalar_t>(rotated_first(a, b, c.c1[k + i], c.s1[k + i]));
      dst[ib * out_stride_d] = static_cast<scalar_t>(rotated_second(a, b, c.c2[k + i], c.s2[k + i]));
    }
  }
}

// cos and sin of n pairs at position pos, times cos_scaling and sin_scaling (math.h), in float: with the vectorized
// PolynomialSinCos when every angle is within its limit, else with the library's sin and cos.
template <bool kPreciseAngle, typename SinCos>
C10_ALWAYS_INLINE void cos_sin_loop(const float* freqs, int64_t n, int64_t pos, float cos_scaling, float sin_scaling,
                                    float* c, float* s, SinCos sin_cos_of) {
  for (int64_t i = 0; i < n; ++i) {
    scaled_cos_sin(rotary_angle<float>(kPreciseAngle, pos, freqs[i]), cos_scaling, sin_scaling, &c[i], &s[i],
                   sin_cos_of);
  }
}

PE_ROW_CLONES void cos_sin_float(const float* freqs, int64_t n, int64_t pos, bool precise_angle, double max_freq,
                                 float cos_scaling, float sin_scaling, float* c, float* s) {
  if (precise_angle) {  // reduced angles are within pi
    cos_sin_loop<true>(freqs, n, pos, cos_scaling, sin_scaling, c, s, pe_ext::cpu::PolynomialSinCos());
  } else if (std::abs(static_cast<double>(pos)) * max_freq < pe_ext::cpu::kPolynomialAngleLimit) {
    cos_sin_loop<false>(freqs, n, pos, cos_scaling, sin_scaling, c, s, pe_ext::cpu::PolynomialSinCos());
  } else {
    cos_sin_loop<false>(freqs, n, pos, cos_scaling, sin_scaling, c, s, LibrarySinCos());
  }
}

// --- Where each token's per-pair cos and sin come from: computed from the frequencies, or read from the tables.
template <typename acc_t>
class CoefficientSource {
 public:
  explicit CoefficientSource(const RotaryProblem& p)
      : p_(p),
        positions_(p.positions_view()),
        n_(p.num_pairs()),
        freqs_(p.freqs.defined() ? p.freqs.const_data_ptr<acc_t>() : nullptr),
        max_freq_(max_abs(freqs_, n_)),
        cos_scaling_(static_cast<acc_t>(p.attention_scaling)),
        sin_scaling_(p.transpose ? -cos_scaling_ : cos_scaling_) {}

  // Whether both columns of a pair share their cos and sin (computed values), so that only c1 and s1 are filled.
  bool halves_shared() const { return freqs_ != nullptr; }
  // Whether batch rows can have different values (else one sequence's serve the whole batch).
  bool per_batch_row() const {
    return (positions_.ids != nullptr && positions_.ids_stride_b != 0) ||
           (freqs_ == nullptr && p_.cos.stride(0) != 0) || (freqs_ == nullptr && p_.sin.stride(0) != 0);
  }

  void fill(int64_t b, int64_t l, acc_t* c1, acc_t* s1, acc_t* c2, acc_t* s2) const {
    const int64_t pos = positions_(b, l);
    if (freqs_ == nullptr) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p_.cos.scalar_type(), "pe_ext_cpu_rotary_tables",
                                      [&] { read_tables<scalar_t>(b, pos, c1, s1, c2, s2); });
    } else if constexpr (std::is_same_v<acc_t, float>) {
      cos_sin_float(freqs_, n_, pos, p_.precise_angle, max_freq_, cos_scaling_, sin_scaling_, c1, s1);
    } else {
      for (int64_t i = 0; i < n_; ++i) {
        scaled_cos_sin(rotary_angle<acc_t>(p_.precise_angle, pos, freqs_[i]), cos_scaling_, sin_scaling_, &c1[i],
                       &s1[i], LibrarySinCos());
      }
    }
  }

 private:
  static double max_abs(const acc_t* freqs, int64_t n) {
    double m = 0;
    for (int64_t i = 0; freqs != nullptr && i < n; ++i) m = std::max(m, std::abs(static_cast<double>(freqs[i])));
    return m;
  }

  template <typename table_t>
  void read_tables(int64_t b, int64_t pos, acc_t* c1, acc_t* s1, acc_t* c2, acc_t* s2) const {
    const int64_t row = b * p_.cos.stride(0) + pos * p_.cos.stride(1), col = p_.cos.stride(2);
    const int64_t sin_row = b * p_.sin.stride(0) + pos * p_.sin.stride(1), sin_col = p_.sin.stride(2);
    const table_t* cos = p_.cos.const_data_ptr<table_t>() + row;
    const table_t* sin = p_.sin.const_data_ptr<table_t>() + sin_row;
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t ia = pair_first(p_.style, i), ib = pair_second(p_.style, i, n_);
      const acc_t sin_a = static_cast<acc_t>(sin[ia * sin_col]), sin_b = static_cast<acc_t>(sin[ib * sin_col]);
      c1[i] = static_cast<acc_t>(cos[ia * col]);
      c2[i] = static_cast<acc_t>(cos[ib * col]);
      s1[i] = p_.transpose ? -sin_b : sin_a;
      s2[i] = p_.transpose ? -sin_a : sin_b;
    }
  }

  const RotaryProblem& p_;
  const Positions positions_;
  const int64_t n_;
  const acc_t* freqs_;
  const double max_freq_;
  const acc_t cos_scaling_, sin_scaling_;
};

// Every token's per-pair cos and sin: [sequences, seq_len, num_pairs] arrays, filled in parallel (one sequence when
// the values are the same for every batch row).
template <typename acc_t>
class TokenCoefficients {
 public:
  TokenCoefficients(const CoefficientSource<acc_t>& source, int64_t batch, int64_t seq_len, int64_t n)
      : sequences_(source.per_batch_row() ? batch : 1),
        seq_len_(seq_len),
        n_(n),
        shared_halves_(source.halves_shared()),
        values_(new acc_t[(shared_halves_ ? 2 : 4) * sequences_ * seq_len * n]) {
    at::parallel_for(0, sequences_ * seq_len_, std::max<int64_t>(1, kElementsPerTask / (8 * n)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t t = begin; t < end; ++t) {
                         const int64_t b = t / seq_len_, l = t % seq_len_;
                         source.fill(b, l, array(0, b, l), array(1, b, l), array(shared_halves_ ? 0 : 2, b, l),
                                     array(shared_halves_ ? 1 : 3, b, l));
                       }
                     });
  }

  // The values of token (b, l), and of the tokens after it, `token_stride` apart (0: the same token for every row).
  Coefficients<acc_t> at(int64_t b, int64_t l, int64_t token_stride) const {
    return {array(0, b, l), array(1, b, l), array(shared_halves_ ? 0 : 2, b, l), array(shared_halves_ ? 1 : 3, b, l),
            token_stride * n_};
  }

 private:
  // Array k (c1, s1, c2, s2) at token (b, l).
  acc_t* array(int64_t k, int64_t b, int64_t l) const {
    return values_.get() + ((k * sequences_ + (sequences_ == 1 ? 0 : b)) * seq_len_ + l) * n_;
  }

  const int64_t sequences_, seq_len_, n_;
  const bool shared_halves_;
  const std::unique_ptr<acc_t[]> values_;
};

// One of q and k (and where its result goes), rotated in runs of rows: along the sequence (the rows of one head) when
// a head's tokens lie closer together than a token's heads (HF's layout), else along the heads (of one token).
template <typename scalar_t>
class Operand {
 public:
  using acc_t = at::opmath_type<scalar_t>;

  Operand(const at::Tensor& x, const at::Tensor& out, const RotaryProblem& p)
      : x_(x.const_data_ptr<scalar_t>()),
        out_(out.data_ptr<scalar_t>()),
        x_strides_{x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
        out_strides_{out.stride(0), out.stride(1), out.stride(2), out.stride(3)},
        contiguous_rows_(x.stride(3) == 1 && out.stride(3) == 1),
        along_tokens_(std::abs(x.stride(2)) > std::abs(x.stride(1))),
        batch_(x.size(0)),
        outer_(along_tokens_ ? x.size(2) : x.size(1)),
        run_(along_tokens_ ? x.size(1) : x.size(2)),
        run_chunk_(std::max<int64_t>(1, kRunElements / std::max<int64_t>(1, p.head_dim()))),
        chunks_((run_ + run_chunk_ - 1) / run_chunk_),
        n_(p.num_pairs()),
        rotary_dim_(p.rotary_dim),
        head_dim_(p.head_dim()),
        copies_rest_(!p.in_place && p.rotary_dim < p.head_dim()),
        style_(p.style) {}

  // Work items: (batch row, outer index, chunk of a run), each a run of rows.
  int64_t items() const { return batch_ * outer_ * chunks_; }
  int64_t rows_per_item() const { return std::max<int64_t>(1, std::min(run_, run_chunk_)); }

  void rotate(int64_t item, const TokenCoefficients<acc_t>& coefficients) const {
    const int64_t chunk = item % chunks_, o = item / chunks_ % outer_, b = item / chunks_ / outer_;
    const int64_t first = chunk * run_chunk_, rows = std::min(run_chunk_, run_ - first);
    const int64_t l = along_tokens_ ? first : o, h = along_tokens_ ? o : first;
    const int64_t x_step = along_tokens_ ? x_strides_[1] : x_strides_[2];
    const int64_t out_step = along_tokens_ ? out_strides_[1] : out_strides_[2];
    const scalar_t* src = x_ + b * x_strides_[0] + l * x_strides_[1] + h * x_strides_[2];
    scalar_t* dst = out_ + b * out_strides_[0] + l * out_strides_[1] + h * out_strides_[2];
    const Coefficients<acc_t> c = coefficients.at(b, l, along_tokens_ ? 1 : 0);
    if (contiguous_rows_) {
      if (style_ == Style::kNeox) {
        rotate_rows<scalar_t, Style::kNeox>(bits_of(src), x_step, bits_of(dst), out_step, c, rows, n_);
      } else {
        rotate_rows<scalar_t, Style::kGptj>(bits_of(src), x_step, bits_of(dst), out_step, c, rows, n_);
      }
    } else {
      rotate_rows_strided(src, x_step, x_strides_[3], dst, out_step, out_strides_[3], c, rows, n_, style_);
    }
    if (copies_rest_) copy_rest(src, x_step, dst, out_step, rows);
  }

 private:
  // Columns from rotary_dim on pass through.
  void copy_rest(const scalar_t* src, int64_t x_step, scalar_t* dst, int64_t out_step, int64_t rows) const {
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* from = src + r * x_step;
      scalar_t* to = dst + r * out_step;
      if (contiguous_rows_) {
        std::memcpy(to + rotary_dim_, from + rotary_dim_, (head_dim_ - rotary_dim_) * sizeof(scalar_t));
      } else {
        for (int64_t j = rotary_dim_; j < head_dim_; ++j) to[j * out_strides_[3]] = from[j * x_strides_[3]];
      }
    }
  }

  const scalar_t* x_;
  scalar_t* out_;
  const int64_t x_strides_[4], out_strides_[4];
  const bool contiguous_rows_, along_tokens_;
  const int64_t batch_, outer_, run_, run_chunk_, chunks_;
  const int64_t n_, rotary_dim_, head_dim_;
  const bool copies_rest_;
  const Style style_;
};

// Every token's values first, then q's work items followed by k's.
template <typename scalar_t>
void rotary_typed(const RotaryProblem& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const CoefficientSource<acc_t> source(p);
  const TokenCoefficients<acc_t> coefficients(source, p.batch(), p.seq_len(), p.num_pairs());
  const Operand<scalar_t> q(p.q, p.q_out, p);
  const std::optional<Operand<scalar_t>> k =
      p.k.defined() ? std::optional<Operand<scalar_t>>(std::in_place, p.k, p.k_out, p) : std::nullopt;
  const int64_t q_items = q.items(), items = q_items + (k ? k->items() : 0);
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (q.rows_per_item() * p.head_dim()));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i < q_items) {
        q.rotate(i, coefficients);
      } else {
        k->rotate(i - q_items, coefficients);
      }
    }
  });
}

void rotary_cpu(const RotaryProblem& p) {
  if (p.batch() == 0 || p.seq_len() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.q.scalar_type(), "pe_ext_cpu_rotary",
                                  [&] { rotary_typed<scalar_t>(p); });
}

}  // namespace
}  // namespace pe_ext::rotary

TORCH_LIBRARY_IMPL(pe_ext, CPU, m) { pe_ext::rotary::register_kernels<pe_ext::rotary::rotary_cpu>(m); }
