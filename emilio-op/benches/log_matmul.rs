//! The op against Candle's own matmul at Qwen2.5-0.5B shapes, in one run.
//!
//! `cargo bench -p emilio-op --bench log_matmul`; Criterion reports each op's time, and the
//! `stock` entry of the same group is the baseline to read ratios against.
//!
//! Shapes: decode (1 row) and prefill (128 rows) through the attention projection (896→896),
//! the MLP (896→4864) and, for decode, the LM head (896→151936); plus the attention score
//! product `Q·Kᵀ` for 14 heads over a 128-token context.

use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emilio_op::{log_matmul, LogLinear, WeightFormat};

#[allow(dead_code)] // shared with examples/op_accuracy.rs, which runs other layers
#[path = "common/qwen_shapes.rs"]
mod qwen_shapes;
use qwen_shapes::{ATTENTION, LM_HEAD, MLP_UP};

fn linear_shapes(c: &mut Criterion) {
    let dev = Device::Cpu;
    for (m, (k, n)) in [
        (1, ATTENTION),
        (1, MLP_UP),
        (1, LM_HEAD),
        (128, ATTENTION),
        (128, MLP_UP),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev).unwrap();
        let mut group = c.benchmark_group(format!("linear {m}x{k}x{n}"));
        group.throughput(Throughput::Elements((m * k * n) as u64));
        if m > 1 || n > 10_000 {
            group.sample_size(10);
        }
        let stock = candle_nn::Linear::new(w.clone(), None);
        group.bench_function("stock f32", |b| b.iter(|| stock.forward(&x).unwrap()));
        for format in [WeightFormat::F32, WeightFormat::F16] {
            let lin = LogLinear::from_weights(&w, None, format).unwrap();
            group.bench_function(BenchmarkId::new("emilio", format), |b| {
                b.iter(|| lin.forward(&x).unwrap())
            });
        }
        group.finish();
    }
}

fn attention_scores(c: &mut Criterion) {
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (1, 14, 128, 64), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (1, 14, 128, 64), &dev).unwrap();
    let kt = k.transpose(2, 3).unwrap();
    let mut group = c.benchmark_group("attention q·kᵀ 14x128x64x128");
    group.throughput(Throughput::Elements(14 * 128 * 64 * 128));
    group.bench_function("stock f32", |b| {
        b.iter(|| q.matmul(&kt.contiguous().unwrap()).unwrap())
    });
    group.bench_function("emilio", |b| b.iter(|| log_matmul(&q, &kt).unwrap()));
    group.finish();
}

criterion_group!(benches, linear_shapes, attention_scores);
criterion_main!(benches);
