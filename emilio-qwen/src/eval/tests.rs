use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::compare::{argmax, kl_divergence, log_sum_exp};

fn info(ctx: usize, chunks: usize, vocab: usize) -> ReferenceInfo {
    ReferenceInfo {
        model: "m".into(),
        model_sha256: "aa".into(),
        tokenizer_sha256: "bb".into(),
        text: "t.txt".into(),
        text_sha256: "cc".into(),
        ctx,
        chunks,
        vocab,
        dtype: "f32".into(),
    }
}

/// A corpus of `chunks` chunks of `ctx` random tokens below `vocab`.
fn corpus(rng: &mut StdRng, ctx: usize, chunks: usize, vocab: usize) -> Corpus {
    let tokens = (0..ctx * chunks)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    Corpus::new(tokens, &[], ctx, None, 4096, "test").unwrap()
}

/// Logits like a language model's: a few likely tokens over a long tail spread over `spread`
/// nats (Gaussian logits with a few boosted ones).
fn lm_logits(rng: &mut StdRng, vocab: usize, spread: f32) -> Vec<f32> {
    (0..vocab)
        .map(|_| {
            let z: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
            let boost = if rng.random::<f32>() < 0.002 {
                12.0
            } else {
                0.0
            };
            z * spread / 2.0 + boost
        })
        .collect()
}

/// A reference of `lm_logits` rows (of `spread`) at every scored position of `c`.
fn random_reference(rng: &mut StdRng, c: &Corpus, vocab: usize, spread: f32) -> Reference {
    let mut reference = Reference::new(info(c.ctx(), c.chunks(), vocab), c).unwrap();
    for chunk in 0..c.chunks() {
        for &t in c.targets(chunk) {
            reference.push(&lm_logits(rng, vocab, spread), t).unwrap();
        }
    }
    reference
}

#[test]
fn reference_kl_is_the_full_vocabulary_kl_within_its_bound() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0e7a);
    let (ctx, vocab) = (5, 6000);
    let c = corpus(&mut rng, ctx, 1, vocab);
    let mut scratch = Vec::new();
    let mut worst_small = 0f64;
    // Perturbations from rounding-sized to a different model; spreads from flat to peaked.
    for &noise in &[0.0f32, 1e-6, 1e-4, 1e-2, 0.3, 2.0] {
        for &spread in &[0.5f32, 8.0, 25.0, 60.0] {
            let mut reference = Reference::new(info(ctx, 1, vocab), &c).unwrap();
            let mut rows = Vec::new();
            for &target in c.targets(0) {
                let p = lm_logits(&mut rng, vocab, spread);
                let q: Vec<f32> = p
                    .iter()
                    .map(|&x| x + noise * (rng.random::<f32>() - 0.5) * 2.0)
                    .collect();
                reference.push(&p, target).unwrap();
                rows.push((p, q, target));
            }
            for (i, (p, q, target)) in rows.iter().enumerate() {
                let at = reference.position(i);
                let s = Scored::new(&at, q, *target, &mut scratch);
                let exact = kl_divergence(p, q);
                let err = (s.kl - exact).abs();
                assert!(
                    err <= s.kl_bound + 1e-15 + 1e-12 * exact,
                    "noise {noise}, spread {spread}: KL {} vs full {exact}: error {err:e} over \
                     the bound {:e}",
                    s.kl,
                    s.kl_bound
                );
                // The exact figures: NLLs and Δp from the stored lse and target logit.
                let lse = log_sum_exp(p);
                assert!((s.nll_stock - (lse - p[*target as usize] as f64)).abs() < 1e-12);
                assert!((s.nll - (log_sum_exp(q) - q[*target as usize] as f64)).abs() < 1e-12);
                assert_eq!(s.same_top1, argmax(p) == argmax(q));
                if noise <= 1e-2 {
                    worst_small = worst_small.max(s.kl_bound);
                }
            }
        }
    }
    // What the format promises for models as close as the log formats keep them.
    assert!(
        worst_small <= 1e-6,
        "bound {worst_small:e} for close models"
    );
}

#[test]
fn a_reference_keeps_the_largest_logits_exactly_and_the_tail_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(7);
    let (ctx, vocab) = (6, 3000);
    let c = corpus(&mut rng, ctx, 2, vocab);
    let mut reference = Reference::new(info(ctx, 2, vocab), &c).unwrap();
    let mut rows = Vec::new();
    for chunk in 0..2 {
        for &t in c.targets(chunk) {
            let spread = [0.5, 5.0, 30.0][rows.len() % 3];
            let row = lm_logits(&mut rng, vocab, spread);
            reference.push(&row, t).unwrap();
            rows.push(row);
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let at = reference.position(i);
        let lse = log_sum_exp(row);
        let kept: std::collections::HashSet<u32> = at.top_ids.iter().copied().collect();
        let smallest_kept = at.top_logits.iter().fold(f32::INFINITY, |m, &x| m.min(x));
        let mut tail = 0.0;
        for (v, &x) in row.iter().enumerate() {
            if kept.contains(&(v as u32)) {
                assert_eq!(
                    x,
                    at.top_logits[at.top_ids.iter().position(|&k| k == v as u32).unwrap()]
                );
            } else {
                assert!(x <= smallest_kept, "a tail token above a kept one");
                let ln_p = x as f64 - lse;
                tail += ln_p.exp();
                assert!(
                    (at.tail_ln_p(v) - ln_p).abs() <= at.tail_step / 2.0 * (1.0 + 1e-9) + 1e-12
                );
            }
        }
        assert!((tail - at.tail_mass).abs() <= 1e-12 * tail.max(1e-300));
        assert!(
            at.tail_mass <= 1e-3 || at.top_ids.len() == 4096,
            "tail {}",
            at.tail_mass
        );
        assert!(
            at.top_logits.windows(2).all(|w| w[0] >= w[1]),
            "largest first"
        );
        assert_eq!(
            at.top_ids[0],
            argmax(row),
            "the first kept is stock's greedy choice"
        );
    }
}

