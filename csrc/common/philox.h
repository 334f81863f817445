// Counter-based dropout masks, the same on every device and recomputable in backward instead of stored.
// Element `index` (its logical position in the op's output) is kept when its uniform number u = bits / 2^24 >= p,
// bits being the top 24 bits of word index % 4 of Philox4x32-10(counter = index / 4, key = seed).
// As integers: bits >= ceil(p * 2^24) (exact, since p * 2^24 is), a compare that vectorizes.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace pe_ext {

struct PhiloxWords {
  uint32_t w[4];
};

PE_HOST_DEVICE uint32_t mul_hi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

PE_HOST_DEVICE PhiloxWords philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mul_hi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = mul_hi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

PE_HOST_DEVICE uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(::ceil(p * 16777216.0)); }

PE_HOST_DEVICE bool dropout_keeps(uint32_t word, uint32_t threshold) { return (word >> 8) >= threshold; }

}  // namespace pe_ext
