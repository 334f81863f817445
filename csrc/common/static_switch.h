// Named compile-time switches (after flash-attention's static_switch.h): run a body with a runtime condition turned
// into a constexpr, so that each value gets a kernel compiled without the other's code.
//
//   PE_BOOL_SWITCH(p.dropout > 0, kDropout, [&] { launch<kDropout>(args); });
#pragma once

#define PE_BOOL_SWITCH(COND, CONST_NAME, ...)   \
  [&] {                                         \
    if (COND) {                                 \
      constexpr static bool CONST_NAME = true;  \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                     \
    }                                           \
  }()
