//! Qwen2.5-0.5B's linear layers as `(k, n)`: `k` inputs, `n` outputs. The op's benchmark and
//! its accuracy example run at these shapes and include this file with `#[path]`, because a
//! benchmark's table is no part of the op's API and they can see no other crate of the
//! workspace. `emilio bench op` derives the same shapes from `emilio_qwen`'s `qwen2.5-0.5b`
//! preset, and `tests/tests/qwen_loading.rs` checks that this table agrees with it.

/// `q_proj` and `o_proj`.
pub const ATTENTION: (usize, usize) = (896, 896);
/// `k_proj` and `v_proj` (2 key-value heads of 64).
pub const KEY_VALUE: (usize, usize) = (896, 128);
/// `gate_proj` and `up_proj`.
pub const MLP_UP: (usize, usize) = (896, 4864);
/// `down_proj`.
pub const MLP_DOWN: (usize, usize) = (4864, 896);
/// `lm_head` (tied to the embedding).
pub const LM_HEAD: (usize, usize) = (896, 151_936);
