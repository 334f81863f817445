// Included first by a translation unit whose floating-point products and sums must each be rounded once, as PyTorch's
// separate elementwise ops round them (the rotary kernels agree bitwise with Hugging Face's float32 code this way).
// GCC and clang otherwise fuse a * b + c into an FMA wherever the target has one, at their default settings.
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
