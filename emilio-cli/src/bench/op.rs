//! `emilio bench op`: the op against Candle's matmul at every linear shape of Qwen2.5-0.5B,
//! decode and prefill rows, next to the machine's ceilings.

use std::time::Duration;

use anyhow::Result;
use candle_core::{Module, Tensor};
use emilio_op::{LogConfig, LogLinear, WeightFormat};
use emilio_qwen::synthetic::{Preset, SyntheticSpec};
use serde::Serialize;

use super::{ceilings, linear_layers, median_secs, Linear};
use crate::cli::BenchOpArgs;
use crate::device;

#[derive(Debug, Serialize)]
struct OpCase {
    layer: String,
    rows: usize,
    k: usize,
    n: usize,
    stock_ms: f64,
    emilio_f32_ms: f64,
    emilio_f16_ms: f64,
    /// stock time / emilio time (above 1: emilio is faster).
    speedup_f32: f64,
    speedup_f16: f64,
    /// Weight bytes each implementation must read per call.
    stock_bytes: usize,
    emilio_f16_bytes: usize,
    /// Weight bytes read per second by emilio f16 (GB/s), meaningful for decode rows.
    emilio_f16_gb_s: f64,
    /// Products (exp evaluations) per second, emilio f16, in billions.
    emilio_f16_gprod_s: f64,
    /// emilio f16's products per second as a fraction of the machine's exp ceiling (CPU only).
    exp_ceiling_fraction: Option<f64>,
    /// emilio f16's weight bytes per second as a fraction of the machine's read bandwidth.
    bandwidth_fraction: f64,
    /// The pairs asked for with `--pairs`, in their order.
    pairs: Vec<PairCase>,
}

/// One `--pairs` pair at one shape.
#[derive(Debug, Serialize)]
struct PairCase {
    /// `FORMAT/EXP`.
    pair: String,
    ms: f64,
    /// stock time / this pair's time.
    speedup: f64,
    /// Weight bytes read per call, and per second (GB/s) as a fraction of the read bandwidth.
    bytes: usize,
    gb_s: f64,
    bandwidth_fraction: f64,
    /// Products per second, in billions.
    gprod_s: f64,
}

#[derive(Debug, Serialize)]
struct OpReport {
    /// `cpu`, `cuda` or `metal`.
    device: String,
    /// The CPU kernels' instruction set (CPU runs only).
    isa: Option<&'static str>,
    threads: usize,
    reps: usize,
    /// Products per second of the op on all threads with in-cache operands
    /// ([`ceilings::exp_ceiling`]), in billions (CPU runs only).
    exp_ceiling_gprod_s: Option<f64>,
    /// The bandwidth the weights are read at, at best, in GB/s: on the CPU, all threads summing
    /// a 256 MiB buffer ([`ceilings::memory_read_bandwidth`]); on a GPU, a 512 MiB
    /// device-to-device copy, counting bytes read plus bytes written.
    memory_read_gb_s: f64,
    cases: Vec<OpCase>,
}

