// Emilio's Metal kernels: log-domain products a·b = s(a)·s(b)·exp(ln|a| + ln|b|).
//
// Embedded by the emilio-kernels crate (METAL_SOURCE) and compiled at run time by the Metal
// device (emilio-op/src/metal/device.rs), with fast math OFF: the IEEE edge cases of the op's
// contract (docs/architecture.md: signed zeros, 0·inf = NaN, NaN propagation, overflow and
// underflow only where the true product has them) depend on it.
//
// Kernels (the host side, emilio-op/src/plan.rs, names and drives them):
// - emilio_ln_split_{contiguous,strided}_{f32,f16,bf16}: activations → ln|x| (f32) and the sign
//   bit as a mask (u32: 0 or 0x80000000), dense, rows along the reduction dimension k.
// - emilio_gemv_{out}_{mag}: decode, 1 to EMILIO_GEMV_MAX_M activation rows against a log-domain
//   weight: one SIMD-group per output feature, lane j reading magnitude k = 32·q + j and sign
//   bit j of packed word q, simd_sum to reduce.
// - emilio_gemm_w_{out}_{mag}: prefill against a log-domain weight, threadgroup tiles.
// - emilio_gemm_a_{out}: activations × activations (attention's Q·Kᵀ and P·V), same tiles.
// {out} is the result dtype (f32, f16, bf16; accumulation is always f32), {mag} the weight's
// magnitude format (f32, f16).
//
// The arithmetic is the CPU path's, operation for operation (emilio-op/src/cpu/exp.rs and ln.rs
// with fused multiply-add): the same exp, within 2 ulp over the whole f32 range, and ln, within
// 1 ulp, both tested exhaustively enough on the CPU, rather than metal::precise::exp/log, whose
// accuracy is Apple's and cannot be measured without the hardware. Only fma, integer operations
// and correctly rounded + - * are used, so the emulator reproduces the CPU's results bit for
// bit. Constants are shared through the EMILIO_* block below, which emilio-op's tests parse and
// compare, bit for bit, with the Rust constants and emilio_op::packing.
//
// Checked on Linux (no Apple GPU there): compiled as C++ against kernels/check/metal_stdlib_stub.h
// and executed by the SIMT emulator kernels/check/emulate.cpp (emilio-op's tests).

#if defined(__METAL_VERSION__)
#include <metal_stdlib>
using namespace metal;
#endif

// A threadgroup-memory array declared in a kernel. The C++ emulator redefines it as a static
// array shared by the emulated threads of the threadgroup it runs.
#ifndef EMILIO_TG_ARRAY
#define EMILIO_TG_ARRAY(T, NAME, N) threadgroup T NAME[N]
#endif

// ---- BEGIN EMILIO SHARED CONSTANTS ------------------------------------------------------------
// One `#define EMILIO_NAME value` per line; emilio-op/src/plan/tests/kernel_source.rs parses
// this block.
//
// Sign packing (emilio-op/src/packing.rs): bit j (value 1 << j) of u32 word q of weight row o is
// the IEEE sign bit of w[o, 32·q + j]; padding bits past `in` are zero.
#define EMILIO_SIGN_BITS_PER_WORD 32
// The SIMD-group width the GEMV kernel assumes (lane j ↔ sign bit j); checked on the host.
#define EMILIO_SIMD_WIDTH 32
// exp (emilio-op/src/cpu/exp.rs `consts`).
#define EMILIO_EXP_LOG2E 1.442695e0f
#define EMILIO_EXP_ROUND_MAGIC 1.2582912e7f
#define EMILIO_EXP_LN2_HI 6.933594e-1f
#define EMILIO_EXP_LN2_LO -2.1219444e-4f
#define EMILIO_EXP_X_MAX 8.9e1f
#define EMILIO_EXP_X_MIN -1.04e2f
// e^r on |r| <= ln2/2 (exp.rs `POLY`), highest degree first, evaluated by Horner.
#define EMILIO_EXP_POLY_0 1.3863787e-3f
#define EMILIO_EXP_POLY_1 8.367476e-3f
#define EMILIO_EXP_POLY_2 4.1667238e-2f
#define EMILIO_EXP_POLY_3 1.6666535e-1f
#define EMILIO_EXP_POLY_4 5e-1f
#define EMILIO_EXP_POLY_5 1e0f
#define EMILIO_EXP_POLY_6 1e0f
// ln (emilio-op/src/cpu/ln.rs): Cephes logf polynomial, highest degree first.
#define EMILIO_LN_P0 7.0376836e-2f
#define EMILIO_LN_P1 -1.1514611e-1f
#define EMILIO_LN_P2 1.1676999e-1f
#define EMILIO_LN_P3 -1.2420141e-1f
#define EMILIO_LN_P4 1.4249323e-1f
#define EMILIO_LN_P5 -1.6668057e-1f
#define EMILIO_LN_P6 2.0000716e-1f
#define EMILIO_LN_P7 -2.4999994e-1f
#define EMILIO_LN_P8 3.333333e-1f
#define EMILIO_LN_LN2_HI 6.933594e-1f
#define EMILIO_LN_LN2_LO -2.1219444e-4f
#define EMILIO_LN_SQRT_HALF_BITS 0x3f3504f3
// 2^-126, the smallest normal f32.
#define EMILIO_LN_TWO_POW_M126 1.1754944e-38f
// Tiling: emilio-op/src/plan.rs dispatches with the same values (a test holds them equal).
#define EMILIO_GEMV_ROWS_PER_GROUP 4
#define EMILIO_GEMV_MAX_M 4
#define EMILIO_GEMM_BM 32
#define EMILIO_GEMM_BN 32
#define EMILIO_GEMM_BK 32
#define EMILIO_GEMM_THREADS 256
// ---- END EMILIO SHARED CONSTANTS --------------------------------------------------------------

