//! What the model-parity targets share: `qwen_parity.rs` (the CPU model against stock) and
//! `gpu/model.rs` (the model on a GPU against stock and the CPU model). The tolerance is derived
//! in `qwen_parity.rs`'s docs; logits are compared with `emilio_qwen::compare`, the measures
//! `emilio ab` reports.

use candle_core::{DType, Device, IndexOp, Tensor};
use emilio_qwen::synthetic::tokenizer_size;
use emilio_qwen::WeightFormat;

/// `max |ours − stock| ≤ TOL_FACTOR·ε·max |stock|` (see `qwen_parity.rs`).
const TOL_FACTOR: f64 = 4.0;
/// ε of the f32 weight format: `24·2⁻²⁴`.
const EPS_F32: f64 = 24.0 / 16_777_216.0;
/// ε of the f16 weight format: `6·2⁻¹¹`.
const EPS_F16: f64 = 6.0 / 2048.0;
/// ε of the lns8 weight format: its relative error per weight, `2^(1/32) − 1`.
const EPS_LNS8: f64 = 0.0219;
/// ε of the lns4 weight format: its relative error per weight at the largest step (1.2).
const EPS_LNS4: f64 = 0.83;

/// The tolerance on `max |ours − stock| / max |stock|` for a weight format.
pub fn tolerance(format: WeightFormat) -> f64 {
    TOL_FACTOR
        * match format {
            WeightFormat::F32 => EPS_F32,
            WeightFormat::F16 => EPS_F16,
            WeightFormat::Lns8 => EPS_LNS8,
            WeightFormat::Lns4 => EPS_LNS4,
        }
}

/// Seeded prompt ids in the tokenizer's range (a small LCG: no dependency on rand's streams).
pub fn prompts(seed: u64, batch: usize, len: usize) -> Vec<Vec<u32>> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n = tokenizer_size() as u64;
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) % n) as u32
                })
                .collect()
        })
        .collect()
}

/// The `(batch, len)` ids tensor of `rows`, on the CPU.
pub fn ids(rows: &[Vec<u32>]) -> Tensor {
    let (b, l) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, l), &Device::Cpu).unwrap()
}

/// `(batch, 1, vocab)` CPU logits (any float dtype) as one `Vec<f32>` per row.
pub fn rows(logits: &Tensor) -> Vec<Vec<f32>> {
    let logits = logits.to_dtype(DType::F32).unwrap();
    let (b, one, _v) = logits.dims3().unwrap();
    assert_eq!(one, 1, "the head returns the last position only");
    (0..b)
        .map(|i| logits.i((i, 0)).unwrap().to_vec1::<f32>().unwrap())
        .collect()
}
