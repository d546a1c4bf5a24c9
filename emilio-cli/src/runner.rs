//! Every backend behind one type the generation engine runs, and what a load costs.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use emilio_qwen::generation::CausalLM;
use emilio_qwen::reference::{QuantizedModel, StockModel};

use crate::cli::{Backend, ModelArgs};
use crate::memory::LoadMemory;
use crate::source::ModelFiles;

/// A loaded causal LM of any backend.
pub enum Runner {
    Emilio(emilio_qwen::ModelForCausalLM),
    Stock(StockModel),
    StockQuantized(QuantizedModel),
}

/// What loading a backend took.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub time: Duration,
    /// Resident memory around the load (Linux only).
    pub memory: Option<LoadMemory>,
}

impl Runner {
    /// Loads `backend` from `files` as `args` ask (`--weight-format`; activations and stock
    /// weights in `--dtype`) on `device`.
    pub fn load(
        files: &ModelFiles,
        backend: Backend,
        args: &ModelArgs,
        device: &Device,
    ) -> Result<(Self, Load)> {
        let (options, dtype) = (args.options(), args.dtype.dtype());
        let start = Instant::now();
        let ckpt = &files.checkpoint;
        let (runner, memory) = LoadMemory::measure(|| -> Result<Runner> {
            Ok(match backend {
                Backend::Emilio => Runner::Emilio(
                    ckpt.load(dtype, device, &options)
                        .with_context(|| load_context(files, "emilio"))?,
                ),
                Backend::Stock => Runner::Stock(
                    ckpt.load_stock(dtype, device)
                        .with_context(|| load_context(files, "stock"))?,
                ),
                Backend::StockQuantized => {
                    let Some(gguf) = &ckpt.gguf else {
                        bail!(
                            "--backend stock-quantized runs Candle's quantized model on a GGUF \
                             file, and {} is not one: pass --model FILE.gguf (or --model \
                             ORG/NAME --gguf FILE.gguf)",
                            files.label
                        )
                    };
                    Runner::StockQuantized(
                        QuantizedModel::load(gguf.path(), gguf.architecture(), device)
                            .with_context(|| load_context(files, "stock-quantized"))?,
                    )
                }
            })
        })?;
        let load = Load {
            time: start.elapsed(),
            memory,
        };
        Ok((runner, load))
    }

    /// The longest context this backend runs for the model: the model's own, or less where the
    /// backend's tables are shorter (Candle's quantized Llama: 4096 positions).
    pub fn max_positions(&self, files: &ModelFiles) -> usize {
        let cfg = &files.checkpoint.config;
        match self {
            Runner::StockQuantized(m) => m.max_positions(cfg),
            _ => cfg.max_position_embeddings,
        }
    }
}

/// Every backend, for the generation engine.
impl CausalLM for Runner {
    fn forward(&mut self, ids: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        match self {
            Runner::Emilio(m) => m.forward(ids, offset),
            Runner::Stock(m) => m.forward(ids, offset),
            Runner::StockQuantized(m) => m.forward(ids, offset),
        }
    }

    fn forward_from(
        &mut self,
        ids: &Tensor,
        offset: usize,
        first: usize,
    ) -> candle_core::Result<Tensor> {
        match self {
            Runner::Emilio(m) => m.forward_from(ids, offset, first),
            Runner::Stock(m) => m.forward_from(ids, offset, first),
            Runner::StockQuantized(m) => m.forward_from(ids, offset, first),
        }
    }

    fn clear_kv_cache(&mut self) {
        match self {
            Runner::Emilio(m) => m.clear_kv_cache(),
            Runner::Stock(m) => m.clear_kv_cache(),
            Runner::StockQuantized(m) => m.clear_kv_cache(),
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