// The sign bit (0 or 1) of element j of a packed word.
#define EMILIO_SIGN_BIT(WORD, J) (((WORD) >> (J)) & 1u)

static_assert(EMILIO_SIGN_BITS_PER_WORD == EMILIO_SIMD_WIDTH,
              "the GEMV kernel maps SIMD lane j to sign bit j");
static_assert(EMILIO_GEMM_THREADS == (EMILIO_GEMM_BM / 2) * (EMILIO_GEMM_BN / 2),
              "each GEMM thread computes a 2x2 block of outputs");
static_assert(EMILIO_GEMM_BM == EMILIO_GEMM_BN, "square output tiles");

// Leading dimension of the threadgroup tiles: one word of padding against bank conflicts.
#define EMILIO_GEMM_LD (EMILIO_GEMM_BK + 1)

// ---------------------------------------------------------------------------------------------
// Scalar arithmetic, shared by every kernel
// ---------------------------------------------------------------------------------------------

// ln(|x|) from the bits of |x| (sign cleared): ln 0 = -inf, ln inf = inf, NaN stays NaN.
// emilio-op/src/cpu/ln.rs `ln_f32::<true>` operation for operation. Subnormals are normalised
// with integer arithmetic (bits·2^-126 is a normal number), so a GPU that flushes subnormal
// operands gives the same result as the CPU.
inline float emilio_ln_abs(uint bits) {
    const bool subnormal = bits < 0x00800000u; // zero too: its result is replaced below
    const float xs = subnormal ? float(bits) * EMILIO_LN_TWO_POW_M126 : as_type<float>(bits);
    // xs = 2^e · m with m in [√½, √2): offset the bits so the mantissa range starts at √½.
    const int t = as_type<int>(xs) - EMILIO_LN_SQRT_HALF_BITS;
    const int e = (t >> 23) - (subnormal ? 23 : 0);
    const float m = as_type<float>((t & 0x007fffff) + EMILIO_LN_SQRT_HALF_BITS);
    const float f = m - 1.0f;
    const float ef = float(e);
    const float z = f * f;
    float p = EMILIO_LN_P0;
    p = metal::fma(p, f, EMILIO_LN_P1);
    p = metal::fma(p, f, EMILIO_LN_P2);
    p = metal::fma(p, f, EMILIO_LN_P3);
    p = metal::fma(p, f, EMILIO_LN_P4);
    p = metal::fma(p, f, EMILIO_LN_P5);
    p = metal::fma(p, f, EMILIO_LN_P6);
    p = metal::fma(p, f, EMILIO_LN_P7);
    p = metal::fma(p, f, EMILIO_LN_P8);
    float y = f * z * p;
    y = metal::fma(ef, EMILIO_LN_LN2_LO, y);
    y = metal::fma(-0.5f, z, y);
    const float r = metal::fma(ef, EMILIO_LN_LN2_HI, f + y);
    if (bits == 0u) {
        return as_type<float>(0xff800000u); // -inf
    }
    if (bits >= 0x7f800000u) {
        return as_type<float>(bits); // +inf, NaN
    }
    return r;
}

