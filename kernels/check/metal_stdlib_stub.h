// A stand-in for <metal_stdlib>, so that kernels/emilio.metal compiles as C++17 on a machine
// without Apple's Metal compiler (Linux CI):
//
//   c++ -fsyntax-only -std=c++17 -Wno-attributes
//       -include kernels/check/metal_stdlib_stub.h -x c++ kernels/emilio.metal
//
// It defines exactly what the kernels use: the address-space qualifiers and `kernel` as empty
// macros (attributes such as [[buffer(0)]] are left to the compiler, which ignores unknown ones),
// the scalar and vector types, `as_type`, the math and integer functions with Metal's semantics,
// and the SIMD-group and threadgroup functions. The last ones are only declared here: the
// SIMT emulator (kernels/check/emulate.cpp) defines them; a syntax check never links.
//
// Keep it small and honest: a function the kernels start to use must be added here with the
// semantics the Metal Shading Language specification gives it, or the check fails to compile.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// ---- address spaces, function qualifiers ------------------------------------------------------
#define kernel
#define device
#define constant
#define thread
#define threadgroup
// A threadgroup array: static, so that the emulated threads of one threadgroup share it (the
// emulator runs one threadgroup at a time).
#define EMILIO_TG_ARRAY(T, NAME, N) static T NAME[N]

// ---- scalar and vector types ------------------------------------------------------------------
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned long ulong;
static_assert(sizeof(uint) == 4 && sizeof(ushort) == 2 && sizeof(ulong) == 8,
              "Metal's uint, ushort and ulong are 32, 16 and 64 bits");
// IEEE binary16, converted with round-to-nearest-even as Metal's half(float) is.
typedef _Float16 half;

struct uint3 {
    uint x, y, z;
};

namespace metal {

// ---- reinterpretation -------------------------------------------------------------------------
template <typename To, typename From>
inline To as_type(From v) {
    static_assert(sizeof(To) == sizeof(From), "as_type needs types of one size");
    To out;
    std::memcpy(&out, &v, sizeof out);
    return out;
}

// ---- math (Metal semantics: fmin/fmax for floats, a fused multiply-add) ------------------------
// The kernels call these as metal::fma, metal::min, metal::max: libc++ (macOS) declares float
// overloads of C's fma in the global namespace, so an unqualified call would be ambiguous here.
inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline uint min(uint a, uint b) { return a < b ? a : b; }
inline uint max(uint a, uint b) { return a < b ? b : a; }

// ---- synchronisation --------------------------------------------------------------------------
enum class mem_flags { mem_none, mem_device, mem_threadgroup };

}  // namespace metal

// Provided by the emulator (kernels/check/emulate.cpp).
float emilio_emu_simd_sum(float x);
bool emilio_emu_simd_all(bool x);
void emilio_emu_threadgroup_barrier();

namespace metal {
inline float simd_sum(float x) { return emilio_emu_simd_sum(x); }
inline bool simd_all(bool x) { return emilio_emu_simd_all(x); }
inline void threadgroup_barrier(mem_flags) { emilio_emu_threadgroup_barrier(); }
}  // namespace metal

using namespace metal;
