//! The engine against loops written out by hand: on a scripted model (stop tokens, the token
//! budget, what is fed at which offset) and on the tiny synthetic Qwen2 of both backends (greedy,
//! seeded sampling, teacher forcing, timings).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::qwen2 as stock;

use super::*;
use crate::compare::argmax;
use crate::synthetic::{qwen2_tensor_shapes, synthetic_tensor, Preset, SyntheticSpec};
use crate::{ModelForCausalLM, Options, WeightFormat};

const VOCAB: usize = 8;

/// Token `t` is followed by `(t + 1) % VOCAB`; every forward call is recorded.
#[derive(Default)]
struct Script {
    calls: Vec<(Vec<u32>, usize)>,
    clears: usize,
}

impl CausalLM for Script {
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        let ids = input_ids.squeeze(0)?.to_vec1::<u32>()?;
        let mut logits = vec![0f32; VOCAB];
        logits[(*ids.last().unwrap() as usize + 1) % VOCAB] = 1.0;
        self.calls.push((ids, seqlen_offset));
        Tensor::from_vec(logits, (1, 1, VOCAB), &Device::Cpu)
    }

    fn clear_kv_cache(&mut self) {
        self.clears += 1;
    }
}

fn run_script(stops: &[u32], max_tokens: usize) -> (Generated, Vec<u32>, Script) {
    let mut model = Script::default();
    let mut streamed = Vec::new();
    let out = Generator::new(&mut model, Greedy, &Device::Cpu)
        .with_stop_tokens(stops.iter().copied())
        .run(&[1, 2], max_tokens, |t| {
            streamed.push(t);
            Ok::<_, Error>(())
        })
        .unwrap();
    (out, streamed, model)
}

#[test]
fn each_chosen_token_is_fed_once_at_its_position() {
    let (out, streamed, model) = run_script(&[], 4);
    assert_eq!(out.tokens, [3, 4, 5, 6]);
    assert_eq!(streamed, out.tokens);
    assert_eq!(out.finish, Finish::MaxTokens);
    let want: Vec<(Vec<u32>, usize)> =
        vec![(vec![1, 2], 0), (vec![3], 2), (vec![4], 3), (vec![5], 4)];
    assert_eq!(model.calls, want);
    assert_eq!(model.clears, 1, "a run starts from an empty cache");
    assert_eq!(out.timings.prefill_tokens, 2);
    assert_eq!(out.timings.decode.len(), 3);
}

#[test]
fn a_stop_token_ends_generation_unstreamed() {
    let (out, streamed, model) = run_script(&[5, 7], 10);
    assert_eq!(out.tokens, [3, 4, 5]);
    assert_eq!(streamed, [3, 4]);
    assert_eq!(out.finish, Finish::StopToken);
    assert_eq!(model.calls.len(), 3);
    // A stop token that is also the last allowed one still counts as a stop.
    let (out, streamed, _) = run_script(&[5], 3);
    assert_eq!(
        (out.tokens.as_slice(), out.finish),
        (&[3, 4, 5][..], Finish::StopToken)
    );
    assert_eq!(streamed, [3, 4]);
}

#[test]
fn max_tokens_bounds_tokens_and_forwards() {
    for max in 0..5 {
        let (out, streamed, model) = run_script(&[], max);
        assert_eq!(out.tokens.len(), max);
        assert_eq!(streamed.len(), max);
        assert_eq!(model.calls.len(), max, "one forward per chosen token");
        assert_eq!(out.timings.decode.len(), max.saturating_sub(1));
    }
}

