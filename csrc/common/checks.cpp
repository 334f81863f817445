#include "common/checks.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#ifdef PE_EXT_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace pe_ext {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_supported_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_supported_dtype(t.scalar_type()), "pe_ext: ", name,
                   " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

// With its dimensions of size > 1 sorted by stride, each stride must step past everything the smaller ones reach.
// Expanded (stride 0) and overlapping as_strided views fail; so do a few exotic non-overlapping layouts, which are
// refused rather than guessed at.
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
                    "Pass a tensor with distinct elements, e.g. ",
                    name, ".contiguous()");
}

namespace {

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

}  // namespace

void check_no_shared_memory(const at::Tensor& written, const char* name, const at::Tensor& read,
                            const char* read_name) {
  TORCH_CHECK_VALUE(!share_memory(written, read), "pe_ext: ", name, "'s memory overlaps ", read_name,
                    "'s, which the op still reads while writing ", name, "; pass a separate tensor (e.g. ", read_name,
                    ".clone())");
}

void check_offset(int64_t offset, int64_t count) {
  TORCH_CHECK_VALUE(offset >= 0, "pe_ext: offset must be >= 0, got ", offset);
  check_offset_fits(offset, count);
}

void check_offset_fits(int64_t offset, int64_t count) {
  TORCH_CHECK_VALUE(offset <= std::numeric_limits<int64_t>::max() - count, "pe_ext: offset (", offset, ") + seq_len (",
                    count, ") overflows int64");
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), "pe_ext: ", name, " is on ", t.device(), " but ", like_name, " is on ",
                    like.device());
}

bool values_readable(const at::Tensor& t) {
#ifdef PE_EXT_WITH_CUDA
  if (t.is_cuda()) {
    const auto stream = c10::cuda::getCurrentCUDAStream(t.get_device());
    return c10::cuda::captureStatusMayInitCtx(stream) == c10::cuda::CaptureStatus::None;
  }
#endif
  return true;
}

}  // namespace pe_ext
