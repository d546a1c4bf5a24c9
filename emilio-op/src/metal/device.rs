//! The compiled kernel library, once per Metal device, and its pipelines, once per kernel.
//!
//! Modelled on `candle_metal_kernels::Kernels` (`load_library`, `load_pipeline_with_constants`:
//! a read-locked lookup, then a write lock that checks again before compiling), which Candle
//! keeps per device but whose sources are a closed set; ours are kept in a map keyed by the
//! device's [`DeviceId`], as each `MetalDevice` owns its own `Kernels`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use candle_core::metal_backend::DeviceId;
use candle_core::{Error, MetalDevice, Result};
use candle_metal_kernels::metal::{ComputePipeline, Library};
use emilio_kernels::METAL_SOURCE;
use objc2::rc::Retained;
use objc2_metal::{
    MTLCompileOptions, MTLComputePipelineState, MTLMathFloatingPointFunctions, MTLMathMode,
};

use crate::plan::SIMD_WIDTH;

/// The kernel library of one device and the pipelines built from it so far.
pub(crate) struct Kernels {
    library: Library,
    pipelines: RwLock<HashMap<String, ComputePipeline>>,
}

type Cache = Mutex<HashMap<DeviceId, Arc<Kernels>>>;

static CACHE: OnceLock<Cache> = OnceLock::new();

fn poisoned<T>(_: T) -> Error {
    Error::Msg("emilio's Metal kernel cache is unusable: a thread panicked while holding it".into())
}

/// Compile options for `kernels/emilio.metal`: IEEE arithmetic, not fast math.
///
/// Candle compiles its own kernels with fast math on (`CANDLE_METAL_ENABLE_FAST_MATH`, default
/// true), which lets the compiler assume there are no infinities or NaNs and reassociate sums;
/// the op's contract (`docs/architecture.md`) needs both. Same availability switch as Candle's
/// `get_compile_options`: `mathMode` from macOS 15 / iOS 18, `fastMathEnabled` before.
fn compile_options() -> Retained<MTLCompileOptions> {
    let options = MTLCompileOptions::new();
    if objc2::available!(macos = 15, ios = 18) {
        options.setMathMode(MTLMathMode::Safe);
        options.setMathFloatingPointFunctions(MTLMathFloatingPointFunctions::Precise);
    } else {
        #[allow(deprecated)]
        options.setFastMathEnabled(false);
    }
    options
}

/// The kernels of `device`, compiling `kernels/emilio.metal` on first use.
pub(crate) fn kernels(device: &MetalDevice) -> Result<Arc<Kernels>> {
    let mut cache = CACHE
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(poisoned)?;
    if let Some(kernels) = cache.get(&device.id()) {
        return Ok(kernels.clone());
    }
    let options = compile_options();
    let library = device
        .metal_device()
        .new_library_with_source(METAL_SOURCE, Some(&options))
        .map_err(|e| {
            Error::Msg(format!(
                "the Metal compiler rejected emilio's kernels (kernels/emilio.metal): {e}"
            ))
        })?;
    let kernels = Arc::new(Kernels {
        library,
        pipelines: RwLock::new(HashMap::new()),
    });
    cache.insert(device.id(), kernels.clone());
    Ok(kernels)
}

impl Kernels {
    /// The pipeline of kernel `name`, built on first use.
    pub(crate) fn pipeline(&self, device: &MetalDevice, name: &str) -> Result<ComputePipeline> {
        if let Some(p) = self.pipelines.read().map_err(poisoned)?.get(name) {
            return Ok(p.clone());
        }
        let mut pipelines = self.pipelines.write().map_err(poisoned)?;
        if let Some(p) = pipelines.get(name) {
            return Ok(p.clone());
        }
        let function = self.library.get_function(name, None).map_err(|e| {
            Error::Msg(format!(
                "emilio's Metal library has no kernel {name} ({e}); kernels/emilio.metal and \
                 emilio-op/src/plan.rs disagree"
            ))
        })?;
        let pipeline = device
            .metal_device()
            .new_compute_pipeline_state_with_function(&function)
            .map_err(|e| Error::Msg(format!("building the Metal pipeline of {name}: {e}")))?;
        // The GEMV kernel maps SIMD lane j to sign bit j of a 32-bit word.
        let width = pipeline.as_ref().threadExecutionWidth();
        if width != SIMD_WIDTH {
            return Err(Error::Msg(format!(
                "emilio's Metal kernels need a SIMD-group width of {SIMD_WIDTH} (every Apple \
                 GPU has it), but this GPU runs {name} {width} wide; run on the CPU \
                 (Device::Cpu)"
            )));
        }
        pipelines.insert(name.to_string(), pipeline.clone());
        Ok(pipeline)
    }
}