#[test]
fn a_saved_reference_reads_back_identical() {
    let mut rng = StdRng::seed_from_u64(11);
    let (ctx, vocab) = (9, 5000);
    let c = corpus(&mut rng, ctx, 3, vocab);
    let reference = random_reference(&mut rng, &c, vocab, 25.0);
    let dir = tempdir();
    let path = dir.join("ref.safetensors");
    reference.save(&path).unwrap();
    let back = Reference::load(&path).unwrap();
    assert_eq!(back.info(), reference.info());
    assert_eq!(back.len(), reference.len());
    let mut scratch = Vec::new();
    for i in 0..reference.len() {
        let (a, b) = (reference.position(i), back.position(i));
        assert_eq!(a.lse.to_bits(), b.lse.to_bits());
        assert_eq!(a.tail_mass.to_bits(), b.tail_mass.to_bits());
        assert_eq!(a.top_ids, b.top_ids);
        assert_eq!(a.top_logits, b.top_logits);
        assert_eq!(a.tail_codes, b.tail_codes);
        let q = lm_logits(&mut rng, vocab, 25.0);
        assert_eq!(
            Scored::new(&a, &q, 1, &mut scratch),
            Scored::new(&b, &q, 1, &mut scratch)
        );
    }
    back.check_matches(&info(ctx, 3, vocab), &c, &path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reference_of_another_model_tokenizer_text_ctx_or_dtype_is_refused_naming_it() {
    let mut rng = StdRng::seed_from_u64(13);
    let (ctx, vocab) = (8, 50);
    let c = corpus(&mut rng, ctx, 2, vocab);
    let reference = random_reference(&mut rng, &c, vocab, 5.0);
    let path = std::path::Path::new("saved.safetensors");
    let refused = |expected: ReferenceInfo, corpus: &Corpus| {
        reference
            .check_matches(&expected, corpus, path)
            .unwrap_err()
            .to_string()
    };
    let mut other = info(ctx, 2, vocab);
    other.model_sha256 = "ff".into();
    other.model = "other-model".into();
    let msg = refused(other, &c);
    assert!(
        msg.contains("another model")
            && msg.contains("other-model")
            && msg.contains("saved.safetensors"),
        "{msg}"
    );
    let mut other = info(ctx, 2, vocab);
    other.tokenizer_sha256 = "ff".into();
    assert!(refused(other, &c).contains("another tokenizer"));
    let mut other = info(ctx, 2, vocab);
    other.text_sha256 = "ff".into();
    other.text = "novel.txt".into();
    let msg = refused(other, &c);
    assert!(
        msg.contains("another text") && msg.contains("novel.txt"),
        "{msg}"
    );
    let mut other = info(ctx, 2, vocab);
    other.ctx = 16;
    assert!(refused(other, &c).contains("ctx 8"));
    let mut other = info(ctx, 2, vocab);
    other.dtype = "f16".into();
    assert!(refused(other, &c).contains("another dtype"));
    let mut other = info(ctx, 3, vocab);
    other.chunks = 3;
    let msg = refused(other, &c);
    assert!(
        msg.contains("holds 2 chunks") && msg.contains("ask for 2 or fewer"),
        "{msg}"
    );
    // Fewer chunks than the reference holds: its first ones are used.
    let one = Corpus::new(c.chunk(0).to_vec(), &[], ctx, None, 4096, "t").unwrap();
    reference
        .check_matches(&info(ctx, 1, vocab), &one, path)
        .unwrap();
    // The same hashes but other tokens (a changed tokenization): refused too.
    let shuffled = corpus(&mut rng, ctx, 2, vocab);
    assert!(refused(info(ctx, 2, vocab), &shuffled).contains("other tokens"));
}

#[test]
fn a_damaged_reference_file_is_an_error_naming_it() {
    let mut rng = StdRng::seed_from_u64(17);
    let (ctx, vocab) = (6, 40);
    let c = corpus(&mut rng, ctx, 1, vocab);
    let reference = random_reference(&mut rng, &c, vocab, 5.0);
    let dir = tempdir();
    let path = dir.join("ref.safetensors");
    reference.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let broken = dir.join("broken.safetensors");
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&broken, &bytes[..cut]).unwrap();
        let msg = Reference::load(&broken).unwrap_err().to_string();
        assert!(
            msg.contains("broken.safetensors") && msg.contains("Reference::save"),
            "{msg}"
        );
    }
    // A safetensors file that is not a reference (a checkpoint, say).
    let plain = dir.join("model.safetensors");
    let w = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("w", w)]), &plain).unwrap();
    let msg = Reference::load(&plain).unwrap_err().to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("format"),
        "{msg}"
    );
    let msg = Reference::load(&dir.join("missing"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corpora_are_cut_as_llama_perplexity_cuts_them() {
    let tokens: Vec<u32> = (100..100 + 23).collect();
    let c = Corpus::new(tokens.clone(), &[1], 8, None, 4096, "t").unwrap();
    assert_eq!(
        (c.chunks(), c.available_chunks(), c.text_tokens()),
        (2, 2, 23)
    );
    assert_eq!(c.chunk(0), &[1, 101, 102, 103, 104, 105, 106, 107]);
    assert_eq!(c.chunk(1), &[1, 109, 110, 111, 112, 113, 114, 115]);
    assert_eq!(c.first(), 4);
    assert_eq!(c.scored_per_chunk(), 3);
    assert_eq!(c.inputs(1), &[1, 109, 110, 111, 112, 113, 114]);
    assert_eq!(c.targets(1), &[113, 114, 115]);
    let limited = Corpus::new(tokens.clone(), &[], 8, Some(1), 4096, "t").unwrap();
    assert_eq!((limited.chunks(), limited.scored()), (1, 3));
    assert_eq!(limited.chunk(0), &tokens[..8]);
    let err = |r: Result<Corpus>| r.unwrap_err().to_string();
    assert!(
        err(Corpus::new(tokens.clone(), &[], 24, None, 4096, "t.txt"))
            .contains("t.txt has 23 tokens")
    );
    assert!(err(Corpus::new(tokens.clone(), &[], 8, None, 6, "t"))
        .contains("longer than the model's context (6"));
    assert!(
        err(Corpus::new(tokens.clone(), &[], 2, None, 4096, "t")).contains("ctx 2 is too small")
    );
    assert!(err(Corpus::new(tokens, &[], 8, Some(0), 4096, "t")).contains("max_chunks 0"));
}

#[test]
fn summary_statistics_match_their_definitions() {
    let mut rng = StdRng::seed_from_u64(19);
    let n = 1001;
    let scored: Vec<Scored> = (0..n)
        .map(|_| {
            let nll_stock = rng.random::<f64>() * 5.0;
            let nll = nll_stock + (rng.random::<f64>() - 0.4) * 0.01;
            Scored {
                nll_stock,
                nll,
                kl: rng.random::<f64>() * 1e-3,
                kl_bound: 1e-12,
                delta_p: (-nll).exp() - (-nll_stock).exp(),
                same_top1: rng.random::<f64>() < 0.9,
            }
        })
        .collect();
    let s = Summary::new(&scored);
    let mean = |f: &dyn Fn(&Scored) -> f64| scored.iter().map(f).sum::<f64>() / n as f64;
    let m_stock = mean(&|s| s.nll_stock);
    let m = mean(&|s| s.nll);
    assert!((s.ppl_stock.value - m_stock.exp()).abs() < 1e-12 * s.ppl_stock.value);
    assert!((s.ppl.value - m.exp()).abs() < 1e-12 * s.ppl.value);
    assert!((s.ln_ppl_ratio.value - (m - m_stock)).abs() < 1e-12);
    // The paired uncertainty: the standard error of the differences.
    let d: Vec<f64> = scored.iter().map(|s| s.nll - s.nll_stock).collect();
    let dm = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - dm) * (x - dm)).sum::<f64>() / n as f64;
    let se = (var / (n as f64 - 1.0)).sqrt();
    assert!((s.ln_ppl_ratio.uncertainty.unwrap() - se).abs() < 1e-12);
    // Percentiles of n = 1001 sorted values fall on ranks exactly.
    let mut kls: Vec<f64> = scored.iter().map(|s| s.kl).collect();
    kls.sort_by(f64::total_cmp);
    assert_eq!(s.kl.median, kls[500]);
    assert_eq!(s.kl.p90, kls[900]);
    assert_eq!(s.kl.p99, kls[990]);
    assert_eq!((s.kl.min, s.kl.max), (kls[0], kls[1000]));
    let same = scored.iter().filter(|s| s.same_top1).count() as f64 / n as f64;
    assert_eq!(s.same_top1.value, same);
    let rms = mean(&|s| s.delta_p * s.delta_p).sqrt();
    assert!((s.delta_p.rms.value - rms).abs() < 1e-15);
    assert_eq!(s.kl.max_tail_bound, 1e-12);
    assert!(s.nll_correlation > 0.99 && s.nll_correlation <= 1.0);
    // One position: figures, no uncertainties.
    let one = Summary::new(&scored[..1]);
    assert_eq!(one.tokens, 1);
    assert!(one.ppl.uncertainty.is_none() && one.kl.mean.uncertainty.is_none());
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "emilio-eval-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
