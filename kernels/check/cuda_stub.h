// A stand-in for the CUDA toolkit, so that kernels/emilio.cu compiles as C++17 on a machine
// without nvcc or a GPU, and runs in the SIMT emulator (kernels/check/emulate.cpp, built with
// -DEMILIO_EMULATE_CUDA):
//
//   c++ -fsyntax-only -std=c++17 -include kernels/check/cuda_stub.h -x c++ kernels/emilio.cu
//
// emilio.cu reaches CUDA only through the EMILIO_* wrappers and a few built-ins; this defines
// exactly those: the wrappers with the semantics of the CUDA intrinsics they stand for
// (__fmaf_rn, __uint_as_float, __float_as_uint, __half2float, __float2half_rn,
// __shfl_xor_sync over a full warp, __syncthreads, __shared__), `__global__`, `threadIdx`,
// `blockIdx`, `blockDim`, `uint4`, `fminf`, `fmaxf`. The position built-ins, the shuffle and the
// barrier are only declared here: the emulator defines them; a syntax check never links.
//
// Keep it small and honest: a built-in the kernels start to use must be added here with the
// semantics the CUDA C++ Programming Guide gives it, or the check fails to compile.
//
// What this does not model: nvcc and the GPU's arithmetic. The float operations are the host's
// IEEE ones in round-to-nearest-even with subnormals (what emilio.cu asks of nvcc: no fast math,
// --fmad=false, so the GPU should agree, but only a GPU run shows it). `#pragma unroll` is
// ignored. The f16 conversions are the compiler's _Float16 ones (correctly rounded, as
// __float2half_rn is), except that a NaN keeps its payload where CUDA returns a canonical NaN.

#pragma once

#include <cstdint>
#include <cstring>
#include <math.h> // fminf, fmaxf in the global namespace, as CUDA has them

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define EMILIO_DEVICE inline
// A block-shared array: static, so that the emulated threads of one block share it (the emulator
// runs one block at a time).
#define EMILIO_SHARED static

// ---- built-in types and variables ---------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};

// The 16-byte vector the GEMV's vectorised loop loads magnitudes with. Like CUDA's, it is
// 16-byte aligned, so an access through a misaligned pointer is undefined (the emulator's
// -fsanitize=alignment build reports it). Its copy counts the 16-byte loads, so that the tests
// can tell the vectorised loop from the scalar one.
void emilio_emu_count_vector_load();
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
    uint4 &operator=(const uint4 &v) {
        emilio_emu_count_vector_load();
        x = v.x;
        y = v.y;
        z = v.z;
        w = v.w;
        return *this;
    }
};
static_assert(sizeof(uint4) == 16 && alignof(uint4) == 16, "CUDA's uint4 is 16 bytes, aligned");

// The thread's position, set by the emulator before each thread's body. blockDim is a dim3 in
// CUDA; only .x/.y/.z are read.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local uint3 blockDim;

// ---- arithmetic and reinterpretation ----------------------------------------------------------
static_assert(sizeof(float) == 4 && sizeof(unsigned int) == 4 && sizeof(unsigned short) == 2,
              "CUDA's float, unsigned int and unsigned short are 32, 32 and 16 bits");

inline float emilio_emu_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline unsigned int emilio_emu_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
// IEEE binary16 from its bits: exact.
inline float emilio_emu_f16_to_f32(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, sizeof h);
    return static_cast<float>(h);
}
// f32 → binary16 bits, rounded to nearest even (subnormals, overflow to infinity).
inline unsigned short emilio_emu_f32_to_f16(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    unsigned short bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
}

// __fmaf_rn: one rounding (libm's fmaf is correctly rounded).
#define EMILIO_FMA(A, B, C) fmaf((A), (B), (C))
#define EMILIO_AS_FLOAT(U) emilio_emu_as_float(U)
#define EMILIO_AS_UINT(F) emilio_emu_as_uint(F)
#define EMILIO_F16_TO_F32(H) emilio_emu_f16_to_f32(H)
#define EMILIO_F32_TO_F16(F) emilio_emu_f32_to_f16(F)

// ---- warp and block synchronisation (provided by the emulator) ---------------------------------
// Every lane of the warp publishes a 32-bit word and gets lane (its lane ^ mask)'s: the full-warp
// __shfl_xor_sync. Lanes that do not all call it (divergence, an exited lane) hang the emulator
// where a GPU's behaviour is undefined.
unsigned int emilio_emu_shfl_xor(unsigned int word, int mask);
// __syncthreads: every thread of the block.
void emilio_emu_syncthreads();

template <typename T>
inline T emilio_emu_shfl_xor_any(T v, int mask) {
    static_assert(sizeof(T) == 4, "__shfl_xor_sync of a 32-bit value");
    unsigned int word;
    std::memcpy(&word, &v, sizeof word);
    word = emilio_emu_shfl_xor(word, mask);
    std::memcpy(&v, &word, sizeof v);
    return v;
}

#define EMILIO_SHFL_XOR(V, MASK) emilio_emu_shfl_xor_any((V), (MASK))
#define EMILIO_SYNC() emilio_emu_syncthreads()