// e^x within 2 ulp over the whole f32 range: emilio-op/src/cpu/exp.rs `exp_f32::<true>`
// operation for operation. Past the overflow threshold +inf, below the underflow threshold +0
// (-inf gives +0), NaN stays NaN; subnormal results are rounded once, by the last multiply.
inline float emilio_exp(float x) {
    // A NaN goes through the arithmetic as garbage; the final select restores it.
    const float xc = metal::min(metal::max(x, EMILIO_EXP_X_MIN), EMILIO_EXP_X_MAX);
    const float t = metal::fma(xc, EMILIO_EXP_LOG2E, EMILIO_EXP_ROUND_MAGIC);
    const float n_f = t - EMILIO_EXP_ROUND_MAGIC;
    const int n = as_type<int>(t) - as_type<int>(EMILIO_EXP_ROUND_MAGIC);
    float r = metal::fma(-n_f, EMILIO_EXP_LN2_HI, xc);
    r = metal::fma(-n_f, EMILIO_EXP_LN2_LO, r);
    float p = EMILIO_EXP_POLY_0;
    p = metal::fma(p, r, EMILIO_EXP_POLY_1);
    p = metal::fma(p, r, EMILIO_EXP_POLY_2);
    p = metal::fma(p, r, EMILIO_EXP_POLY_3);
    p = metal::fma(p, r, EMILIO_EXP_POLY_4);
    p = metal::fma(p, r, EMILIO_EXP_POLY_5);
    p = metal::fma(p, r, EMILIO_EXP_POLY_6);
    // 2^n as two normal powers of two, so a subnormal result is rounded once.
    const int n1 = n >> 1;
    const int n2 = n - n1;
    const float s1 = as_type<float>(uint(n1 + 127) << 23);
    const float s2 = as_type<float>(uint(n2 + 127) << 23);
    const float y = (p * s1) * s2;
    return (as_type<uint>(x) & 0x7fffffffu) > 0x7f800000u ? x : y;
}

// s·exp(l) with the sign carried by `mask` (0 or 0x80000000): exp is never negative, so XOR-ing
// the mask onto its bits sets the sign exactly as a multiply would, zeros included.
inline float emilio_signed_exp(float l, uint mask) {
    return as_type<float>(as_type<uint>(emilio_exp(l)) ^ mask);
}

// ---------------------------------------------------------------------------------------------
// Storage dtypes: how a kernel reads an input element and writes a result
// ---------------------------------------------------------------------------------------------

struct emilio_f32 {
    typedef float storage;
    static float load(float v) { return v; }
    static float store(float v) { return v; }
};

struct emilio_f16 {
    typedef half storage;
    static float load(half v) { return float(v); } // exact, subnormal halves included
    static half store(float v) { return half(v); } // round to nearest even
};

