//! Accuracy and speed of the op at Qwen2.5-0.5B shapes, against an f64 loop and stock matmul.
//!
//! `cargo run --release -p emilio-op --example op_accuracy`
//!
//! For each shape `(m, k, n)` it reports, for `log_matmul` on f32 activations and for a
//! `LogLinear` in each weight format: the worst error relative to the sum of the magnitudes of
//! the products (`max |C - ref| / Σ|a·b|`, the quantity the error budget bounds), the worst
//! error relative to the output itself where the output is not a cancellation (`|ref|` above
//! 1% of the row's largest), and the median time next to stock `matmul`'s, same process.

use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor};
use emilio_op::{log_matmul, LogLinear, WeightFormat};

#[allow(dead_code)] // shared with benches/log_matmul.rs, which runs other layers
#[path = "../benches/common/qwen_shapes.rs"]
mod qwen_shapes;
use qwen_shapes::{ATTENTION, MLP_UP};

fn median_secs(reps: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    f()?; // warm-up
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[reps / 2])
}

/// (max error / Σ|p|, max relative error where |ref| ≥ 1% of the row's max |ref|).
fn errors(
    got: &Tensor,
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Result<(f64, f64)> {
    let got = got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
    for i in 0..m {
        let mut refs = vec![0f64; n];
        let mut mags = vec![0f64; n];
        for j in 0..n {
            for kk in 0..k {
                let p = x[i * k + kk] as f64 * w[j * k + kk] as f64;
                refs[j] += p;
                mags[j] += p.abs();
            }
        }
        let row_max = refs.iter().fold(0f64, |a, r| a.max(r.abs()));
        for j in 0..n {
            let err = (got[i * n + j] - refs[j]).abs();
            worst_abs = worst_abs.max(err / mags[j]);
            if refs[j].abs() >= 0.01 * row_max {
                worst_rel = worst_rel.max(err / refs[j].abs());
            }
        }
    }
    Ok((worst_abs, worst_rel))
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    println!("threads: {}", rayon_threads());
    for (m, (k, n)) in [(1, MLP_UP), (128, ATTENTION), (1, ATTENTION), (128, MLP_UP)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let (xv, wv) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
        );
        let wt = w.t()?;
        let reps = if m == 1 { 21 } else { 5 };
        let stock = median_secs(reps, || x.matmul(&wt))?;
        println!("shape {m}x{k}x{n}: stock matmul {:.3} ms", stock * 1e3);
        let y = log_matmul(&x, &wt)?;
        let (a, r) = errors(&y, &xv, &wv, (m, k, n))?;
        let t = median_secs(reps, || log_matmul(&x, &wt))?;
        println!(
            "  log_matmul (f32 activations)  max err/Σ|p| {a:.2e}  max rel err {r:.2e}  {:.3} ms  ({:.3}x stock time)",
            t * 1e3,
            t / stock
        );
        for format in [WeightFormat::F32, WeightFormat::F16] {
            let lin = LogLinear::from_weights(&w, None, format)?;
            let y = lin.forward(&x)?;
            let (a, r) = errors(&y, &xv, &wv, (m, k, n))?;
            let t = median_secs(reps, || lin.forward(&x))?;
            println!(
                "  LogLinear {format}                 max err/Σ|p| {a:.2e}  max rel err {r:.2e}  {:.3} ms  ({:.3}x stock time)",
                t * 1e3,
                t / stock
            );
        }
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
