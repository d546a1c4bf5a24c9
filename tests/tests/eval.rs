//! `emilio_qwen::eval` on a synthetic checkpoint, against a computation written out here:
//! stock's perplexity from `candle_transformers`' own Qwen2 logits, chunked and log-softmaxed
//! in f64 by this test; the `f32` log format against it; and the one-pass `forward_from` of the
//! log-domain model against the position-by-position default.

use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::models::qwen2;
use emilio_qwen::eval::{self, Corpus, ReferenceInfo, Summary};
use emilio_qwen::generation::{forward_from_by_steps, CausalLM};
use emilio_qwen::loading::Checkpoint;
use emilio_qwen::synthetic::{write_checkpoint, Preset, SyntheticSpec};
use emilio_qwen::{Options, WeightFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn tiny(seed: u64) -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(
        dir.path(),
        &SyntheticSpec::new(Preset::Tiny).with_seed(seed),
    )
    .unwrap();
    let ckpt = Checkpoint::from_dir(dir.path()).unwrap();
    (dir, ckpt)
}

fn info(corpus: &Corpus, vocab: usize) -> ReferenceInfo {
    ReferenceInfo {
        model: "tiny".into(),
        model_sha256: String::new(),
        tokenizer_sha256: String::new(),
        text: "random tokens".into(),
        text_sha256: String::new(),
        ctx: corpus.ctx(),
        chunks: corpus.chunks(),
        vocab,
        dtype: "f32".into(),
    }
}

#[test]
fn stock_perplexity_is_the_independent_one_and_f32_log_weights_agree_with_it() {
    let dev = Device::Cpu;
    let (_dir, ckpt) = tiny(41);
    let cfg = ckpt.config.clone();
    let mut rng = StdRng::seed_from_u64(0xe7a1);
    for (ctx, chunks) in [(48usize, 3usize), (7, 5), (128, 1)] {
        let tokens: Vec<u32> = (0..ctx * chunks + ctx / 3)
            .map(|_| rng.random_range(0..cfg.vocab_size as u32))
            .collect();
        let corpus = Corpus::new(
            tokens.clone(),
            &[],
            ctx,
            None,
            cfg.max_position_embeddings,
            "t",
        )
        .unwrap();
        assert_eq!(
            corpus.chunks(),
            chunks,
            "the tail that does not fill a chunk is dropped"
        );

        let mut stock = ckpt.load_stock(DType::F32, &dev).unwrap();
        let reference = eval::stock_reference(
            &mut stock,
            &corpus,
            &dev,
            info(&corpus, cfg.vocab_size),
            &mut |_| {},
        )
        .unwrap();
        let mut model = ckpt
            .load(DType::F32, &dev, &Options::new(WeightFormat::F32))
            .unwrap();
        let mut done = Vec::new();
        let scored =
            eval::score(&mut model, &corpus, &reference, &dev, &mut |n| done.push(n)).unwrap();
        assert_eq!(
            done,
            (1..=chunks).collect::<Vec<_>>(),
            "progress after every chunk"
        );
        assert_eq!(scored.len(), chunks * (ctx - 1 - ctx / 2));
        let s = Summary::new(&scored);

        // Independently: stock's own Model and a tied head, each chunk from an empty cache,
        // positions ctx/2 ..= ctx-2 scoring the next token.
        let vb = ckpt.var_builder(DType::F32, &dev).unwrap();
        let mut base = qwen2::Model::new(&cfg.to_stock_qwen2(), vb.clone()).unwrap();
        let head = candle_nn::Linear::new(
            vb.get(
                (cfg.vocab_size, cfg.hidden_size),
                "model.embed_tokens.weight",
            )
            .unwrap(),
            None,
        );
        let (first, mut nll, mut n) = (ctx / 2, 0f64, 0usize);
        for chunk in tokens.chunks_exact(ctx).take(chunks) {
            base.clear_kv_cache();
            let ids = Tensor::new(&chunk[..ctx - 1], &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let hidden = base.forward(&ids, 0, None).unwrap();
            let logits = head
                .forward(&hidden.narrow(1, first, ctx - 1 - first).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (j, row) in (first..ctx - 1).zip(&logits) {
                let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (x as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                nll += lse - row[chunk[j + 1] as usize] as f64;
                n += 1;
            }
        }
        let ppl = (nll / n as f64).exp();
        let rel = (s.ppl_stock.value - ppl).abs() / ppl;
        assert!(
            rel <= 1e-9,
            "ctx {ctx}: stock PPL {} vs {ppl}: {rel:e}",
            s.ppl_stock.value
        );
        assert!(
            s.ln_ppl_ratio.value.abs() <= 1e-6,
            "ctx {ctx}: {:?}",
            s.ln_ppl_ratio
        );
        assert!(s.kl.mean.value <= 1e-9, "ctx {ctx}: {:?}", s.kl);
        assert!(s.kl.max_tail_bound <= 1e-9, "ctx {ctx}: {:?}", s.kl);
        assert_eq!(s.same_top1.value, 1.0, "ctx {ctx}");
    }
}

#[test]
fn one_pass_logits_are_the_position_by_position_ones() {
    let dev = Device::Cpu;
    let (_dir, ckpt) = tiny(43);
    let mut rng = StdRng::seed_from_u64(3);
    let ids: Vec<u32> = (0..40).map(|_| rng.random_range(0..512)).collect();
    let ids = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    for format in [WeightFormat::F32, WeightFormat::F16] {
        let mut model = ckpt.load(DType::F32, &dev, &Options::new(format)).unwrap();
        for first in [0, 17, 39] {
            model.clear_kv_cache();
            let one_pass = CausalLM::forward_from(&mut model, &ids, 0, first).unwrap();
            model.clear_kv_cache();
            let by_steps = forward_from_by_steps(&mut model, &ids, 0, first).unwrap();
            assert_eq!(one_pass.dims(), &[1, 40 - first, 512]);
            let scale = max_abs(&by_steps);
            let err = max_abs(&(one_pass - &by_steps).unwrap());
            assert!(
                err <= 1e-4 * scale,
                "{format} from {first}: {err} of {scale}"
            );
        }
        model.clear_kv_cache();
        let past = CausalLM::forward_from(&mut model, &ids, 0, 40)
            .unwrap_err()
            .to_string();
        assert!(past.contains("first scored position 40"), "{past}");
    }
    // Stock Qwen2's override against the same default.
    let mut stock = ckpt.load_stock(DType::F32, &dev).unwrap();
    let one_pass = stock.forward_from(&ids, 0, 20).unwrap();
    stock.clear_kv_cache();
    let by_steps = forward_from_by_steps(&mut stock, &ids, 0, 20).unwrap();
    assert!(max_abs(&(one_pass - by_steps).unwrap()) <= 1e-4);
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
