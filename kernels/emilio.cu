// Emilio's CUDA kernels: log-domain products a·b = s(a)·s(b)·exp(ln|a| + ln|b|).
//
// Compiled to PTX at build time by kernels/build.rs (emilio-kernels' feature `cuda`, through
// cudaforge, the builder candle-kernels uses), embedded in that crate as `PTX`, and loaded
// through Candle's CUDA device (emilio-op/src/cuda/). Build flags that the arithmetic depends on: --fmad=false (nvcc would
// otherwise fuse a*b+c into one rounding where the CPU path rounds twice) and no fast math
// (subnormals, IEEE division and conversions kept).
//
// Kernels, with the names and argument lists of kernels/emilio.metal, so that one host-side plan
// (emilio-op/src/plan.rs) drives both GPU backends:
// - emilio_ln_split_{contiguous,strided}_{f32,f16,bf16}: activations → ln|x| (f32) and the sign
//   bit as a mask (u32: 0 or 0x80000000), dense, rows along the reduction dimension k.
// - emilio_gemv_{out}_{mag}: decode, 1 to EMILIO_GEMV_MAX_M activation rows against a log-domain
//   weight: one warp per output feature. Where the rows allow it (see emilio_gemv_impl), each
//   lane reads 16 bytes of magnitudes at a time (8 f16 or 4 f32), coalesced across the warp,
//   with the matching sign bits from one packed word; otherwise lane j reads element 32·q + j.
// - emilio_gemm_w_{out}_{mag}: prefill against a log-domain weight, shared-memory tiles.
// - emilio_gemm_a_{out}: activations × activations (attention's Q·Kᵀ and P·V), same tiles.
// {out} is the result dtype (f32, f16, bf16; accumulation is always f32), {mag} the weight's
// magnitude format (f32, f16).
//
// The arithmetic is the CPU path's, operation for operation (emilio-op/src/cpu/exp.rs and ln.rs
// with fused multiply-add): the same exp, within 2 ulp over the whole f32 range, and ln, within
// 1 ulp, both tested on the CPU, rather than CUDA's expf/logf (2 and 1 ulp by NVIDIA's tables,
// but other roundings than the CPU's). Only fmaf, integer operations and correctly rounded
// + - * are used, so a product here is bit-identical to the CPU's; sums differ only in order.
//
// Host-compilable: the kernels use CUDA only through the EMILIO_* wrappers and built-ins below,
// so kernels/check/ can compile this file as C++ and run it in an emulator.

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <stdint.h>
#define EMILIO_DEVICE __device__ __forceinline__
#define EMILIO_FMA(A, B, C) __fmaf_rn((A), (B), (C))
#define EMILIO_AS_FLOAT(U) __uint_as_float(U)
#define EMILIO_AS_UINT(F) __float_as_uint(F)
#define EMILIO_F16_TO_F32(H) __half2float(__ushort_as_half(H))
#define EMILIO_F32_TO_F16(F) __half_as_ushort(__float2half_rn(F))
#define EMILIO_SHFL_XOR(V, MASK) __shfl_xor_sync(0xffffffffu, (V), (MASK))
#define EMILIO_SYNC() __syncthreads()
#define EMILIO_SHARED __shared__
#endif

