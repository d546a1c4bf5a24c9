//! Either backend behind one type the generation engine runs, and the timing of a load.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::qwen2 as stock;
use emilio_op::WeightFormat;
use emilio_qwen::generation::CausalLM;
use emilio_qwen::Options;

use crate::cli::Backend;
use crate::source::ModelFiles;

/// A loaded causal LM of either backend.
pub enum Runner {
    Emilio(emilio_qwen::ModelForCausalLM),
    Stock(stock::ModelForCausalLM),
}

impl Runner {
    /// Loads `backend` from `files`, activations (and stock weights) in `dtype` on `device`.
    pub fn load(
        files: &ModelFiles,
        backend: Backend,
        format: WeightFormat,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Duration)> {
        let start = Instant::now();
        let ckpt = &files.checkpoint;
        let runner = match backend {
            Backend::Emilio => Runner::Emilio(
                ckpt.load(dtype, device, &Options::new(format))
                    .with_context(|| load_context(files, "emilio"))?,
            ),
            Backend::Stock => Runner::Stock(
                ckpt.load_stock(dtype, device)
                    .with_context(|| load_context(files, "stock"))?,
            ),
        };
        Ok((runner, start.elapsed()))
    }

    /// Bytes of log-domain weights (magnitudes and sign words), for the emilio backend.
    pub fn log_weight_bytes(&self) -> Option<usize> {
        match self {
            Runner::Emilio(m) => Some(m.log_weight_bytes()),
            Runner::Stock(_) => None,
        }
    }
}

/// Either backend, for the generation engine.
impl CausalLM for Runner {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        match self {
            Runner::Emilio(m) => m.forward(ids, offset),
            Runner::Stock(m) => m.forward(ids, offset),
        }
    }

    fn clear_kv_cache(&mut self) {
        match self {
            Runner::Emilio(m) => m.clear_kv_cache(),
            Runner::Stock(m) => m.clear_kv_cache(),
        }
    }
}

fn load_context(files: &ModelFiles, backend: &str) -> String {
    format!(
        "loading {} ({backend} backend; if a file is truncated or corrupt, download it again \
         or rewrite it with `emilio synth`)",
        files.label
    )
}
