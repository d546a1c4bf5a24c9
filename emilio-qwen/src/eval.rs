//! Corpus-level fidelity: over a whole text, how much does a model's prediction move from
//! stock Candle's on the same weights? The statistics are those of llama.cpp's
//! `llama-perplexity --kl-divergence`, the tool the people who compare number formats know.
//!
//! The method is llama-perplexity's:
//! - [`Corpus`]: the text tokenized once, without special tokens, cut into consecutive chunks of
//!   `ctx` tokens (the tail that does not fill a chunk is dropped); when the tokenizer adds a
//!   BOS, each chunk's first token is replaced by it;
//! - each chunk runs from an empty KV cache, and the logits at position `j` score token `j + 1`
//!   for every `j` from `ctx / 2` to `ctx − 2` (the first half is context only, so every scored
//!   token has at least `ctx / 2` tokens before it);
//! - stock's pass yields a [`Reference`] (per scored position: stock's log-sum-exp, its logit of
//!   the correct token and its top logits), which can be saved and reused, so a sweep of formats
//!   runs stock once;
//! - the model's pass is scored against it, position by position ([`Scored`]), and
//!   [`Summary`] gathers the figures.
//!
//! The KL divergence from a reference is the full-vocabulary value to within a bound computed
//! at every position (see [`Reference`]); every [`Scored`] carries its position's bound, and
//! the summary reports the largest.

mod corpus;
mod reference_file;
mod stats;

use candle_core::{bail, DType, Device, Result, Tensor};

use crate::generation::CausalLM;

pub use corpus::Corpus;
pub use reference_file::{Reference, ReferenceInfo, ReferencePosition};
pub use stats::{DeltaP, Estimate, KlDistribution, Scored, Summary};

/// The logits of chunk `chunk`'s scored positions, `scored_per_chunk` rows of `vocab` values
/// (row `i` is position `first + i`), on the CPU in `f32`: the cache is cleared and the chunk's
/// inputs run in one [`CausalLM::forward_from`].
///
/// A NaN or infinite logit is an error naming `who`, the chunk, the position and the token id,
/// never a figure: an evaluation would otherwise report it as a perfect (or an absurd) score.
pub fn chunk_logits<M: CausalLM + ?Sized>(
    model: &mut M,
    corpus: &Corpus,
    chunk: usize,
    device: &Device,
    who: &str,
) -> Result<Vec<f32>> {
    model.clear_kv_cache();
    let ids = Tensor::new(corpus.inputs(chunk), device)?.unsqueeze(0)?;
    let logits = model.forward_from(&ids, 0, corpus.first())?;
    let rows = logits.dims3()?.1;
    if rows != corpus.scored_per_chunk() {
        bail!(
            "{who} returned logits for {rows} positions, expected {}",
            corpus.scored_per_chunk()
        )
    }
    let values = logits
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        let vocab = values.len() / rows;
        let count = values.iter().filter(|v| !v.is_finite()).count();
        bail!(
            "{who}'s logits are not finite at chunk {chunk}, position {} ({count} NaN or \
             infinite values in the chunk, the first at token id {}): a weight or activation is \
             NaN or overflowed; check the weights for non-finite values and the config \
             (rope_theta, rms_norm_eps) for impossible ones",
            corpus.first() + bad / vocab,
            bad % vocab
        )
    }
    Ok(values)
}

/// Stock's pass over every chunk of `corpus`: the [`Reference`] the model is scored against.
/// `progress` is called after each chunk with the number of chunks done.
pub fn stock_reference<M: CausalLM + ?Sized>(
    stock: &mut M,
    corpus: &Corpus,
    device: &Device,
    info: ReferenceInfo,
    progress: &mut dyn FnMut(usize),
) -> Result<Reference> {
    let mut reference = Reference::new(info, corpus)?;
    for chunk in 0..corpus.chunks() {
        let logits = chunk_logits(stock, corpus, chunk, device, "stock")?;
        let vocab = logits.len() / corpus.scored_per_chunk();
        for (row, &target) in logits.chunks_exact(vocab).zip(corpus.targets(chunk)) {
            reference.push(row, target)?;
        }
        progress(chunk + 1);
    }
    Ok(reference)
}

/// The model's pass over the chunks of `corpus`, each position scored against `reference`
/// (which must hold at least these chunks: [`Reference::check_matches`]).
pub fn score<M: CausalLM + ?Sized>(
    model: &mut M,
    corpus: &Corpus,
    reference: &Reference,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Scored>> {
    let per_chunk = corpus.scored_per_chunk();
    if reference.info().ctx != corpus.ctx() || reference.len() < corpus.scored() {
        bail!(
            "the reference (ctx {}, {} positions) does not cover the corpus (ctx {}, {} positions): \
             check it with Reference::check_matches first",
            reference.info().ctx,
            reference.len(),
            corpus.ctx(),
            corpus.scored()
        )
    }
    let mut scored = Vec::with_capacity(corpus.chunks() * per_chunk);
    let mut scratch = Vec::new();
    for chunk in 0..corpus.chunks() {
        let logits = chunk_logits(model, corpus, chunk, device, "emilio")?;
        let vocab = logits.len() / per_chunk;
        if vocab != reference.info().vocab {
            bail!(
                "the model has {vocab} logits per position, the reference {}",
                reference.info().vocab
            )
        }
        for (i, (row, &target)) in logits
            .chunks_exact(vocab)
            .zip(corpus.targets(chunk))
            .enumerate()
        {
            let at = reference.position(chunk * per_chunk + i);
            scored.push(Scored::new(&at, row, target, &mut scratch));
        }
        progress(chunk + 1);
    }
    Ok(scored)
}

#[cfg(test)]
mod tests;
