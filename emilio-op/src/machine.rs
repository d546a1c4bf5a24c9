//! Ceilings of this machine that the benchmarks report their figures against: how many
//! log-domain products per second the CPU kernels can do with nothing else in the way, and how
//! fast memory can be read.

use std::time::{Duration, Instant};

use rayon::prelude::*;

/// Products per second of the CPU dot kernel on all rayon threads, with operands that stay in
/// L1: every product is one `exp` plus its add and sign, and nothing else (no memory traffic,
/// no conversion). Prefill is bound by this; run it for at least ~0.2 s for a stable figure.
pub fn exp_ceiling(duration: Duration) -> f64 {
    const K: usize = 1024; // 2 operands × (logs + masks) × 4 B × 1024 = 16 KiB: L1-resident
    let threads = rayon::current_num_threads().max(1);
    let products: u64 = (0..threads)
        .into_par_iter()
        .map(|t| {
            let la: Vec<f32> = (0..K).map(|i| ((i * 7 + t) % 23) as f32 * -0.25).collect();
            let lb: Vec<f32> = (0..K).map(|i| ((i * 5) % 19) as f32 * -0.125).collect();
            let sa: Vec<u32> = (0..K).map(|i| ((i % 3 == 0) as u32) << 31).collect();
            let sb = vec![0u32; K];
            let start = Instant::now();
            let (mut count, mut sink) = (0u64, 0f32);
            while start.elapsed() < duration {
                for _ in 0..64 {
                    sink += <f32 as crate::cpu::dot::LogDot>::log_dot(&la, &sa, &lb, &sb);
                }
                count += 64 * K as u64;
            }
            std::hint::black_box(sink);
            count
        })
        .sum();
    products as f64 / duration.as_secs_f64()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_positive_and_finite() {
        let e = exp_ceiling(Duration::from_millis(20));
        let m = memory_read_bandwidth(1 << 20, 1);
        assert!(e.is_finite() && e > 0.0, "{e}");
        assert!(m.is_finite() && m > 0.0, "{m}");
    }
}