pub fn run(args: &BenchOpArgs) -> Result<()> {
    let dev = device::open(args.device)?;
    for &pair in &args.pairs {
        crate::advice::check_log_config(pair, &dev)?;
    }
    let (exp_ceiling, bandwidth) = if dev.is_cpu() {
        (
            Some(ceilings::exp_ceiling(Duration::from_millis(300))?),
            ceilings::memory_read_bandwidth(256 << 20, 3),
        )
    } else {
        (None, ceilings::device_copy_bandwidth(&dev)?)
    };
    // Each timed call waits for the device, so GPU times are of finished work.
    let timed = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<Tensor> {
        let y = f()?;
        dev.synchronize()?;
        Ok(y)
    };
    let mut cases = Vec::new();
    let qwen25_05b = SyntheticSpec::new(Preset::Qwen25_05B).config()?;
    for Linear {
        name: layer, k, n, ..
    } in linear_layers(&qwen25_05b)
    {
        for rows in [1, args.prefill_rows] {
            if layer == "lm_head" && rows > 1 {
                continue; // generation applies the head to the last position only
            }
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
            let stock = candle_nn::Linear::new(w.clone(), None);
            let f32w = LogLinear::from_weights(&w, None, WeightFormat::F32)?;
            let f16w = LogLinear::from_weights(&w, None, WeightFormat::F16)?;
            let reps = if rows == 1 { args.reps * 3 } else { args.reps };
            let stock_s = median_secs(reps, || timed(&|| stock.forward(&x)))?;
            let f32_s = median_secs(reps, || timed(&|| f32w.forward(&x)))?;
            let f16_s = median_secs(reps, || timed(&|| f16w.forward(&x)))?;
            let f16_bytes = f16w.weight().size_in_bytes();
            let products = (rows * k * n) as f64;
            let mut pairs = Vec::new();
            for &pair in &args.pairs {
                let layer = LogLinear::from_weights(&w, None, pair)?;
                let secs = median_secs(reps, || timed(&|| layer.forward(&x)))?;
                let bytes = layer.weight().size_in_bytes();
                pairs.push(PairCase {
                    pair: pair_label(pair),
                    ms: secs * 1e3,
                    speedup: stock_s / secs,
                    bytes,
                    gb_s: bytes as f64 / secs / 1e9,
                    bandwidth_fraction: bytes as f64 / secs / bandwidth,
                    gprod_s: products / secs / 1e9,
                });
            }
            cases.push(OpCase {
                layer: layer.to_string(),
                rows,
                k,
                n,
                stock_ms: stock_s * 1e3,
                emilio_f32_ms: f32_s * 1e3,
                emilio_f16_ms: f16_s * 1e3,
                speedup_f32: stock_s / f32_s,
                speedup_f16: stock_s / f16_s,
                stock_bytes: n * k * 4,
                emilio_f16_bytes: f16_bytes,
                emilio_f16_gb_s: f16_bytes as f64 / f16_s / 1e9,
                emilio_f16_gprod_s: products / f16_s / 1e9,
                exp_ceiling_fraction: exp_ceiling.map(|c| products / f16_s / c),
                bandwidth_fraction: f16_bytes as f64 / f16_s / bandwidth,
                pairs,
            });
        }
    }
    let report = OpReport {
        device: args.device.name(),
        isa: dev.is_cpu().then(emilio_op::cpu_isa),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        reps: args.reps,
        exp_ceiling_gprod_s: exp_ceiling.map(|c| c / 1e9),
        memory_read_gb_s: bandwidth / 1e9,
        cases,
    };
    if args.json {
        crate::output::emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        return Ok(());
    }
    let mut o = String::new();
    match (report.isa, report.exp_ceiling_gprod_s) {
        (Some(isa), Some(exp)) => {
            outln!(
                o,
                "emilio bench op: Qwen2.5-0.5B linear shapes, CPU ({isa} kernels, {} threads), median of {} reps (3x for decode)",
                report.threads, report.reps
            );
            outln!(
                o,
                "machine ceilings: exp {exp:.2} G products/s (the op in cache, all threads); memory read {:.1} GB/s",
                report.memory_read_gb_s
            );
        }
        _ => {
            outln!(
                o,
                "emilio bench op: Qwen2.5-0.5B linear shapes, {} device, median of {} reps (3x for decode)",
                report.device, report.reps
            );
            outln!(
                o,
                "device ceiling: memory {:.1} GB/s (device-to-device copy, bytes read + written)",
                report.memory_read_gb_s
            );
        }
    }
    let mut head = String::new();
    for pair in &args.pairs {
        head += &format!(
            "  {:>14} {:>8} {:>5}",
            format!("{} ms", pair_label(*pair)),
            "×",
            "%bw"
        );
    }
    outln!(
        o,
        "{:<18} {:>5} {:>6}  {:>10} {:>10} {:>10}  {:>8} {:>8}  {:>8} {:>5}  {:>9} {:>5}{head}",
        "layer",
        "rows",
        "k→n",
        "stock ms",
        "f32 ms",
        "f16 ms",
        "f32 ×",
        "f16 ×",
        "f16 GB/s",
        "%bw",
        "f16 Gp/s",
        "%exp"
    );
    for c in &report.cases {
        let mut tail = String::new();
        for p in &c.pairs {
            tail += &format!(
                "  {:>14.3} {:>7.3}x {:>4.0}%",
                p.ms,
                p.speedup,
                p.bandwidth_fraction * 100.0
            );
        }
        outln!(
            o,
            "{:<18} {:>5} {:>6}  {:>10.3} {:>10.3} {:>10.3}  {:>7.3}x {:>7.3}x  {:>8.2} {:>4.0}%  {:>9.2} {:>5}{tail}",
            c.layer,
            c.rows,
            format!("{}→{}", c.k, c.n),
            c.stock_ms,
            c.emilio_f32_ms,
            c.emilio_f16_ms,
            c.speedup_f32,
            c.speedup_f16,
            c.emilio_f16_gb_s,
            c.bandwidth_fraction * 100.0,
            c.emilio_f16_gprod_s,
            c.exp_ceiling_fraction
                .map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0))
        );
    }
    outln!(
        o,
        "× = stock time / emilio time (above 1: emilio faster). GB/s = log-weight bytes read per \
         second (%bw: of the memory read bandwidth); Gp/s = products per second (%exp: of the exp \
         ceiling)."
    );
    crate::output::emit(&o)
}

/// `f16/exact`: a pair as the table and the JSON name it.
fn pair_label(pair: LogConfig) -> String {
    format!("{}/{}", pair.format, pair.exp)
}