// bf16 is read and written as its bits, so no bfloat type (MSL 3.1+) is needed.
struct emilio_bf16 {
    typedef ushort storage;
    static float load(ushort v) { return as_type<float>(uint(v) << 16); }
    // Round to nearest even, NaN kept quiet: half::bf16::from_f32 bit for bit.
    static ushort store(float v) {
        const uint b = as_type<uint>(v);
        if ((b & 0x7fffffffu) > 0x7f800000u) {
            return ushort((b >> 16) | 0x0040u);
        }
        return ushort((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
};

// ---------------------------------------------------------------------------------------------
// ln_split: one thread per element
// ---------------------------------------------------------------------------------------------

inline void emilio_split_store(float x, uint i, device float *logs, device uint *masks) {
    const uint bits = as_type<uint>(x);
    logs[i] = emilio_ln_abs(bits & 0x7fffffffu);
    masks[i] = bits & 0x80000000u;
}

// Element i of a dense row-major view of `rank` dims read through `strides` (in elements, from
// the buffer offset the host binds): candle's get_strided_index, in 32-bit arithmetic.
inline uint emilio_strided_index(uint i, uint rank, constant uint *dims, constant uint *strides) {
    uint offset = 0;
    for (uint d = rank; d > 0; --d) {
        offset += (i % dims[d - 1]) * strides[d - 1];
        i /= dims[d - 1];
    }
    return offset;
}

#define EMILIO_LN_SPLIT(SUFFIX, IO)                                                                 \
    kernel void emilio_ln_split_contiguous_##SUFFIX(                                                \
        constant uint &count [[buffer(0)]],                                                         \
        device const IO::storage *src [[buffer(1)]],                                                \
        device float *logs [[buffer(2)]],                                                           \
        device uint *masks [[buffer(3)]],                                                           \
        uint i [[thread_position_in_grid]]) {                                                       \
        if (i >= count) {                                                                           \
            return;                                                                                 \
        }                                                                                           \
        emilio_split_store(IO::load(src[i]), i, logs, masks);                                       \
    }                                                                                               \
    kernel void emilio_ln_split_strided_##SUFFIX(                                                   \
        constant uint &count [[buffer(0)]],                                                         \
        constant uint &rank [[buffer(1)]],                                                          \
        constant uint *dims [[buffer(2)]],                                                          \
        constant uint *strides [[buffer(3)]],                                                       \
        device const IO::storage *src [[buffer(4)]],                                                \
        device float *logs [[buffer(5)]],                                                           \
        device uint *masks [[buffer(6)]],                                                           \
        uint i [[thread_position_in_grid]]) {                                                       \
        if (i >= count) {                                                                           \
            return;                                                                                 \
        }                                                                                           \
        const uint at = emilio_strided_index(i, rank, dims, strides);                               \
        emilio_split_store(IO::load(src[at]), i, logs, masks);                                      \
    }

EMILIO_LN_SPLIT(f32, emilio_f32)
EMILIO_LN_SPLIT(f16, emilio_f16)
EMILIO_LN_SPLIT(bf16, emilio_bf16)

// ---------------------------------------------------------------------------------------------
// GEMV (decode): one SIMD-group per output feature o, for m ≤ EMILIO_GEMV_MAX_M activation rows
// ---------------------------------------------------------------------------------------------

// la, sa: split activations, m rows of k. mags: (n, k) log magnitudes, signs: (n, words) packed
// sign words. y: (m, n). Every lane of the SIMD-group calls this (o is uniform across it).
template <typename OUT, typename MAG>
inline void emilio_gemv_impl(uint m, uint n, uint k,
                             device const float *la, device const uint *sa,
                             device const typename MAG::storage *mags,
                             device const uint *signs,
                             device typename OUT::storage *y,
                             uint o, uint lane) {
    const uint words = (k + EMILIO_SIGN_BITS_PER_WORD - 1) / EMILIO_SIGN_BITS_PER_WORD;
    device const typename MAG::storage *wrow = mags + ulong(o) * ulong(k);
    device const uint *srow = signs + ulong(o) * ulong(words);
    float acc[EMILIO_GEMV_MAX_M];
    for (uint r = 0; r < EMILIO_GEMV_MAX_M; ++r) {
        acc[r] = -0.0f; // the IEEE additive identity: a single -0.0 product stays -0.0
    }
    for (uint q = 0; q < words; ++q) {
        const uint kk = q * EMILIO_SIGN_BITS_PER_WORD + lane;
        if (kk < k) {
            const uint word = srow[q];
            const float lw = MAG::load(wrow[kk]);
            const uint mw = EMILIO_SIGN_BIT(word, lane) << 31;
            for (uint r = 0; r < m; ++r) {
                const uint i = r * k + kk;
                acc[r] += emilio_signed_exp(la[i] + lw, sa[i] ^ mw);
            }
        }
    }
    for (uint r = 0; r < m; ++r) {
        float total = simd_sum(acc[r]);
        // An IEEE sum is -0.0 exactly when every term is; do not rely on how simd_sum seeds
        // its reduction.
        if (simd_all(as_type<uint>(acc[r]) == 0x80000000u)) {
            total = -0.0f;
        }
        if (lane == 0) {
            y[ulong(r) * ulong(n) + o] = OUT::store(total);
        }
    }
}

#define EMILIO_GEMV(SUFFIX, OUT, MAG)                                                               \
    kernel void emilio_gemv_##SUFFIX(                                                               \
        constant uint &m [[buffer(0)]],                                                             \
        constant uint &n [[buffer(1)]],                                                             \
        constant uint &k [[buffer(2)]],                                                             \
        device const float *la [[buffer(3)]],                                                       \
        device const uint *sa [[buffer(4)]],                                                        \
        device const MAG::storage *mags [[buffer(5)]],                                              \
        device const uint *signs [[buffer(6)]],                                                     \
        device OUT::storage *y [[buffer(7)]],                                                       \
        uint group [[threadgroup_position_in_grid]],                                                \
        uint sg [[simdgroup_index_in_threadgroup]],                                                 \
        uint lane [[thread_index_in_simdgroup]]) {                                                  \
        const uint o = group * EMILIO_GEMV_ROWS_PER_GROUP + sg;                                     \
        if (o >= n) {                                                                               \
            return; /* the whole SIMD-group: simd_sum below stays uniform */                        \
        }                                                                                           \
        emilio_gemv_impl<OUT, MAG>(m, n, k, la, sa, mags, signs, y, o, lane);                       \
    }

