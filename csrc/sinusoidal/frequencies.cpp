#include "sinusoidal/frequencies.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#ifdef PE_EXT_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace pe_ext::sinusoidal {
namespace {

// The formula evaluated by torch's CPU ops in `dtype`, exactly as the Python code it comes from writes it (a Python
// float times a float32 tensor is a float32 multiply by the float rounded to float32, then torch's float32 exp).
at::Tensor evaluate(const FrequencyRecipe& r, int64_t d_model, int64_t num_freqs, at::ScalarType dtype) {
  const auto ints = at::TensorOptions().dtype(at::kLong);
  if (r.formula == FrequencyFormula::kPaper) {
    const double factor = -(std::log(r.base) / static_cast<double>(d_model));
    return at::arange(0, d_model, 2, ints).to(dtype).mul(factor).exp().narrow(0, 0, num_freqs);
  }
  const double increment = std::log(r.max_timescale / r.min_timescale) / std::max<double>(d_model / 2 - 1, 1);
  return at::arange(num_freqs, ints).to(dtype).mul(-increment).exp().div(r.min_timescale);
}

// The kernels' table (float64, contiguous) of frequencies evaluated on the CPU, and their largest magnitude.
FrequencyTable host_table(const FrequencyRecipe& r, int64_t d_model, int64_t num_freqs, bool double_angle) {
  const bool in_float32 = !double_angle && r.rounding == FrequencyRounding::kFloat32;
  at::Tensor values = evaluate(r, d_model, num_freqs, in_float32 ? at::kFloat : at::kDouble);
  if (!double_angle) values = values.to(at::kFloat);  // kCorrect: rounded once, from float64
  values = values.to(at::kDouble).contiguous();
  const double* v = values.const_data_ptr<double>();
  double max_abs = 0.0;
  for (int64_t i = 0; i < num_freqs; ++i) max_abs = std::max(max_abs, std::fabs(v[i]));
  return {values, max_abs};
}

// Copying the table to a GPU syncs its stream, which a CUDA graph capture forbids.
void check_not_capturing(c10::Device device) {
#ifdef PE_EXT_WITH_CUDA
  if (!device.is_cuda()) return;
  const c10::cuda::CUDAGuard guard(device);
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
              "pe_ext: this encoding's frequencies are not on ", device,
              " yet, and copying them there is not allowed while a CUDA graph is being captured; call the op once "
              "before capture (a warm-up, as the CUDA graphs documentation asks)");
#else
  (void)device;
#endif
}

// (formula, what the values are, base, min_timescale, max_timescale, d_model, num_freqs, device type, device index)
using Key = std::tuple<int, int, double, double, double, int64_t, int64_t, int, int>;
constexpr size_t kMaxCachedTables = 1024;  // beyond, tables are computed per call (sweeps over many bases)

}  // namespace

FrequencyTable recipe_frequencies(const FrequencyRecipe& recipe, int64_t d_model, int64_t num_freqs, bool double_angle,
                                  c10::Device device) {
  if (num_freqs == 0) return {at::empty({0}, at::TensorOptions().dtype(at::kDouble).device(device)), 0.0};
  const bool paper = recipe.formula == FrequencyFormula::kPaper;
  const int values_kind = double_angle ? 2 : static_cast<int>(recipe.rounding);
  const Key key{static_cast<int>(recipe.formula),
                values_kind,
                paper ? recipe.base : 0.0,
                paper ? 0.0 : recipe.min_timescale,
                paper ? 0.0 : recipe.max_timescale,
                d_model,
                num_freqs,
                static_cast<int>(device.type()),
                device.index()};
  // Decoding calls one position at a time, so a lookup must cost far less than the row it serves: each thread
  // first checks the table it used last.
  thread_local const std::pair<const Key, FrequencyTable>* last_used = nullptr;
  if (last_used != nullptr && last_used->first == key) return last_used->second;

  static std::mutex mutex;
  static auto* cache = new std::map<Key, FrequencyTable>();  // never destroyed: device memory outlives exit order
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = cache->find(key); found != cache->end()) {
    last_used = &*found;
    return found->second;
  }
  FrequencyTable table = host_table(recipe, d_model, num_freqs, double_angle);
  if (!device.is_cpu()) {
    check_not_capturing(device);
    table.values = table.values.to(device);  // a blocking copy: ready for kernels on any stream
  }
  if (cache->size() >= kMaxCachedTables) return table;
  last_used = &*cache->emplace(key, table).first;
  return table;
}

FrequencyTable given_frequencies(const at::Tensor& inv_freq, bool double_angle) {
  const at::Tensor values = double_angle ? inv_freq.to(at::kDouble) : inv_freq.to(at::kFloat).to(at::kDouble);
  return {values.contiguous(), std::numeric_limits<double>::quiet_NaN()};
}

}  // namespace pe_ext::sinusoidal
