//! A text cut into the chunks an evaluation scores.

use candle_core::{bail, Result};
use tokenizers::Tokenizer;

/// A text's tokens in consecutive chunks of `ctx` tokens, as llama-perplexity cuts them.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Every chunk's tokens, one after the other (`chunks × ctx`), BOS already in place.
    tokens: Vec<u32>,
    ctx: usize,
    chunks: usize,
    /// Tokens the whole text has (the chunks use the first `chunks × ctx` of them).
    text_tokens: usize,
    /// What replaces each chunk's first tokens: the tokenizer's BOS, when it adds one.
    bos: Vec<u32>,
}

impl Corpus {
    /// Tokenizes `text` once without special tokens and cuts it into chunks of `ctx` tokens
    /// (at most `max_chunks`, when given), each beginning with the tokenizer's BOS when it adds
    /// one. `source` names the text in errors; `max_positions` is the model's context.
    pub fn from_text(
        tokenizer: &Tokenizer,
        text: &str,
        ctx: usize,
        max_chunks: Option<usize>,
        max_positions: usize,
        source: &str,
    ) -> Result<Self> {
        let tokens = tokenizer
            .encode(text, false)
            .map_err(|e| candle_core::Error::msg(format!("cannot tokenize {source}: {e}")))?
            .get_ids()
            .to_vec();
        let bos = bos_prefix(tokenizer)?;
        Self::new(tokens, &bos, ctx, max_chunks, max_positions, source)
    }

    /// Chunks of `ctx` tokens from `tokens` (at most `max_chunks`), each one's first tokens
    /// replaced by `bos` (which may be empty).
    pub fn new(
        tokens: Vec<u32>,
        bos: &[u32],
        ctx: usize,
        max_chunks: Option<usize>,
        max_positions: usize,
        source: &str,
    ) -> Result<Self> {
        // The messages name the values as this API does (`ctx`, `max_chunks`), not as a
        // command line spells them: a front end adds its own advice.
        if ctx < 3 {
            bail!("ctx {ctx} is too small: a chunk needs at least 3 tokens (half of them context, then at least one scored)")
        }
        if ctx > max_positions {
            bail!(
                "ctx {ctx} is longer than the model's context ({max_positions} positions): use a \
                 ctx of {max_positions} or less"
            )
        }
        if bos.len() > ctx / 2 {
            bail!(
                "ctx {ctx} is too small for the tokenizer's {}-token BOS prefix",
                bos.len()
            )
        }
        if max_chunks == Some(0) {
            bail!("max_chunks 0 scores nothing: ask for at least 1 chunk")
        }
        let available = tokens.len() / ctx;
        if available == 0 {
            bail!(
                "{source} has {} tokens, fewer than one chunk of ctx {ctx}: use a smaller \
                 ctx or a longer text",
                tokens.len()
            )
        }
        let chunks = max_chunks.map_or(available, |n| n.min(available));
        let text_tokens = tokens.len();
        let mut tokens = tokens;
        tokens.truncate(chunks * ctx);
        for chunk in tokens.chunks_exact_mut(ctx) {
            chunk[..bos.len()].copy_from_slice(bos);
        }
        Ok(Self {
            tokens,
            ctx,
            chunks,
            text_tokens,
            bos: bos.to_vec(),
        })
    }

    /// Tokens per chunk.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// How many chunks are scored.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// How many tokens the whole text has.
    pub fn text_tokens(&self) -> usize {
        self.text_tokens
    }

    /// How many chunks the text holds in all (`max_chunks` may score fewer).
    pub fn available_chunks(&self) -> usize {
        self.text_tokens / self.ctx
    }

    /// The BOS prefix each chunk starts with (empty when the tokenizer adds none).
    pub fn bos(&self) -> &[u32] {
        &self.bos
    }

    /// The first scored position of a chunk, `ctx / 2`: its logits score token `ctx / 2 + 1`.
    pub fn first(&self) -> usize {
        self.ctx / 2
    }

    /// Scored positions per chunk: `first()..=ctx − 2`.
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx - 1 - self.first()
    }

    /// Scored positions in all.
    pub fn scored(&self) -> usize {
        self.chunks * self.scored_per_chunk()
    }

    /// Every chunk's tokens, one after the other.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Chunk `i`'s `ctx` tokens.
    pub fn chunk(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.ctx..(i + 1) * self.ctx]
    }

    /// What the model reads for chunk `i`: all its tokens but the last (which is only scored).
    pub fn inputs(&self, i: usize) -> &[u32] {
        &self.chunk(i)[..self.ctx - 1]
    }

    /// The tokens chunk `i`'s scored positions predict, in order.
    pub fn targets(&self, i: usize) -> &[u32] {
        &self.chunk(i)[self.first() + 1..]
    }
}

/// The tokens the tokenizer puts before a text when it adds special tokens (its BOS), found by
/// encoding a sample both ways.
fn bos_prefix(tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let encode = |special| {
        tokenizer
            .encode("Hello", special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| candle_core::Error::msg(format!("cannot tokenize a sample: {e}")))
    };
    let (with, without) = (encode(true)?, encode(false)?);
    Ok(match with.ends_with(&without) {
        true => with[..with.len() - without.len()].to_vec(),
        false => Vec::new(),
    })
}
