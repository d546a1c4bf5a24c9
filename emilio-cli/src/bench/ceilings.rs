//! Ceilings of this machine that `bench op` reports its figures against: how many log-domain
//! products per second the op can do with nothing else in the way, and how fast memory can be
//! read (on a GPU: copied).

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{Device, Module, Tensor};
use emilio_op::{LogLinear, WeightFormat};
use rayon::prelude::*;

use super::median_secs;

/// Products per second of the op on the CPU, all rayon threads, on a compute-bound shape whose
/// operands stay in cache: every product is one `exp` plus its add and sign, and the per-call
/// work around them (the activations' logs, widening weight tiles, the transpose) is about 1%
/// of it. Prefill is bound by this; run it for at least ~0.2 s for a stable figure.
///
/// The shape: 128 activation rows against a 512×1024 `f32` log weight (2 MiB of logs, each
/// task's column tile and its rows' logs held in L2 while every product is taken).
pub fn exp_ceiling(duration: Duration) -> Result<f64> {
    const ROWS: usize = 128;
    const K: usize = 1024;
    const N: usize = 512;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (ROWS, K), &dev)?;
    let w = Tensor::randn(0f32, 0.02, (N, K), &dev)?;
    let linear = LogLinear::from_weights(&w, None, WeightFormat::F32)?;
    linear.forward(&x)?; // warm-up: the pool's threads and their buffers
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < duration {
        std::hint::black_box(linear.forward(&x)?);
        calls += 1;
    }
    Ok((calls * (ROWS * K * N) as u64) as f64 / start.elapsed().as_secs_f64())
}

/// Bytes per second read from memory by all rayon threads summing a `bytes`-sized buffer (make
/// it several times the last-level cache, e.g. 1 GiB); the best of `reps` passes.
pub fn memory_read_bandwidth(bytes: usize, reps: usize) -> f64 {
    let words = (bytes / 8).max(1);
    let buf: Vec<u64> = (0..words as u64)
        .into_par_iter()
        .map(|i| i ^ 0x9e37)
        .collect();
    let chunk = words.div_ceil(rayon::current_num_threads().max(1) * 16);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        let sum: u64 = buf
            .par_chunks(chunk)
            .map(|c| {
                // Four independent sums so the adds keep up with the loads.
                let mut acc = [0u64; 4];
                for q in c.chunks_exact(4) {
                    for l in 0..4 {
                        acc[l] = acc[l].wrapping_add(q[l]);
                    }
                }
                acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best
}

/// A GPU's memory bandwidth: a device-to-device copy of 512 MiB of random f32 (random, not
/// zeros, so no compression or zero shortcut flatters it), bytes read plus written, median of 5.
pub fn device_copy_bandwidth(dev: &Device) -> Result<f64> {
    let elems = 128usize << 20;
    let src = Tensor::randn(0f32, 1.0, elems, dev)?;
    let secs = median_secs(5, || {
        let copy = src.copy()?;
        dev.synchronize()?;
        Ok(copy)
    })?;
    Ok(2.0 * (elems * 4) as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_positive_and_finite() {
        let e = exp_ceiling(Duration::from_millis(20)).unwrap();
        let m = memory_read_bandwidth(1 << 20, 1);
        assert!(e.is_finite() && e > 0.0, "{e}");
        assert!(m.is_finite() && m > 0.0, "{m}");
    }
}
