//! Seeded inputs for the suites: normal and wide-magnitude values, tensors of any dtype built
//! from them, exact read-back of a tensor's values and bits, and the small odd shapes every suite
//! runs.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seeded `StdRng` (rand 0.9).
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// One standard normal sample (Box–Muller).
pub fn normal(r: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - r.random::<f64>(); // (0, 1]
    let u2: f64 = r.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `n` normal samples scaled by `scale`, as `f32`.
pub fn normal_vec(r: &mut StdRng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (normal(r) * scale) as f32).collect()
}

/// `n` values with random sign and magnitude `e^x`, `x` uniform in `[-span, span]`: huge and tiny
/// magnitudes in one vector.
pub fn wide_vec(r: &mut StdRng, n: usize, span: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let m = (r.random_range(-span..=span)).exp();
            let s = if r.random_bool(0.5) { -1.0 } else { 1.0 };
            (s * m) as f32
        })
        .collect()
}

/// A CPU tensor of the given dims from `f32` values, converted to `dtype` (rounding for
/// `f16`/`bf16`, exact for `f64`).
pub fn tensor_from_f32(vals: Vec<f32>, dims: &[usize], dtype: DType) -> Tensor {
    let t = Tensor::from_vec(vals, dims, &Device::Cpu).expect("from_vec");
    t.to_dtype(dtype).expect("to_dtype")
}

/// A CPU tensor of the given dims from `f64` values, converted to `dtype`.
pub fn tensor_from_f64(vals: Vec<f64>, dims: &[usize], dtype: DType) -> Tensor {
    let t = Tensor::from_vec(vals, dims, &Device::Cpu).expect("from_vec");
    t.to_dtype(dtype).expect("to_dtype")
}

/// Normal values with standard deviation `scale`, seeded, as a contiguous tensor of `dtype`.
pub fn randn(seed: u64, dims: &[usize], scale: f64, dtype: DType) -> Tensor {
    let n = dims.iter().product();
    let mut r = rng(seed);
    tensor_from_f32(normal_vec(&mut r, n, scale), dims, dtype)
}

/// Wide-magnitude values (see [`wide_vec`]) as a tensor of `dtype`.
pub fn wide(seed: u64, dims: &[usize], span: f64, dtype: DType) -> Tensor {
    let n = dims.iter().product();
    let mut r = rng(seed);
    tensor_from_f32(wide_vec(&mut r, n, span), dims, dtype)
}

/// All elements of a float tensor (any dtype, any layout), row-major, converted exactly to
/// `f64` (signed zeros, infinities and NaN preserved).
pub fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .expect("to_dtype f64")
        .flatten_all()
        .expect("flatten_all")
        .to_vec1::<f64>()
        .expect("to_vec1")
}

/// Raw bits of every element of an `f32` tensor, row-major.
pub fn f32_bits(t: &Tensor) -> Vec<u32> {
    assert_eq!(t.dtype(), DType::F32);
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Raw bits of every element of an `f64` tensor, row-major.
pub fn f64_bits(t: &Tensor) -> Vec<u64> {
    assert_eq!(t.dtype(), DType::F64);
    t.flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .into_iter()
        .map(f64::to_bits)
        .collect()
}

/// Sign bit of every element of a float tensor (any dtype), row-major.
pub fn sign_bits(t: &Tensor) -> Vec<bool> {
    to_f64_vec(t)
        .into_iter()
        .map(|v| v.is_sign_negative())
        .collect()
}

/// Small and odd `(m, k, n)` product shapes: single elements, `k` of 1 and around the SIMD
/// widths, ragged tiles. The CPU and GPU suites both run them.
pub const SMALL_SHAPES: [(usize, usize, usize); 16] = [
    (1, 1, 1),
    (1, 3, 1),
    (2, 7, 3),
    (5, 31, 4),
    (3, 33, 7),
    (8, 63, 9),
    (7, 65, 5),
    (16, 127, 17),
    (1, 128, 1),
    (33, 1, 65),
    (64, 64, 64),
    (17, 256, 31),
    (2, 1000, 3),
    (129, 65, 130),
    (1, 33, 257),
    (40, 9, 1),
];
