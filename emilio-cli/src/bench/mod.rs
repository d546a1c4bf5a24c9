//! `emilio bench`: speed against stock Candle, measured in the same run, as ratios.
//!
//! - [`op`]: the op against Candle's matmul at Qwen2.5-0.5B's linear shapes, next to the
//!   machine's [`ceilings`];
//! - [`model`]: prefill and decode tokens/s of both backends through the generation engine.

mod ceilings;
pub(crate) mod model;
mod op;

use std::time::Instant;

use anyhow::Result;

use crate::cli::{BenchArgs, BenchTarget};

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.target {
        BenchTarget::Op(a) => op::run(a),
        BenchTarget::Model(a) => model::run(a),
    }
}

/// The median of `values` (the upper one of an even count). Panics when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median seconds of `reps` runs of `f` (at least one), after one warm-up run.
fn median_secs<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// One kind of linear layer of a Qwen2 model: `k` inputs, `n` outputs.
struct Linear {
    name: &'static str,
    k: usize,
    n: usize,
    /// How many the whole model has (the head: one).
    count: usize,
}

/// The linear layers of a Qwen2 model, the head last: the shapes `bench op` times (of the
/// Qwen2.5-0.5B preset) and the weights each decode step of `bench model` reads.
fn linear_layers(cfg: &emilio_qwen::Config) -> [Linear; 5] {
    let h = cfg.hidden_size;
    let kv = cfg.num_key_value_heads * (h / cfg.num_attention_heads);
    let (i, layers) = (cfg.intermediate_size, cfg.num_hidden_layers);
    let linear = |name, k, n, count| Linear { name, k, n, count };
    [
        linear("q_proj / o_proj", h, h, 2 * layers),
        linear("k_proj / v_proj", h, kv, 2 * layers),
        linear("gate / up", h, i, 2 * layers),
        linear("down", i, h, layers),
        linear("lm_head", h, cfg.vocab_size, 1),
    ]
}