// ---- BEGIN EMILIO SHARED CONSTANTS ------------------------------------------------------------
// One `#define EMILIO_NAME value` per line; emilio-op's tests parse this block and compare it,
// bit for bit, with the Rust constants, emilio_op::packing and kernels/emilio.metal.
#define EMILIO_SIGN_BITS_PER_WORD 32
#define EMILIO_SIMD_WIDTH 32
#define EMILIO_EXP_LOG2E 1.442695e0f
#define EMILIO_EXP_ROUND_MAGIC 1.2582912e7f
#define EMILIO_EXP_LN2_HI 6.933594e-1f
#define EMILIO_EXP_LN2_LO -2.1219444e-4f
#define EMILIO_EXP_X_MAX 8.9e1f
#define EMILIO_EXP_X_MIN -1.04e2f
#define EMILIO_EXP_POLY_0 1.3863787e-3f
#define EMILIO_EXP_POLY_1 8.367476e-3f
#define EMILIO_EXP_POLY_2 4.1667238e-2f
#define EMILIO_EXP_POLY_3 1.6666535e-1f
#define EMILIO_EXP_POLY_4 5e-1f
#define EMILIO_EXP_POLY_5 1e0f
#define EMILIO_EXP_POLY_6 1e0f
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
#define EMILIO_LN_TWO_POW_M126 1.1754944e-38f
#define EMILIO_GEMV_ROWS_PER_GROUP 4
#define EMILIO_GEMV_MAX_M 4
#define EMILIO_GEMM_BM 32
#define EMILIO_GEMM_BN 32
#define EMILIO_GEMM_BK 32
#define EMILIO_GEMM_THREADS 256
// ---- END EMILIO SHARED CONSTANTS --------------------------------------------------------------

typedef unsigned int emilio_u32;
typedef unsigned short emilio_u16;
typedef unsigned long long emilio_u64;

static_assert(EMILIO_SIGN_BITS_PER_WORD == EMILIO_SIMD_WIDTH,
              "the scalar GEMV maps lane j to sign bit j");
static_assert(EMILIO_GEMM_THREADS == (EMILIO_GEMM_BM / 2) * (EMILIO_GEMM_BN / 2),
              "each GEMM thread computes a 2x2 block of outputs");
static_assert(EMILIO_GEMM_BM == EMILIO_GEMM_BN, "square output tiles");

// Leading dimension of the shared tiles: one word of padding against bank conflicts.
#define EMILIO_GEMM_LD (EMILIO_GEMM_BK + 1)

// ---------------------------------------------------------------------------------------------
// Scalar arithmetic, shared by every kernel
// ---------------------------------------------------------------------------------------------

// ln(|x|) from the bits of |x| (sign cleared): ln 0 = -inf, ln inf = inf, NaN stays NaN.
// emilio-op/src/cpu/ln.rs `ln_f32::<true>` operation for operation; subnormals are normalised
// with integer arithmetic (bits·2^-126 is a normal number).
EMILIO_DEVICE float emilio_ln_abs(emilio_u32 bits) {
    const bool subnormal = bits < 0x00800000u; // zero too: its result is replaced below
    const float xs = subnormal ? float(bits) * EMILIO_LN_TWO_POW_M126 : EMILIO_AS_FLOAT(bits);
    // xs = 2^e · m with m in [√½, √2): offset the bits so the mantissa range starts at √½.
    const int t = int(EMILIO_AS_UINT(xs)) - EMILIO_LN_SQRT_HALF_BITS;
    const int e = (t >> 23) - (subnormal ? 23 : 0);
    const float m = EMILIO_AS_FLOAT(emilio_u32((t & 0x007fffff) + EMILIO_LN_SQRT_HALF_BITS));
    const float f = m - 1.0f;
    const float ef = float(e);
    const float z = f * f;
    float p = EMILIO_LN_P0;
    p = EMILIO_FMA(p, f, EMILIO_LN_P1);
    p = EMILIO_FMA(p, f, EMILIO_LN_P2);
    p = EMILIO_FMA(p, f, EMILIO_LN_P3);
    p = EMILIO_FMA(p, f, EMILIO_LN_P4);
    p = EMILIO_FMA(p, f, EMILIO_LN_P5);
    p = EMILIO_FMA(p, f, EMILIO_LN_P6);
    p = EMILIO_FMA(p, f, EMILIO_LN_P7);
    p = EMILIO_FMA(p, f, EMILIO_LN_P8);
    float y = f * z * p;
    y = EMILIO_FMA(ef, EMILIO_LN_LN2_LO, y);
    y = EMILIO_FMA(-0.5f, z, y);
    const float r = EMILIO_FMA(ef, EMILIO_LN_LN2_HI, f + y);
    if (bits == 0u) {
        return EMILIO_AS_FLOAT(0xff800000u); // -inf
    }
    if (bits >= 0x7f800000u) {
        return EMILIO_AS_FLOAT(bits); // +inf, NaN
    }
    return r;
}

