//! The log-domain Qwen2 on an Apple GPU (`--features metal`): `emilio_qwen` loaded on
//! `Device::new_metal(0)` from a synthetic checkpoint, against stock Candle Qwen2 on the CPU and
//! against the same model on the CPU, prefill then step-by-step decode through the KV cache, with
//! the tolerance and the greedy-token rule of `qwen_parity.rs` (see its docs for the derivation:
//! `max |ours − stock| ≤ 4·ε·max |stock|`, ε = 24·2⁻²⁴ for the f32 weight format and 6·2⁻¹¹ for
//! f16; a different argmax only as a tie within that tolerance).
//!
//! Run on a Mac with:
//! `cargo test -p emilio-tests --features metal --test metal_op --test metal_model`
//!
//! Without the feature these tests are compiled and reported as ignored.

use candle_core::{DType, Device, IndexOp, Tensor};
use emilio_qwen::loading::Checkpoint;
use emilio_qwen::synthetic::{tokenizer_size, write_checkpoint, Preset, SyntheticSpec};
use emilio_qwen::{ModelForCausalLM, Options, WeightFormat};

const TOL_FACTOR: f64 = 4.0;
const EPS_F32: f64 = 24.0 / 16_777_216.0;
const EPS_F16: f64 = 6.0 / 2048.0;
const DECODE_STEPS: usize = 20;

fn tolerance(format: WeightFormat) -> f64 {
    TOL_FACTOR
        * match format {
            WeightFormat::F32 => EPS_F32,
            WeightFormat::F16 => EPS_F16,
        }
}

fn metal() -> Device {
    Device::new_metal(0).expect("Device::new_metal(0): these tests need an Apple GPU")
}

/// Seeded prompt ids in the tokenizer's range (the LCG of `qwen_parity.rs`).
fn prompts(seed: u64, batch: usize, len: usize) -> Vec<Vec<u32>> {
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

fn ids(rows: &[Vec<u32>], dev: &Device) -> Tensor {
    let (b, l) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, l), dev).unwrap()
}