EMILIO_GEMV(f32_f32, emilio_f32, emilio_f32)
EMILIO_GEMV(f32_f16, emilio_f32, emilio_f16)
EMILIO_GEMV(f16_f32, emilio_f16, emilio_f32)
EMILIO_GEMV(f16_f16, emilio_f16, emilio_f16)
EMILIO_GEMV(bf16_f32, emilio_bf16, emilio_f32)
EMILIO_GEMV(bf16_f16, emilio_bf16, emilio_f16)

// ---------------------------------------------------------------------------------------------
// GEMM: a threadgroup computes a BM × BN block of C = A ⊗ B; 256 threads, each a 2 × 2 block
// (rows ty, ty + BM/2; columns tx, tx + BN/2). The k dimension is walked BK at a time through
// threadgroup tiles of logs and sign masks, rows of both tiles running along k.
// ---------------------------------------------------------------------------------------------

// Tile of `rows` rows of a dense (…, k) split operand starting at element `base`: rows
// row0.. row0 + BM, columns k0 .. k0 + kmax. Entries past the operand are left as they are:
// they only feed outputs that are never stored.
inline void emilio_gemm_load_split(device const float *l, device const uint *s, ulong base,
                                   uint rows, uint k, uint row0, uint k0, uint kmax, uint lid,
                                   threadgroup float *tl, threadgroup uint *ts) {
    for (uint e = lid; e < EMILIO_GEMM_BM * EMILIO_GEMM_BK; e += EMILIO_GEMM_THREADS) {
        const uint r = e / EMILIO_GEMM_BK;
        const uint c = e % EMILIO_GEMM_BK;
        if (c < kmax && row0 + r < rows) {
            const ulong i = base + ulong(row0 + r) * ulong(k) + ulong(k0 + c);
            tl[r * EMILIO_GEMM_LD + c] = l[i];
            ts[r * EMILIO_GEMM_LD + c] = s[i];
        }
    }
}

// The same tile read from a log-domain weight: magnitudes widened, sign bits unpacked to masks.
template <typename MAG>
inline void emilio_gemm_load_weight(device const typename MAG::storage *mags,
                                    device const uint *signs, uint n, uint k, uint col0,
                                    uint k0, uint kmax, uint lid, threadgroup float *tl,
                                    threadgroup uint *ts) {
    const uint words = (k + EMILIO_SIGN_BITS_PER_WORD - 1) / EMILIO_SIGN_BITS_PER_WORD;
    for (uint e = lid; e < EMILIO_GEMM_BN * EMILIO_GEMM_BK; e += EMILIO_GEMM_THREADS) {
        const uint r = e / EMILIO_GEMM_BK;
        const uint c = e % EMILIO_GEMM_BK;
        if (c < kmax && col0 + r < n) {
            const ulong row = ulong(col0 + r);
            const uint kk = k0 + c;
            const uint word = signs[row * ulong(words) + kk / EMILIO_SIGN_BITS_PER_WORD];
            tl[r * EMILIO_GEMM_LD + c] = MAG::load(mags[row * ulong(k) + ulong(kk)]);
            ts[r * EMILIO_GEMM_LD + c] = EMILIO_SIGN_BIT(word, kk % EMILIO_SIGN_BITS_PER_WORD) << 31;
        }
    }
}

