// The frequencies of an encoding, as its kernels read them: a small float64 table per (encoding, angle type,
// device), evaluated once on the host with torch's own CPU ops and cached. The float32 ones are so bit-identical to
// the div_term that the classic module computes in float32 when it is built (the same ATen ops on the same inputs),
// which makes pe_ext's values equal to the module's to the rounding of sin and cos alone.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>

namespace pe_ext::sinusoidal {

// The built-in formulas, as PyTorch code writes them (d = d_model, n = the number of frequencies):
//   kPaper       (the classic module, ESPnet):  exp(arange(0, d, 2) * -(log(base) / d))
//   kTimescales  (fairseq; tensor2tensor's):    exp(arange(n) * -(log(max_timescale / min_timescale) /
//                                                                  max(d / 2 - 1, 1))) / min_timescale
enum class FrequencyFormula : int32_t { kPaper, kTimescales };

// How a float32 angle's frequencies are rounded: kFloat32 evaluates the formula in float32 as PyTorch does (the
// default: what the classic module and its peers compute); kCorrect evaluates it in float64 and rounds once.
enum class FrequencyRounding : int32_t { kFloat32, kCorrect };

struct FrequencyRecipe {
  FrequencyFormula formula = FrequencyFormula::kPaper;
  FrequencyRounding rounding = FrequencyRounding::kFloat32;
  double base = 10000.0;                                // kPaper
  double min_timescale = 1.0, max_timescale = 10000.0;  // kTimescales
};

// values: float64 [num_freqs] on the device the kernels read them on, each exactly the value the angle uses (a
// float32 value for a float32 angle). max_abs: the largest |value| (the CPU kernel's guard for its polynomials).
struct FrequencyTable {
  at::Tensor values;
  double max_abs = 0.0;
};

// The recipe's first num_freqs frequencies for d_model, for a float32 angle (the default for float32, float16 and
// bfloat16 data) or, with double_angle (float64 data, precise_angle), evaluated in float64 whatever the rounding.
FrequencyTable recipe_frequencies(const FrequencyRecipe& recipe, int64_t d_model, int64_t num_freqs, bool double_angle,
                                  c10::Device device);

// A caller's 1-D tensor of frequencies (a model's own div_term or inv_freq), on `device` already: used as given,
// rounded to float32 first for a float32 angle. Its max_abs is NaN (unknown: reading it would sync a GPU).
FrequencyTable given_frequencies(const at::Tensor& inv_freq, bool double_angle);

}  // namespace pe_ext::sinusoidal
