//! Qwen2 in which every linear layer and both attention products run through
//! [`emilio_op`]'s log-domain matmul.
//!
//! The model fork itself lands with the `emilio-qwen` issue; for now the crate re-exports the
//! stock configuration so that downstream crates already build against the final path.

pub use candle_transformers::models::qwen2::Config;