// acc[2·i + j] += Σ_c over the loaded tiles, for this thread's rows ty + 16·i, columns tx + 16·j.
inline void emilio_gemm_accumulate(threadgroup const float *al, threadgroup const uint *am,
                                   threadgroup const float *bl, threadgroup const uint *bm,
                                   uint kmax, uint tx, uint ty, thread float *acc) {
    const uint half_m = EMILIO_GEMM_BM / 2;
    const uint half_n = EMILIO_GEMM_BN / 2;
    for (uint c = 0; c < kmax; ++c) {
        const float a0 = al[ty * EMILIO_GEMM_LD + c];
        const float a1 = al[(ty + half_m) * EMILIO_GEMM_LD + c];
        const uint am0 = am[ty * EMILIO_GEMM_LD + c];
        const uint am1 = am[(ty + half_m) * EMILIO_GEMM_LD + c];
        const float b0 = bl[tx * EMILIO_GEMM_LD + c];
        const float b1 = bl[(tx + half_n) * EMILIO_GEMM_LD + c];
        const uint bm0 = bm[tx * EMILIO_GEMM_LD + c];
        const uint bm1 = bm[(tx + half_n) * EMILIO_GEMM_LD + c];
        acc[0] += emilio_signed_exp(a0 + b0, am0 ^ bm0);
        acc[1] += emilio_signed_exp(a0 + b1, am0 ^ bm1);
        acc[2] += emilio_signed_exp(a1 + b0, am1 ^ bm0);
        acc[3] += emilio_signed_exp(a1 + b1, am1 ^ bm1);
    }
}

template <typename OUT>
inline void emilio_gemm_store(device typename OUT::storage *y, ulong base, uint m, uint n,
                              uint row0, uint col0, uint tx, uint ty, thread const float *acc) {
    for (uint i = 0; i < 2; ++i) {
        for (uint j = 0; j < 2; ++j) {
            const uint r = row0 + ty + i * (EMILIO_GEMM_BM / 2);
            const uint c = col0 + tx + j * (EMILIO_GEMM_BN / 2);
            if (r < m && c < n) {
                y[base + ulong(r) * ulong(n) + ulong(c)] = OUT::store(acc[2 * i + j]);
            }
        }
    }
}

// Against a log-domain weight: y (m, n) = x (m, k) ⊗ wᵀ, w (n, k). Grid: (⌈n/BN⌉, ⌈m/BM⌉, 1).
#define EMILIO_GEMM_W(SUFFIX, OUT, MAG)                                                             \
    kernel void emilio_gemm_w_##SUFFIX(                                                             \
        constant uint &m [[buffer(0)]],                                                             \
        constant uint &n [[buffer(1)]],                                                             \
        constant uint &k [[buffer(2)]],                                                             \
        device const float *la [[buffer(3)]],                                                       \
        device const uint *sa [[buffer(4)]],                                                        \
        device const MAG::storage *mags [[buffer(5)]],                                              \
        device const uint *signs [[buffer(6)]],                                                     \
        device OUT::storage *y [[buffer(7)]],                                                       \
        uint3 group [[threadgroup_position_in_grid]],                                               \
        uint lid [[thread_index_in_threadgroup]]) {                                                 \
        EMILIO_TG_ARRAY(float, al, EMILIO_GEMM_BM * EMILIO_GEMM_LD);                                \
        EMILIO_TG_ARRAY(uint, am, EMILIO_GEMM_BM * EMILIO_GEMM_LD);                                 \
        EMILIO_TG_ARRAY(float, bl, EMILIO_GEMM_BN * EMILIO_GEMM_LD);                                \
        EMILIO_TG_ARRAY(uint, bm, EMILIO_GEMM_BN * EMILIO_GEMM_LD);                                 \
        const uint col0 = group.x * EMILIO_GEMM_BN;                                                 \
        const uint row0 = group.y * EMILIO_GEMM_BM;                                                 \
        const uint tx = lid % (EMILIO_GEMM_BN / 2);                                                 \
        const uint ty = lid / (EMILIO_GEMM_BN / 2);                                                 \
        float acc[4] = {-0.0f, -0.0f, -0.0f, -0.0f};                                                \
        for (uint k0 = 0; k0 < k; k0 += EMILIO_GEMM_BK) {                                           \
            const uint kmax = metal::min(uint(EMILIO_GEMM_BK), k - k0);                             \
            emilio_gemm_load_split(la, sa, 0, m, k, row0, k0, kmax, lid, al, am);                   \
            emilio_gemm_load_weight<MAG>(mags, signs, n, k, col0, k0, kmax, lid, bl, bm);           \
            threadgroup_barrier(mem_flags::mem_threadgroup);                                        \
            emilio_gemm_accumulate(al, am, bl, bm, kmax, tx, ty, acc);                              \
            threadgroup_barrier(mem_flags::mem_threadgroup);                                        \
        }                                                                                           \
        emilio_gemm_store<OUT>(y, 0, m, n, row0, col0, tx, ty, acc);                                \
    }

