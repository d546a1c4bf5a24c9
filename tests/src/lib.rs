//! Shared helpers for the workspace's integration tests (see `tests/tests/`), one module a job:
//!
//! - [`inputs`]: seeded inputs ([`rng`], [`normal`], [`randn`], [`wide`], [`tensor_from_f32`],
//!   [`tensor_from_f64`]), exact read-back of values and bits, and [`SMALL_SHAPES`].
//! - [`budget`]: the op's error budget ([`Budget`]) and the floating-point constants it is
//!   written in; its module doc derives the bound.
//! - [`reference`](mod@reference): the `f64` reference of a matmul or linear layer ([`reference_matmul`],
//!   [`reference_linear`], [`Reference`]) and the checkers that hold a result to the budget and
//!   report the worst error/bound ratio, or panic with the first failing index and its values:
//!   [`Reference::check`], [`Reference::check_stock`], [`Reference::check_pair`].
//! - [`errors`]: reading Candle errors ([`expect_err`], [`error_text`], [`names_shape`]).
//! - [`cli`]: running the `emilio` binary end to end in a sandbox without network.
//! - [`fake_hub`]: a fake of the Hugging Face hub's file endpoints on 127.0.0.1, with faults,
//!   for the hub client's tests.
//!
//! Everything but [`cli`] and [`fake_hub`] is re-exported at the crate root, so a suite imports what it uses
//! from `emilio_tests` directly.

pub mod budget;
pub mod cli;
pub mod errors;
pub mod fake_hub;
pub mod fuzz_targets;
pub mod inputs;
pub mod models;
pub mod reference;

pub use budget::*;
pub use errors::*;
pub use inputs::*;
pub use reference::*;
