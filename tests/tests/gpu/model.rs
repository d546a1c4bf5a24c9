//! The log-domain Qwen2 on a GPU: `emilio_qwen` loaded on the device from a synthetic checkpoint,
//! against stock Candle Qwen2 on the CPU and against the same model on the CPU, prefill then
//! step-by-step decode through the KV cache, with the tolerance and the greedy-token rule of
//! `qwen_parity.rs` (see its docs for the derivation: `max |ours − stock| ≤ 4·ε·max |stock|`,
//! ε = 24·2⁻²⁴ for the f32 weight format and 6·2⁻¹¹ for f16; a different argmax only as a tie
//! within that tolerance). Every suite function takes the device and its label ("metal",
//! "cuda"); see `gpu/mod.rs` for how a backend runs them.

use candle_core::{DType, Device};
use emilio_qwen::compare::{argmax, max_rel_err};
use emilio_qwen::generation::CausalLM;
use emilio_qwen::loading::Checkpoint;
use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
use emilio_qwen::{ModelForCausalLM, Options, WeightFormat};

use crate::gpu::Gpu;
use crate::parity::{ids, prompts, rows, tolerance};

const DECODE_STEPS: usize = 20;

impl Gpu<'_> {
    /// Prefill `prompt` then decode (stock's greedy choice fed to every model), checking the
    /// device's model against stock and against the CPU model at every step.
    fn run(
        &self,
        what: &str,
        stock: &mut emilio_qwen::reference::StockModel,
        on_cpu: &mut ModelForCausalLM,
        on_gpu: &mut ModelForCausalLM,
        prompt: &[Vec<u32>],
        format: WeightFormat,
    ) {
        let label = self.label;
        stock.clear_kv_cache();
        on_cpu.clear_kv_cache();
        on_gpu.clear_kv_cache();
        let tol = tolerance(format);
        let mut input = prompt.to_vec();
        let mut offset = 0;
        let (mut worst_stock, mut worst_cpu) = (0f64, 0f64);
        for step in 0..=DECODE_STEPS {
            let x = ids(&input);
            let s = rows(&stock.forward(&x, offset).unwrap());
            let c = rows(&on_cpu.forward(&x, offset).unwrap());
            let g = rows(&self.cpu(&on_gpu.forward(&self.on(&x), offset).unwrap()));
            offset += input[0].len();
            let mut next = Vec::new();
            for (b, ((s, c), g)) in s.iter().zip(&c).zip(&g).enumerate() {
                assert!(g.iter().all(|x| x.is_finite()), "{what}: non-finite logits");
                let vs_stock = max_rel_err(s, g);
                let vs_cpu = max_rel_err(c, g);
                assert!(
                    vs_stock <= tol,
                    "{what}, step {step}, row {b}: {label} vs stock CPU: {vs_stock:e} of \
                     max|stock|, above the tolerance {tol:e}"
                );
                assert!(
                    vs_cpu <= tol,
                    "{what}, step {step}, row {b}: {label} vs the CPU model: {vs_cpu:e}, \
                     above {tol:e}"
                );
                worst_stock = worst_stock.max(vs_stock);
                worst_cpu = worst_cpu.max(vs_cpu);
                let (ts, tg) = (argmax(s) as usize, argmax(g) as usize);
                if ts != tg {
                    let scale = s.iter().fold(0f64, |a, &x| a.max((x as f64).abs()));
                    let gap = (s[ts] - s[tg]) as f64;
                    assert!(
                        gap <= tol * scale,
                        "{what}, step {step}, row {b}: {label}'s greedy token {tg} differs from \
                         stock's {ts} (gap {gap:e} > tolerance {:e})",
                        tol * scale
                    );
                    eprintln!("{what}, step {step}, row {b}: tie within tolerance ({ts} vs {tg})");
                }
                next.push(vec![ts as u32]);
            }
            input = next;
        }
        eprintln!(
            "{what}: worst {label}-vs-stock {worst_stock:.3e}, {label}-vs-CPU-model \
             {worst_cpu:.3e} (tolerance {tol:.3e})"
        );
    }

    fn check_checkpoint(&self, name: &str, spec: SyntheticSpec, lens: &[usize], batches: &[usize]) {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &spec).unwrap();
        let ckpt = Checkpoint::from_dir(dir.path()).unwrap();
        let mut stock = ckpt.load_stock(DType::F32, &Device::Cpu).unwrap();
        for format in [WeightFormat::F32, WeightFormat::F16] {
            let opts = Options::new(format);
            let mut on_cpu = ckpt.load(DType::F32, &Device::Cpu, &opts).unwrap();
            let mut on_gpu = ckpt.load(DType::F32, self.dev, &opts).unwrap();
            for &batch in batches {
                for &len in lens {
                    let what = format!("{} {name} {format} batch {batch} prompt {len}", self.label);
                    let prompt = prompts(spec.seed * 1000 + (batch * 100 + len) as u64, batch, len);
                    self.run(&what, &mut stock, &mut on_cpu, &mut on_gpu, &prompt, format);
                }
            }
        }
    }
}

pub fn tied_gqa2_matches_stock(dev: &Device, label: &str) {
    Gpu { dev, label }.check_checkpoint(
        "tied gqa2",
        SyntheticSpec::new(Preset::Tiny).with_seed(11),
        &[1, 6, 17],
        &[1, 3],
    );
}

pub fn untied_gqa4_f16_storage_matches_stock(dev: &Device, label: &str) {
    Gpu { dev, label }.check_checkpoint(
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

pub fn half_precision_activations_run_on_device(dev: &Device, label: &str) {
    // f16 and bf16 activations (the KV cache, norms and products' inputs in half precision):
    // finite logits of the right shape, close to the f32 model's.
    let g = Gpu { dev, label };
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &SyntheticSpec::new(Preset::Tiny).with_seed(17)).unwrap();
    let ckpt = Checkpoint::from_dir(dir.path()).unwrap();
    let opts = Options::new(WeightFormat::F16);
    let prompt = g.on(&ids(&prompts(5, 1, 9)));
    let mut reference = ckpt.load(DType::F32, dev, &opts).unwrap();
    let want = rows(&g.cpu(&reference.forward(&prompt, 0).unwrap()));
    for dtype in [DType::F16, DType::BF16] {
        let mut model = ckpt.load(dtype, dev, &opts).unwrap();
        let logits = model.forward(&prompt, 0).unwrap();
        assert_eq!(logits.dtype(), dtype);
        let got = rows(&g.cpu(&logits));
        assert!(
            got[0].iter().all(|x| x.is_finite()),
            "{label} {dtype:?}: non-finite logits"
        );
        let err = max_rel_err(&want[0], &got[0]);
        // Half-precision activations round every intermediate to 11 (f16) or 8 (bf16) bits.
        let tol = if dtype == DType::F16 { 0.05 } else { 0.2 };
        assert!(
            err <= tol,
            "{label} {dtype:?}: {err:e} of max|f32 logits| (loose bound {tol})"
        );
        eprintln!("{label} {dtype:?} activations: {err:.3e} of max|f32 logits|");
    }
}