#[test]
fn a_callback_error_ends_the_run() {
    let mut model = Script::default();
    let err = Generator::new(&mut model, Greedy, &Device::Cpu)
        .run(&[1], 10, |t| {
            if t == 3 {
                Err(Error::msg("reader went away"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(err.to_string().contains("reader went away"), "{err}");
    assert_eq!(model.calls.len(), 2);
}

#[test]
fn step_api_continues_after_the_cache() {
    let mut model = Script::default();
    let mut gen = Generator::new(&mut model, Greedy, &Device::Cpu);
    assert_eq!(gen.prefill(&[1, 2]).unwrap(), 3);
    assert_eq!(gen.step(3).unwrap(), 4);
    // A second turn after the reply: prefilled at the next position.
    assert_eq!(gen.prefill(&[6, 0]).unwrap(), 1);
    assert_eq!(gen.tokens(), [1, 2, 3, 6, 0]);
    assert_eq!(gen.timings().prefill_tokens, 4);
    assert_eq!(gen.timings().decode.len(), 1);
    assert!(gen.prefill(&[]).is_err());
    drop(gen);
    assert_eq!(model.calls.last().unwrap(), &(vec![6, 0], 3));
    assert_eq!(model.clears, 0, "prefill and step keep the cache");
}

#[test]
fn forcing_past_the_given_tokens_is_an_error() {
    let mut model = Script::default();
    let mut gen = Generator::new(&mut model, Recorder::forced(vec![5, 6]), &Device::Cpu);
    let err = gen.run(&[1], 3, |_| Ok::<_, Error>(())).unwrap_err();
    assert!(
        err.to_string().contains("teacher forcing has 2 tokens"),
        "{err}"
    );
    let (_, recorder) = gen.into_parts();
    assert_eq!(recorder.logits().len(), 2);
}

/// The tiny synthetic Qwen2 in memory: ours in `format`, or stock's when `None` (ours boxed:
/// its log weights make it the larger variant by far).
enum Tiny {
    Ours(Box<ModelForCausalLM>),
    Stock(stock::ModelForCausalLM),
}

impl CausalLM for Tiny {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        match self {
            Tiny::Ours(m) => m.forward(ids, offset),
            Tiny::Stock(m) => m.forward(ids, offset),
        }
    }

    fn clear_kv_cache(&mut self) {
        match self {
            Tiny::Ours(m) => m.clear_kv_cache(),
            Tiny::Stock(m) => m.clear_kv_cache(),
        }
    }
}

fn tiny(format: Option<WeightFormat>) -> Tiny {
    let cfg = SyntheticSpec::new(Preset::Tiny)
        .with_seed(5)
        .config()
        .unwrap();
    let tensors: HashMap<String, Tensor> = qwen2_tensor_shapes(&cfg)
        .into_iter()
        .map(|(name, dims)| {
            let t = synthetic_tensor(&name, &dims, 5, DType::F32).unwrap();
            (name, t)
        })
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    match format {
        Some(f) => Tiny::Ours(Box::new(
            ModelForCausalLM::new_with_options(&cfg, vb, &Options::new(f)).unwrap(),
        )),
        None => Tiny::Stock(stock::ModelForCausalLM::new(&cfg.to_stock_qwen2(), vb).unwrap()),
    }
}

fn backends() -> [Option<WeightFormat>; 3] {
    [None, Some(WeightFormat::F32), Some(WeightFormat::F16)]
}

const PROMPT: [u32; 6] = [11, 300, 7, 42, 42, 99];

/// Logits of the last position, as f32 on the host.
fn last(model: &mut Tiny, ids: &[u32], offset: usize) -> Vec<f32> {
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&ids, offset).unwrap();
    logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `n` tokens after `PROMPT`, each picked by `pick` from the logits (and the tokens so far),
/// and the logits before each.
fn by_hand(
    model: &mut Tiny,
    n: usize,
    mut pick: impl FnMut(&[f32], &[u32]) -> u32,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    model.clear_kv_cache();
    let mut context = PROMPT.to_vec();
    let mut logits = last(model, &PROMPT, 0);
    let (mut tokens, mut seen) = (Vec::new(), Vec::new());
    loop {
        let next = pick(&logits, &context);
        tokens.push(next);
        seen.push(logits);
        if tokens.len() == n {
            return (tokens, seen);
        }
        logits = last(model, &[next], context.len());
        context.push(next);
    }
}

#[test]
fn greedy_is_the_argmax_of_the_models_logits() {
    for backend in backends() {
        let mut model = tiny(backend);
        let (want, want_logits) = by_hand(&mut model, 12, |l, _| argmax(l));
        let out = Generator::new(&mut model, Greedy, &Device::Cpu)
            .run(&PROMPT, 12, |_| Ok::<_, Error>(()))
            .unwrap();
        assert_eq!(out.tokens, want, "{backend:?}");
        let mut gen = Generator::new(&mut model, Recorder::greedy(), &Device::Cpu);
        let out = gen.run(&PROMPT, 12, |_| Ok::<_, Error>(())).unwrap();
        assert_eq!(out.tokens, want, "{backend:?}");
        assert_eq!(gen.tokens().len(), PROMPT.len() + 11);
        assert_eq!(gen.into_parts().1.into_logits(), want_logits, "{backend:?}");
    }
}

#[test]
fn seeded_sampling_is_candles_logits_processor_with_the_repeat_penalty() {
    let cases = [
        (Sampling::All { temperature: 1.5 }, 1.0, 0),
        (
            Sampling::TopP {
                p: 0.9,
                temperature: 0.8,
            },
            1.3,
            4,
        ),
        (Sampling::ArgMax, 3.0, 64),
    ];
    for backend in backends() {
        let mut model = tiny(backend);
        for (sampling, penalty, last_n) in cases.clone() {
            let mut processor = LogitsProcessor::from_sampling(42, sampling.clone());
            let (want, _) = by_hand(&mut model, 16, |l, context| {
                let mut logits = Tensor::new(l, &Device::Cpu).unwrap();
                if penalty != 1.0 {
                    let from = context.len().saturating_sub(last_n);
                    logits = candle_transformers::utils::apply_repeat_penalty(
                        &logits,
                        penalty,
                        &context[from..],
                    )
                    .unwrap();
                }
                processor.sample(&logits).unwrap()
            });
            let sampler = Sampled::new(42, sampling.clone()).with_repeat_penalty(penalty, last_n);
            let out = Generator::new(&mut model, sampler, &Device::Cpu)
                .run(&PROMPT, 16, |_| Ok::<_, Error>(()))
                .unwrap();
            assert_eq!(out.tokens, want, "{backend:?} {sampling:?}");
        }
    }
}

#[test]
fn teacher_forcing_feeds_the_given_tokens() {
    let forced: Vec<u32> = vec![5, 5, 200, 17, 3, 3, 3, 450];
    for backend in backends() {
        let mut model = tiny(backend);
        let mut i = 0;
        let (want, want_logits) = by_hand(&mut model, forced.len(), |_, _| {
            i += 1;
            forced[i - 1]
        });
        assert_eq!(want, forced);
        // Stop tokens are for free generation: a forced run takes none.
        let mut gen = Generator::new(&mut model, Recorder::forced(forced.clone()), &Device::Cpu);
        let out = gen
            .run(&PROMPT, forced.len(), |_| Ok::<_, Error>(()))
            .unwrap();
        assert_eq!(out.tokens, forced, "{backend:?}");
        assert_eq!(gen.into_parts().1.into_logits(), want_logits, "{backend:?}");
    }
}

#[test]
fn timings_cover_prefill_and_every_decode_step() {
    for backend in backends() {
        let mut model = tiny(backend);
        let out = Generator::new(&mut model, Greedy, &Device::Cpu)
            .run(&PROMPT, 6, |_| Ok::<_, Error>(()))
            .unwrap();
        let t = &out.timings;
        assert_eq!(t.prefill_tokens, PROMPT.len());
        assert!(t.prefill > Duration::ZERO, "{t:?}");
        assert_eq!(t.decode.len(), 5);
        assert!(t.decode.iter().all(|d| *d > Duration::ZERO), "{t:?}");
        let sum: f64 = t.decode.iter().map(Duration::as_secs_f64).sum();
        assert!((t.decode_secs() - sum).abs() < 1e-9);
        assert!(
            (t.prefill_tok_s() - PROMPT.len() as f64 / t.prefill_secs()).abs()
                < 1e-6 * t.prefill_tok_s()
        );
        assert!((t.decode_tok_s() - 5.0 / t.decode_secs()).abs() < 1e-6 * t.decode_tok_s());
    }
    assert_eq!(Timings::default().decode_tok_s(), 0.0);
}

#[test]
fn stop_ids_are_the_tokenizers_ids_of_the_stop_tokens() {
    use crate::synthetic::tokenizer_special_id;
    let tok = crate::synthetic::tokenizer().unwrap();
    assert_eq!(
        stop_ids(&tok),
        [
            tokenizer_special_id(IM_END),
            tokenizer_special_id(ENDOFTEXT)
        ]
    );
    assert_eq!(sampling(0.0, Some(0.5)), Sampling::ArgMax);
    assert_eq!(
        sampling(0.7, Some(0.5)),
        Sampling::TopP {
            p: 0.5,
            temperature: 0.7
        }
    );
    assert_eq!(sampling(0.7, None), Sampling::All { temperature: 0.7 });
}

/// Logits that turn non-finite at a given position (a NaN, +inf or -inf at one token id).
struct Poisoned {
    at: usize,
    value: f32,
}

impl CausalLM for Poisoned {
    fn forward(&mut self, input_ids: &Tensor, seqlen_offset: usize) -> Result<Tensor> {
        let n = input_ids.dim(1)?;
        let mut logits = vec![0f32; VOCAB];
        logits[1] = 1.0;
        if seqlen_offset + n - 1 == self.at {
            logits[5] = self.value;
            if self.value.is_finite() {
                logits[6] = self.value;
            }
        }
        Tensor::from_vec(logits, (1, 1, VOCAB), &Device::Cpu)
    }

    fn clear_kv_cache(&mut self) {}
}

#[test]
fn non_finite_logits_are_an_error_naming_the_position_not_a_token() {
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for at in [2, 4] {
            let mut model = Poisoned { at, value };
            let mut seen = Vec::new();
            let err = Generator::new(&mut model, Greedy, &Device::Cpu)
                .run(&[1, 2, 3], 8, |t| {
                    seen.push(t);
                    Ok::<_, Error>(())
                })
                .expect_err("non-finite logits must not be sampled");
            let e = err.to_string();
            assert!(
                e.contains(&format!("position {at}")) && e.contains("token id 5"),
                "{value} at {at}: {e}"
            );
            // Only the steps before the poisoned one produced tokens.
            assert_eq!(seen.len(), at - 2, "{value} at {at}");
        }
    }
    // Finite logits too large to sum in f32 are not mistaken for non-finite ones.
    let mut model = Poisoned {
        at: 2,
        value: f32::MAX,
    };
    let out = Generator::new(&mut model, Greedy, &Device::Cpu)
        .run(&[1, 2, 3], 1, |_| Ok::<_, Error>(()))
        .unwrap();
    assert_eq!(out.tokens, [5]);
}