/// `(batch, 1, vocab)` logits (any device, any float dtype) as one `Vec<f32>` per row.
fn rows(logits: &Tensor) -> Vec<Vec<f32>> {
    let logits = logits
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let (b, one, _v) = logits.dims3().unwrap();
    assert_eq!(one, 1, "the head returns the last position only");
    (0..b)
        .map(|i| logits.i((i, 0)).unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// `max |o − s| / max |s|`.
fn rel_err(s: &[f32], o: &[f32]) -> f64 {
    let scale = s.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let err = s
        .iter()
        .zip(o)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    err / scale
}

/// Prefill `prompt` then decode (stock's greedy choice fed to every model), checking the Metal
/// model against stock and against the CPU model at every step.
fn run(
    what: &str,
    stock: &mut candle_transformers::models::qwen2::ModelForCausalLM,
    on_cpu: &mut ModelForCausalLM,
    on_metal: &mut ModelForCausalLM,
    prompt: &[Vec<u32>],
    format: WeightFormat,
) {
    let dev = metal();
    stock.clear_kv_cache();
    on_cpu.clear_kv_cache();
    on_metal.clear_kv_cache();
    let tol = tolerance(format);
    let mut input = prompt.to_vec();
    let mut offset = 0;
    let (mut worst_stock, mut worst_cpu) = (0f64, 0f64);
    for step in 0..=DECODE_STEPS {
        let s = rows(&stock.forward(&ids(&input, &Device::Cpu), offset).unwrap());
        let c = rows(&on_cpu.forward(&ids(&input, &Device::Cpu), offset).unwrap());
        let logits = on_metal.forward(&ids(&input, &dev), offset).unwrap();
        assert!(logits.device().is_metal(), "{what}: logits left the GPU");
        let m = rows(&logits);
        offset += input[0].len();
        let mut next = Vec::new();
        for (b, ((s, c), m)) in s.iter().zip(&c).zip(&m).enumerate() {
            assert!(m.iter().all(|x| x.is_finite()), "{what}: non-finite logits");
            let vs_stock = rel_err(s, m);
            let vs_cpu = rel_err(c, m);
            assert!(
                vs_stock <= tol,
                "{what}, step {step}, row {b}: metal vs stock CPU: {vs_stock:e} of max|stock|, \
                 above the tolerance {tol:e}"
            );
            assert!(
                vs_cpu <= tol,
                "{what}, step {step}, row {b}: metal vs the CPU model: {vs_cpu:e}, above {tol:e}"
            );
            worst_stock = worst_stock.max(vs_stock);
            worst_cpu = worst_cpu.max(vs_cpu);
            let (ts, tm) = (argmax(s), argmax(m));
            if ts != tm {
                let scale = s.iter().fold(0f64, |a, &x| a.max((x as f64).abs()));
                let gap = (s[ts] - s[tm]) as f64;
                assert!(
                    gap <= tol * scale,
                    "{what}, step {step}, row {b}: metal's greedy token {tm} differs from \
                     stock's {ts} (gap {gap:e} > tolerance {:e})",
                    tol * scale
                );
                eprintln!("{what}, step {step}, row {b}: tie within tolerance ({ts} vs {tm})");
            }
            next.push(vec![ts as u32]);
        }
        input = next;
    }
    eprintln!(
        "{what}: worst metal-vs-stock {worst_stock:.3e}, metal-vs-CPU-model {worst_cpu:.3e} \
         (tolerance {tol:.3e})"
    );
}

fn check_checkpoint(name: &str, spec: SyntheticSpec, lens: &[usize], batches: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &spec).unwrap();
    let ckpt = Checkpoint::from_dir(dir.path()).unwrap();
    let mut stock = ckpt.load_stock(DType::F32, &Device::Cpu).unwrap();
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let opts = Options::new(format);
        let mut on_cpu = ckpt.load(DType::F32, &Device::Cpu, &opts).unwrap();
        let mut on_metal = ckpt.load(DType::F32, &metal(), &opts).unwrap();
        for &batch in batches {
            for &len in lens {
                let what = format!("metal {name} {format} batch {batch} prompt {len}");
                let prompt = prompts(spec.seed * 1000 + (batch * 100 + len) as u64, batch, len);
                run(
                    &what,
                    &mut stock,
                    &mut on_cpu,
                    &mut on_metal,
                    &prompt,
                    format,
                );
            }
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn tied_gqa2_matches_stock() {
    check_checkpoint(
        "tied gqa2",
        SyntheticSpec::new(Preset::Tiny).with_seed(11),
        &[1, 6, 17],
        &[1, 3],
    );
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn untied_gqa4_f16_storage_matches_stock() {
    check_checkpoint(
        "untied gqa4",
        SyntheticSpec::new(Preset::Tiny)
            .with_seed(13)
            .with_tied(false)
            .with_gqa_ratio(4)
            .with_dtype(DType::F16),
        &[4, 13],
        &[1, 2],
    );
}

#[test]
#[cfg_attr(
    not(feature = "metal"),
    ignore = "needs --features metal and an Apple GPU"
)]
fn half_precision_activations_run_on_metal() {
    // f16 and bf16 activations (the KV cache, norms and products' inputs in half precision):
    // finite logits of the right shape, close to the f32 model's.
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &SyntheticSpec::new(Preset::Tiny).with_seed(17)).unwrap();
    let ckpt = Checkpoint::from_dir(dir.path()).unwrap();
    let dev = metal();
    let opts = Options::new(WeightFormat::F16);
    let mut reference = ckpt.load(DType::F32, &dev, &opts).unwrap();
    let prompt = prompts(5, 1, 9);
    let want = rows(&reference.forward(&ids(&prompt, &dev), 0).unwrap());
    for dtype in [DType::F16, DType::BF16] {
        let mut model = ckpt.load(dtype, &dev, &opts).unwrap();
        let logits = model.forward(&ids(&prompt, &dev), 0).unwrap();
        assert_eq!(logits.dtype(), dtype);
        let got = rows(&logits);
        assert!(
            got[0].iter().all(|x| x.is_finite()),
            "{dtype:?}: non-finite logits"
        );
        let err = rel_err(&want[0], &got[0]);
        // Half-precision activations round every intermediate to 11 (f16) or 8 (bf16) bits.
        let tol = if dtype == DType::F16 { 0.05 } else { 0.2 };
        assert!(
            err <= tol,
            "{dtype:?}: {err:e} of max|f32 logits| (loose bound {tol})"
        );
        eprintln!("{dtype:?} activations: {err:.3e} of max|f32 logits|");
    }
}
