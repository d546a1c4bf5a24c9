//! cargo-fuzz target: `Target::Tokenizer` of tests/src/fuzz_targets.rs (which says what it loads).
#![no_main]

#[allow(dead_code)] // each binary runs one target
#[path = "../../src/fuzz_targets.rs"]
mod fuzz_targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fuzz_targets::Target::Tokenizer.run(data) {
        panic!("{broken}");
    }
});
