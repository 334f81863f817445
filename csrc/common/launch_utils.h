// Host-side helpers for CUDA launches, shared by the real launchers and the grid emulator.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace pe_ext {

// Whether every `vec`-wide chunk of every row of t (its last dimension) starts on a vec * sizeof(T) boundary, so it
// can be moved in one access. Strides of size-1 dimensions never move the pointer.
template <typename T>
bool rows_allow_vec(const at::Tensor& t, int vec) {
  const auto address = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  if (address % (static_cast<std::uintptr_t>(vec) * sizeof(T)) != 0) return false;
  if (t.size(-1) > 1 && t.stride(-1) != 1) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) % vec != 0) return false;
  }
  return true;
}

}  // namespace pe_ext
