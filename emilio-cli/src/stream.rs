//! Turning generated token ids into text as they come, without splitting a character.

use anyhow::{anyhow, Result};
use tokenizers::Tokenizer;

/// Decodes a growing list of tokens and hands out only the text that is new and complete.
///
/// Byte-level BPE tokens can end inside a multi-byte UTF-8 character; decoding the whole list
/// each time and holding back a trailing replacement character avoids printing half of one.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    tokens: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            printed: 0,
        }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, token: u32) -> Result<Option<String>> {
        self.tokens.push(token);
        let text = self.decode()?;
        if text.ends_with('\u{fffd}') {
            return Ok(None);
        }
        match text.get(self.printed..) {
            Some(new) if !new.is_empty() => {
                let new = new.to_string();
                self.printed = text.len();
                Ok(Some(new))
            }
            _ => Ok(None),
        }
    }

    /// Whatever is left at the end (an incomplete character is printed as is).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.decode()?;
        if text.len() > self.printed {
            let rest = text.get(self.printed..).unwrap_or("").to_string();
            self.printed = text.len();
            Ok(Some(rest))
        } else {
            Ok(None)
        }
    }

    fn decode(&self) -> Result<String> {
        decode(self.tokenizer, &self.tokens, true)
            .map_err(|e| anyhow!("cannot decode generated tokens: {e}"))
    }
}

/// `tokenizer.decode`, except that an id the tokenizer has no token for (a model whose
/// vocabulary is larger than its tokenizer's) shows as `<|unknown id N|>`: `tokenizers` decodes
/// it to nothing, and a model emitting it would look as if it printed nothing.
pub fn decode(
    tokenizer: &Tokenizer,
    ids: &[u32],
    skip_special: bool,
) -> tokenizers::Result<String> {
    let known = |id: &u32| tokenizer.id_to_token(*id).is_some();
    if ids.iter().all(known) {
        return tokenizer.decode(ids, skip_special);
    }
    let mut out = String::new();
    for run in ids.chunk_by(|a, b| known(a) == known(b)) {
        if known(&run[0]) {
            out.push_str(&tokenizer.decode(run, skip_special)?);
        } else {
            for id in run {
                out.push_str(&format!("<|unknown id {id}|>"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;

    #[test]
    fn ids_without_a_token_are_shown_not_dropped() {
        let vocab = [("a".to_string(), 0), ("b".to_string(), 1)]
            .into_iter()
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("a".into())
            .build()
            .unwrap();
        let tokenizer = Tokenizer::new(model);
        assert_eq!(
            tokenizer.decode(&[0, 7], true).unwrap(),
            "a",
            "tokenizers drops 7"
        );
        assert_eq!(
            decode(&tokenizer, &[0, 7, 8, 1], true).unwrap(),
            "a<|unknown id 7|><|unknown id 8|>b"
        );
        let mut stream = TextStream::new(&tokenizer);
        assert_eq!(stream.push(9).unwrap().as_deref(), Some("<|unknown id 9|>"));
    }
}