// e^x within 2 ulp over the whole f32 range: emilio-op/src/cpu/exp.rs `exp_f32::<true>`
// operation for operation. Past the overflow threshold +inf, below the underflow threshold +0
// (-inf gives +0), NaN stays NaN; subnormal results are rounded once, by the last multiply.
EMILIO_DEVICE float emilio_exp(float x) {
    // fminf/fmaxf return the other operand for a NaN; the final select restores it.
    const float xc = fminf(fmaxf(x, EMILIO_EXP_X_MIN), EMILIO_EXP_X_MAX);
    const float t = EMILIO_FMA(xc, EMILIO_EXP_LOG2E, EMILIO_EXP_ROUND_MAGIC);
    const float n_f = t - EMILIO_EXP_ROUND_MAGIC;
    const int n = int(EMILIO_AS_UINT(t)) - int(EMILIO_AS_UINT(EMILIO_EXP_ROUND_MAGIC));
    float r = EMILIO_FMA(-n_f, EMILIO_EXP_LN2_HI, xc);
    r = EMILIO_FMA(-n_f, EMILIO_EXP_LN2_LO, r);
    float p = EMILIO_EXP_POLY_0;
    p = EMILIO_FMA(p, r, EMILIO_EXP_POLY_1);
    p = EMILIO_FMA(p, r, EMILIO_EXP_POLY_2);
    p = EMILIO_FMA(p, r, EMILIO_EXP_POLY_3);
    p = EMILIO_FMA(p, r, EMILIO_EXP_POLY_4);
    p = EMILIO_FMA(p, r, EMILIO_EXP_POLY_5);
    p = EMILIO_FMA(p, r, EMILIO_EXP_POLY_6);
    // 2^n as two normal powers of two, so a subnormal result is rounded once.
    const int n1 = n >> 1;
    const int n2 = n - n1;
    const float s1 = EMILIO_AS_FLOAT(emilio_u32(n1 + 127) << 23);
    const float s2 = EMILIO_AS_FLOAT(emilio_u32(n2 + 127) << 23);
    const float y = (p * s1) * s2;
    return (EMILIO_AS_UINT(x) & 0x7fffffffu) > 0x7f800000u ? x : y;
}

// s·exp(l) with the sign carried by `mask` (0 or 0x80000000): exp is never negative, so XOR-ing
// the mask onto its bits sets the sign exactly as a multiply would, zeros included.
EMILIO_DEVICE float emilio_signed_exp(float l, emilio_u32 mask) {
    return EMILIO_AS_FLOAT(EMILIO_AS_UINT(emilio_exp(l)) ^ mask);
}

// ---------------------------------------------------------------------------------------------
// Storage dtypes: how a kernel reads an input element and writes a result
// ---------------------------------------------------------------------------------------------

struct emilio_f32 {
    typedef float storage;
    static EMILIO_DEVICE float load(float v) { return v; }
    static EMILIO_DEVICE float store(float v) { return v; }
};

// f16 as its bits: the conversions are exact one way and round to nearest even the other.
struct emilio_f16 {
    typedef emilio_u16 storage;
    static EMILIO_DEVICE float load(emilio_u16 v) { return EMILIO_F16_TO_F32(v); }
    static EMILIO_DEVICE emilio_u16 store(float v) { return EMILIO_F32_TO_F16(v); }
};

