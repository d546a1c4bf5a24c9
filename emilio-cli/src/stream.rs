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
        self.tokenizer
            .decode(&self.tokens, true)
            .map_err(|e| anyhow!("cannot decode generated tokens: {e}"))
    }
}
