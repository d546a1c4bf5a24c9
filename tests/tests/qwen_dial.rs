//! The precision dial in the model: every supported (format, exp) pair loads and predicts on a
//! synthetic checkpoint, the exact and `fast` pairs agree with stock Qwen2 as their formats
//! allow, KL against stock is ordered as the formats' errors are, and the lns formats hold
//! the (tied) embedding as the head's codes: the lookup is the head's stored rows, and the
//! model holds at most 0.6 of the `f16` model's bytes in `lns8`.

use candle_core::{DType, Device, Tensor};
use emilio_op::{ExpMode, LogConfig, WeightFormat};
use emilio_qwen::compare::kl_divergence;
use emilio_qwen::generation::CausalLM;
use emilio_qwen::loading::Checkpoint;
use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
use emilio_qwen::Options;

/// Mean KL(stock ‖ model) over the positions of one prompt, and the model's logits.
fn mean_kl(ckpt: &Checkpoint, pair: LogConfig, prompt: &[u32]) -> (f64, Vec<f32>) {
    let dev = Device::Cpu;
    let mut stock = ckpt.load_stock(DType::F32, &dev).unwrap();
    let opts = Options::new(pair.format).with_exp(pair.exp);
    let mut ours = ckpt.load(DType::F32, &dev, &opts).unwrap();
    let (mut kl, mut last) = (0.0, Vec::new());
    // Position by position through the cache, so every position's logits are compared.
    for (i, &t) in prompt.iter().enumerate() {
        let x = Tensor::new(&[[t]], &dev).unwrap();
        let s = stock
            .forward(&x, i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let o = ours
            .forward(&x, i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            o.iter().all(|v| v.is_finite()),
            "{pair}: non-finite logits at {i}"
        );
        kl += kl_divergence(&s, &o);
        last = o;
    }
    (kl / prompt.len() as f64, last)
}

#[test]
fn every_supported_pair_runs_the_model_with_ordered_fidelity() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &SyntheticSpec::new(Preset::Tiny).with_seed(11)).unwrap();
    let ckpt = Checkpoint::from_dir(dir.path()).unwrap();
    let prompt: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 500).collect();
    let mut kl = std::collections::HashMap::new();
    for pair in LogConfig::supported() {
        let (k, _) = mean_kl(&ckpt, pair, &prompt);
        eprintln!("{pair}: mean KL {k:.3e}");
        assert!(k.is_finite() && k >= 0.0, "{pair}: {k}");
        kl.insert(pair.to_string(), k);
    }
    let k = |s: &str| kl[s];
    // The exact pairs: as close as their formats allow (f32 to rounding; f16 a little more).
    assert!(k("f32/exact") < 1e-8, "{}", k("f32/exact"));
    assert!(k("f16/exact") < 1e-4, "{}", k("f16/exact"));
    // fast costs no fidelity: within 10% of exact's KL (plus rounding).
    assert!((k("f16/fast") - k("f16/exact")).abs() <= 0.1 * k("f16/exact") + 1e-9);
    // Coarser formats and cheaper exps move the predictions more.
    assert!(k("f32/exact") < k("f16/exact") && k("f16/exact") < k("lns8/exact"));
    assert!(k("lns8/exact") < k("lns4/exact"));
    assert!(k("f16/exact") < k("f16/mitchell") && k("f16/exact") < k("f16/lmul"));
    // The table mode multiplies by the same codes as lns4/exact, with exact exps.
    assert!((k("lns4/table") - k("lns4/exact")).abs() <= 0.05 * k("lns4/exact"));
}

#[test]
fn lns_formats_keep_the_embedding_as_the_heads_codes() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &SyntheticSpec::new(Preset::Tiny).with_seed(12)).unwrap();
    let ckpt = Checkpoint::from_dir(dir.path()).unwrap();
    let dev = Device::Cpu;
    let bytes = |format, exp| {
        let opts = Options::new(format).with_exp(exp);
        ckpt.load(DType::F32, &dev, &opts).unwrap()
    };
    let f16 = bytes(WeightFormat::F16, ExpMode::Exact);
    let lns8 = bytes(WeightFormat::Lns8, ExpMode::Exact);
    let lns4 = bytes(WeightFormat::Lns4, ExpMode::Table);
    let ratio = lns8.memory_bytes() as f64 / f16.memory_bytes() as f64;
    assert!(ratio <= 0.6, "lns8 holds {ratio:.3} of f16's bytes");
    assert!(lns4.memory_bytes() < lns8.memory_bytes());
    assert!(f16.base_model().embed_tokens().is_some());
    assert!(lns8.base_model().embed_tokens().is_none());
    // The lookup of a token is its row of the head as stored.
    let head = lns8.lm_head().weight();
    let rows = head.dequantize_rows(&[3, 0, 511]).unwrap();
    let all = head.dequantize().unwrap();
    for (i, r) in [3usize, 0, 511].into_iter().enumerate() {
        assert_eq!(
            rows.get(i).unwrap().to_vec1::<f32>().unwrap(),
            all.get(r).unwrap().to_vec1::<f32>().unwrap()
        );
    }
    assert!(head.dequantize_rows(&[512]).is_err());
}