EMILIO_GEMM_W(f32_f32, emilio_f32, emilio_f32)
EMILIO_GEMM_W(f32_f16, emilio_f32, emilio_f16)
EMILIO_GEMM_W(f16_f32, emilio_f16, emilio_f32)
EMILIO_GEMM_W(f16_f16, emilio_f16, emilio_f16)
EMILIO_GEMM_W(bf16_f32, emilio_bf16, emilio_f32)
EMILIO_GEMM_W(bf16_f16, emilio_bf16, emilio_f16)

// Activations × activations, batched: C[b] (m, n) = A[b] (m, k) ⊗ B[b], with A split as
// (batch, m, k) and B split transposed, as (batch, n, k); b_batch_stride is 0 when every batch
// shares one B. Grid: (⌈n/BN⌉, ⌈m/BM⌉, batch).
#define EMILIO_GEMM_A(SUFFIX, OUT)                                                                  \
    kernel void emilio_gemm_a_##SUFFIX(                                                             \
        constant uint &m [[buffer(0)]],                                                             \
        constant uint &n [[buffer(1)]],                                                             \
        constant uint &k [[buffer(2)]],                                                             \
        constant uint &b_batch_stride [[buffer(3)]],                                                \
        device const float *la [[buffer(4)]],                                                       \
        device const uint *sa [[buffer(5)]],                                                        \
        device const float *lb [[buffer(6)]],                                                       \
        device const uint *sb [[buffer(7)]],                                                        \
        device OUT::storage *y [[buffer(8)]],                                                       \
        uint3 group [[threadgroup_position_in_grid]],                                               \
        uint lid [[thread_index_in_threadgroup]]) {                                                 \
        EMILIO_TG_ARRAY(float, al, EMILIO_GEMM_BM * EMILIO_GEMM_LD);                                \
        EMILIO_TG_ARRAY(uint, am, EMILIO_GEMM_BM * EMILIO_GEMM_LD);                                 \
        EMILIO_TG_ARRAY(float, bl, EMILIO_GEMM_BN * EMILIO_GEMM_LD);                                \
        EMILIO_TG_ARRAY(uint, bm, EMILIO_GEMM_BN * EMILIO_GEMM_LD);                                 \
        const uint col0 = group.x * EMILIO_GEMM_BN;                                                 \
        const uint row0 = group.y * EMILIO_GEMM_BM;                                                 \
        const ulong batch = ulong(group.z);                                                         \
        const ulong a_base = batch * ulong(m) * ulong(k);                                           \
        const ulong b_base = batch * ulong(b_batch_stride);                                         \
        const ulong c_base = batch * ulong(m) * ulong(n);                                           \
        const uint tx = lid % (EMILIO_GEMM_BN / 2);                                                 \
        const uint ty = lid / (EMILIO_GEMM_BN / 2);                                                 \
        float acc[4] = {-0.0f, -0.0f, -0.0f, -0.0f};                                                \
        for (uint k0 = 0; k0 < k; k0 += EMILIO_GEMM_BK) {                                           \
            const uint kmax = metal::min(uint(EMILIO_GEMM_BK), k - k0);                             \
            emilio_gemm_load_split(la, sa, a_base, m, k, row0, k0, kmax, lid, al, am);              \
            emilio_gemm_load_split(lb, sb, b_base, n, k, col0, k0, kmax, lid, bl, bm);              \
            threadgroup_barrier(mem_flags::mem_threadgroup);                                        \
            emilio_gemm_accumulate(al, am, bl, bm, kmax, tx, ty, acc);                              \
            threadgroup_barrier(mem_flags::mem_threadgroup);                                        \
        }                                                                                           \
        emilio_gemm_store<OUT>(y, c_base, m, n, row0, col0, tx, ty, acc);                           \
    }

EMILIO_GEMM_A(f32, emilio_f32)
EMILIO_GEMM_A(f16, emilio_f16)
EMILIO_GEMM_A(bf16, emilio_bf16)