// bf16 as its bits, converted with integer arithmetic: half::bf16 (Candle's CPU type) bit for
// bit, NaN kept quiet.
struct emilio_bf16 {
    typedef emilio_u16 storage;
    static EMILIO_DEVICE float load(emilio_u16 v) { return EMILIO_AS_FLOAT(emilio_u32(v) << 16); }
    static EMILIO_DEVICE emilio_u16 store(float v) {
        const emilio_u32 b = EMILIO_AS_UINT(v);
        if ((b & 0x7fffffffu) > 0x7f800000u) {
            return emilio_u16((b >> 16) | 0x0040u);
        }
        return emilio_u16((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
};

// ---------------------------------------------------------------------------------------------
// ln_split: one thread per element
// ---------------------------------------------------------------------------------------------

EMILIO_DEVICE void emilio_split_store(float x, emilio_u32 i, float *logs, emilio_u32 *masks) {
    const emilio_u32 bits = EMILIO_AS_UINT(x);
    logs[i] = emilio_ln_abs(bits & 0x7fffffffu);
    masks[i] = bits & 0x80000000u;
}

// Element i of a dense row-major view of `rank` dims read through `strides` (in elements, from
// the pointer the host passes): candle's get_strided_index, in 32-bit arithmetic.
EMILIO_DEVICE emilio_u32 emilio_strided_index(emilio_u32 i, emilio_u32 rank,
                                              const emilio_u32 *dims,
                                              const emilio_u32 *strides) {
    emilio_u32 offset = 0;
    for (emilio_u32 d = rank; d > 0; --d) {
        offset += (i % dims[d - 1]) * strides[d - 1];
        i /= dims[d - 1];
    }
    return offset;
}

#define EMILIO_LN_SPLIT(SUFFIX, IO)                                                                 \
    extern "C" __global__ void emilio_ln_split_contiguous_##SUFFIX(                                 \
        emilio_u32 count, const IO::storage *src, float *logs, emilio_u32 *masks) {                 \
        const emilio_u32 i = blockIdx.x * blockDim.x + threadIdx.x;                                 \
        if (i >= count) {                                                                           \
            return;                                                                                 \
        }                                                                                           \
        emilio_split_store(IO::load(src[i]), i, logs, masks);                                       \
    }                                                                                               \
    extern "C" __global__ void emilio_ln_split_strided_##SUFFIX(                                    \
        emilio_u32 count, emilio_u32 rank, const emilio_u32 *dims, const emilio_u32 *strides,       \
        const IO::storage *src, float *logs, emilio_u32 *masks) {                                   \
        const emilio_u32 i = blockIdx.x * blockDim.x + threadIdx.x;                                 \
        if (i >= count) {                                                                           \
            return;                                                                                 \
        }                                                                                           \
        const emilio_u32 at = emilio_strided_index(i, rank, dims, strides);                         \
        emilio_split_store(IO::load(src[at]), i, logs, masks);                                      \
    }

EMILIO_LN_SPLIT(f32, emilio_f32)
EMILIO_LN_SPLIT(f16, emilio_f16)
EMILIO_LN_SPLIT(bf16, emilio_bf16)

// ---------------------------------------------------------------------------------------------
// GEMV (decode): one warp per output feature o, for m ≤ EMILIO_GEMV_MAX_M activation rows
// ---------------------------------------------------------------------------------------------

// Sum of v over the warp by butterfly exchange. Every lane ends with the same value. IEEE sums
// of -0.0 and -0.0 are -0.0, so the sum is -0.0 exactly when every lane's is: with accumulators
// seeded -0.0, an output whose every product is -0.0 keeps its sign, as on the CPU.
EMILIO_DEVICE float emilio_warp_sum(float v) {
    for (int mask = EMILIO_SIMD_WIDTH / 2; mask > 0; mask >>= 1) {
        v += EMILIO_SHFL_XOR(v, mask);
    }
    return v;
}

// Magnitudes per 16-byte load: 8 f16 or 4 f32.
template <typename MAG>
struct emilio_vec {
    static constexpr emilio_u32 width = 16 / sizeof(typename MAG::storage);
};

// The vectorised GEMV loop: lane l owns elements kk .. kk + W of each run of 32·W, reading W
// magnitudes as one 16-byte load (a warp reads 512 contiguous bytes), their W sign bits from one
// packed word (W divides 32, so they never straddle two), and W logs and masks of each
// activation row. Needs k % W == 0 and 16-byte aligned rows (checked by the caller).
template <typename MAG>
EMILIO_DEVICE void emilio_gemv_vec(emilio_u32 m, emilio_u32 k, const float *la,
                                   const emilio_u32 *sa, const typename MAG::storage *wrow,
                                   const emilio_u32 *srow, emilio_u32 lane, float *acc) {
    constexpr emilio_u32 W = emilio_vec<MAG>::width;
    for (emilio_u32 kk = lane * W; kk < k; kk += EMILIO_SIMD_WIDTH * W) {
        alignas(16) typename MAG::storage w[W]; // the destination of a 16-byte store
        // One 16-byte load: wrow + kk is 16-byte aligned because the row is and kk % W == 0.
        *reinterpret_cast<uint4 *>(w) = *reinterpret_cast<const uint4 *>(wrow + kk);
        const emilio_u32 bits = srow[kk / EMILIO_SIGN_BITS_PER_WORD] >> (kk % EMILIO_SIGN_BITS_PER_WORD);
        float lw[W];
        emilio_u32 mw[W];
#pragma unroll
        for (emilio_u32 j = 0; j < W; ++j) {
            lw[j] = MAG::load(w[j]);
            mw[j] = ((bits >> j) & 1u) << 31;
        }
        for (emilio_u32 r = 0; r < m; ++r) {
            // The row's W logs and masks as 16-byte loads too (lr, sr are 16-byte aligned: la
            // and sa are, k % 4 == 0 and kk % W == 0 with W ≥ 4). Element by element, a warp's
            // 4-byte loads at a 4·W-byte stride touch W times the sectors they use; on the H200
            // that made the f16 GEMV slower than the f32 one at half the weight bytes.
            const float *lr = la + emilio_u64(r) * k + kk;
            const emilio_u32 *sr = sa + emilio_u64(r) * k + kk;
            alignas(16) float l[W];
            alignas(16) emilio_u32 s[W];
#pragma unroll
            for (emilio_u32 q = 0; q < W; q += 4) {
                *reinterpret_cast<uint4 *>(l + q) = *reinterpret_cast<const uint4 *>(lr + q);
                *reinterpret_cast<uint4 *>(s + q) = *reinterpret_cast<const uint4 *>(sr + q);
            }
            float a = acc[r];
#pragma unroll
            for (emilio_u32 j = 0; j < W; ++j) {
                a += emilio_signed_exp(l[j] + lw[j], s[j] ^ mw[j]);
            }
            acc[r] = a;
        }
    }
}

// The scalar GEMV loop, for any k: lane j reads element 32·q + j and bit j of sign word q.
template <typename MAG>
EMILIO_DEVICE void emilio_gemv_scalar(emilio_u32 m, emilio_u32 k, const float *la,
                                      const emilio_u32 *sa, const typename MAG::storage *wrow,
                                      const emilio_u32 *srow, emilio_u32 lane, float *acc) {
    const emilio_u32 words = (k + EMILIO_SIGN_BITS_PER_WORD - 1) / EMILIO_SIGN_BITS_PER_WORD;
    for (emilio_u32 q = 0; q < words; ++q) {
        const emilio_u32 kk = q * EMILIO_SIGN_BITS_PER_WORD + lane;
        if (kk < k) {
            const float lw = MAG::load(wrow[kk]);
            const emilio_u32 mw = ((srow[q] >> lane) & 1u) << 31;
            for (emilio_u32 r = 0; r < m; ++r) {
                const emilio_u64 i = emilio_u64(r) * k + kk;
                acc[r] += emilio_signed_exp(la[i] + lw, sa[i] ^ mw);
            }
        }
    }
}

// la, sa: split activations, m rows of k. mags: (n, k) log magnitudes, signs: (n, words) packed
// sign words. y: (m, n). Every lane of the warp calls this (o is uniform across it).
template <typename OUT, typename MAG>
EMILIO_DEVICE void emilio_gemv_impl(emilio_u32 m, emilio_u32 n, emilio_u32 k, const float *la,
                                    const emilio_u32 *sa, const typename MAG::storage *mags,
                                    const emilio_u32 *signs, typename OUT::storage *y,
                                    emilio_u32 o, emilio_u32 lane) {
    const emilio_u32 words = (k + EMILIO_SIGN_BITS_PER_WORD - 1) / EMILIO_SIGN_BITS_PER_WORD;
    const typename MAG::storage *wrow = mags + emilio_u64(o) * k;
    const emilio_u32 *srow = signs + emilio_u64(o) * words;
    float acc[EMILIO_GEMV_MAX_M];
#pragma unroll
    for (emilio_u32 r = 0; r < EMILIO_GEMV_MAX_M; ++r) {
        acc[r] = -0.0f; // the IEEE additive identity: a single -0.0 product stays -0.0
    }
    // 16-byte loads need every row of magnitudes and of activations 16-byte aligned: k a
    // multiple of W (and of 4 for the f32 logs and masks), and aligned base pointers. The test
    // is uniform across the grid, so every warp takes the same branch.
    constexpr emilio_u32 W = emilio_vec<MAG>::width;
    const bool aligned = k % W == 0 && k % 4 == 0 && emilio_u64(mags) % 16 == 0 &&
                         emilio_u64(la) % 16 == 0 && emilio_u64(sa) % 16 == 0;
    if (aligned) {
        emilio_gemv_vec<MAG>(m, k, la, sa, wrow, srow, lane, acc);
    } else {
        emilio_gemv_scalar<MAG>(m, k, la, sa, wrow, srow, lane, acc);
    }
#pragma unroll
    for (emilio_u32 r = 0; r < EMILIO_GEMV_MAX_M; ++r) {
        if (r < m) {
            const float total = emilio_warp_sum(acc[r]);
            if (lane == 0) {
                y[emilio_u64(r) * n + o] = OUT::store(total);
            }
        }
    }
}

#define EMILIO_GEMV(SUFFIX, OUT, MAG)                                                               \
    extern "C" __global__ void emilio_gemv_##SUFFIX(                                                \
        emilio_u32 m, emilio_u32 n, emilio_u32 k, const float *la, const emilio_u32 *sa,            \
        const MAG::storage *mags, const emilio_u32 *signs, OUT::storage *y) {                       \
        const emilio_u32 lane = threadIdx.x % EMILIO_SIMD_WIDTH;                                    \
        const emilio_u32 o = blockIdx.x * EMILIO_GEMV_ROWS_PER_GROUP + threadIdx.x / EMILIO_SIMD_WIDTH; \
        if (o >= n) {                                                                               \
            return; /* the whole warp: the shuffles below stay uniform */                           \
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
// GEMM: a block computes a BM × BN tile of C = A ⊗ B; 256 threads, each a 2 × 2 block (rows
// ty, ty + BM/2; columns tx, tx + BN/2). The k dimension is walked BK at a time through shared
// tiles of logs and sign masks, rows of both tiles running along k.
// ---------------------------------------------------------------------------------------------

// Tile of a dense (…, k) split operand starting at element `base`: rows row0 .. row0 + BM,
// columns k0 .. k0 + kmax. Consecutive threads read consecutive k: coalesced. Entries past the
// operand are left as they are: they only feed outputs that are never stored.
EMILIO_DEVICE void emilio_gemm_load_split(const float *l, const emilio_u32 *s, emilio_u64 base,
                                          emilio_u32 rows, emilio_u32 k, emilio_u32 row0,
                                          emilio_u32 k0, emilio_u32 kmax, emilio_u32 lid,
                                          float *tl, emilio_u32 *ts) {
    for (emilio_u32 e = lid; e < EMILIO_GEMM_BM * EMILIO_GEMM_BK; e += EMILIO_GEMM_THREADS) {
        const emilio_u32 r = e / EMILIO_GEMM_BK;
        const emilio_u32 c = e % EMILIO_GEMM_BK;
        if (c < kmax && row0 + r < rows) {
            const emilio_u64 i = base + emilio_u64(row0 + r) * k + (k0 + c);
            tl[r * EMILIO_GEMM_LD + c] = l[i];
            ts[r * EMILIO_GEMM_LD + c] = s[i];
        }
    }
}

// The same tile read from a log-domain weight: magnitudes widened, sign bits unpacked to masks.
template <typename MAG>
EMILIO_DEVICE void emilio_gemm_load_weight(const typename MAG::storage *mags,
                                           const emilio_u32 *signs, emilio_u32 n, emilio_u32 k,
                                           emilio_u32 col0, emilio_u32 k0, emilio_u32 kmax,
                                           emilio_u32 lid, float *tl, emilio_u32 *ts) {
    const emilio_u32 words = (k + EMILIO_SIGN_BITS_PER_WORD - 1) / EMILIO_SIGN_BITS_PER_WORD;
    for (emilio_u32 e = lid; e < EMILIO_GEMM_BN * EMILIO_GEMM_BK; e += EMILIO_GEMM_THREADS) {
        const emilio_u32 r = e / EMILIO_GEMM_BK;
        const emilio_u32 c = e % EMILIO_GEMM_BK;
        if (c < kmax && col0 + r < n) {
            const emilio_u64 row = col0 + r;
            const emilio_u32 kk = k0 + c;
            const emilio_u32 word = signs[row * words + kk / EMILIO_SIGN_BITS_PER_WORD];
            tl[r * EMILIO_GEMM_LD + c] = MAG::load(mags[row * k + kk]);
            ts[r * EMILIO_GEMM_LD + c] = ((word >> (kk % EMILIO_SIGN_BITS_PER_WORD)) & 1u) << 31;
        }
    }
}

// acc[2·i + j] += Σ_c over the loaded tiles, for this thread's rows ty + 16·i, columns tx + 16·j.
EMILIO_DEVICE void emilio_gemm_accumulate(const float *al, const emilio_u32 *am, const float *bl,
                                          const emilio_u32 *bm, emilio_u32 kmax, emilio_u32 tx,
                                          emilio_u32 ty, float *acc) {
    const emilio_u32 half_m = EMILIO_GEMM_BM / 2;
    const emilio_u32 half_n = EMILIO_GEMM_BN / 2;
    for (emilio_u32 c = 0; c < kmax; ++c) {
        const float a0 = al[ty * EMILIO_GEMM_LD + c];
        const float a1 = al[(ty + half_m) * EMILIO_GEMM_LD + c];
        const emilio_u32 am0 = am[ty * EMILIO_GEMM_LD + c];
        const emilio_u32 am1 = am[(ty + half_m) * EMILIO_GEMM_LD + c];
        const float b0 = bl[tx * EMILIO_GEMM_LD + c];
        const float b1 = bl[(tx + half_n) * EMILIO_GEMM_LD + c];
        const emilio_u32 bm0 = bm[tx * EMILIO_GEMM_LD + c];
        const emilio_u32 bm1 = bm[(tx + half_n) * EMILIO_GEMM_LD + c];
        acc[0] += emilio_signed_exp(a0 + b0, am0 ^ bm0);
        acc[1] += emilio_signed_exp(a0 + b1, am0 ^ bm1);
        acc[2] += emilio_signed_exp(a1 + b0, am1 ^ bm0);
        acc[3] += emilio_signed_exp(a1 + b1, am1 ^ bm1);
    }
}

template <typename OUT>
EMILIO_DEVICE void emilio_gemm_store(typename OUT::storage *y, emilio_u64 base, emilio_u32 m,
                                     emilio_u32 n, emilio_u32 row0, emilio_u32 col0,
                                     emilio_u32 tx, emilio_u32 ty, const float *acc) {
    for (emilio_u32 i = 0; i < 2; ++i) {
        for (emilio_u32 j = 0; j < 2; ++j) {
            const emilio_u32 r = row0 + ty + i * (EMILIO_GEMM_BM / 2);
            const emilio_u32 c = col0 + tx + j * (EMILIO_GEMM_BN / 2);
            if (r < m && c < n) {
                y[base + emilio_u64(r) * n + c] = OUT::store(acc[2 * i + j]);
            }
        }
    }
}

// The shared tiles of one GEMM block.
#define EMILIO_GEMM_TILES                                                                           \
    EMILIO_SHARED float al[EMILIO_GEMM_BM * EMILIO_GEMM_LD];                                        \
    EMILIO_SHARED emilio_u32 am[EMILIO_GEMM_BM * EMILIO_GEMM_LD];                                   \
    EMILIO_SHARED float bl[EMILIO_GEMM_BN * EMILIO_GEMM_LD];                                        \
    EMILIO_SHARED emilio_u32 bm[EMILIO_GEMM_BN * EMILIO_GEMM_LD];                                   \
    const emilio_u32 lid = threadIdx.x;                                                             \
    const emilio_u32 col0 = blockIdx.x * EMILIO_GEMM_BN;                                            \
    const emilio_u32 row0 = blockIdx.y * EMILIO_GEMM_BM;                                            \
    const emilio_u32 tx = lid % (EMILIO_GEMM_BN / 2);                                               \
    const emilio_u32 ty = lid / (EMILIO_GEMM_BN / 2);                                               \
    float acc[4] = {-0.0f, -0.0f, -0.0f, -0.0f}

// Against a log-domain weight: y (m, n) = x (m, k) ⊗ wᵀ, w (n, k). Grid: (⌈n/BN⌉, ⌈m/BM⌉, 1).
#define EMILIO_GEMM_W(SUFFIX, OUT, MAG)                                                             \
    extern "C" __global__ void emilio_gemm_w_##SUFFIX(                                              \
        emilio_u32 m, emilio_u32 n, emilio_u32 k, const float *la, const emilio_u32 *sa,            \
        const MAG::storage *mags, const emilio_u32 *signs, OUT::storage *y) {                       \
        EMILIO_GEMM_TILES;                                                                          \
        for (emilio_u32 k0 = 0; k0 < k; k0 += EMILIO_GEMM_BK) {                                     \
            const emilio_u32 kmax = k - k0 < EMILIO_GEMM_BK ? k - k0 : EMILIO_GEMM_BK;              \
            emilio_gemm_load_split(la, sa, 0, m, k, row0, k0, kmax, lid, al, am);                   \
            emilio_gemm_load_weight<MAG>(mags, signs, n, k, col0, k0, kmax, lid, bl, bm);           \
            EMILIO_SYNC();                                                                          \
            emilio_gemm_accumulate(al, am, bl, bm, kmax, tx, ty, acc);                              \
            EMILIO_SYNC();                                                                          \
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
    extern "C" __global__ void emilio_gemm_a_##SUFFIX(                                              \
        emilio_u32 m, emilio_u32 n, emilio_u32 k, emilio_u32 b_batch_stride, const float *la,       \
        const emilio_u32 *sa, const float *lb, const emilio_u32 *sb, OUT::storage *y) {             \
        EMILIO_GEMM_TILES;                                                                          \
        const emilio_u64 batch = blockIdx.z;                                                        \
        const emilio_u64 a_base = batch * m * k;                                                    \
        const emilio_u64 b_base = batch * b_batch_stride;                                           \
        const emilio_u64 c_base = batch * m * n;                                                    \
        for (emilio_u32 k0 = 0; k0 < k; k0 += EMILIO_GEMM_BK) {                                     \
            const emilio_u32 kmax = k - k0 < EMILIO_GEMM_BK ? k - k0 : EMILIO_GEMM_BK;              \
            emilio_gemm_load_split(la, sa, a_base, m, k, row0, k0, kmax, lid, al, am);              \
            emilio_gemm_load_split(lb, sb, b_base, n, k, col0, k0, kmax, lid, bl, bm);              \
            EMILIO_SYNC();                                                                          \
            emilio_gemm_accumulate(al, am, bl, bm, kmax, tx, ty, acc);                              \
            EMILIO_SYNC();                                                                          \
        }                                                                                           \
        emilio_gemm_store<OUT>(y, c_base, m, n, row0, col0, tx, ty, acc);                           \
    }

EMILIO_GEMM_A(f32, emilio_f32)
EMILIO_GEMM_A(f16, emilio_f16)
EMILIO_GEMM_A(bf16, emilio_bf16)
