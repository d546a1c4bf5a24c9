//! What the GPU test targets share: the device-generic suites `gpu/op.rs` (the op against the
//! `f64` reference and the CPU op) and `gpu/model.rs` (the log-domain Qwen2 against stock Candle
//! and the CPU model), and [`gpu_tests!`], which turns a suite into one `#[test]` per suite
//! function for one backend.
//!
//! A backend's test target (`metal_op.rs`, `cuda_model.rs`, …) is `#[macro_use] mod gpu;`, the
//! suite's module (`#[path = "gpu/op.rs"] mod op;`, declared there so that `cargo fmt` reaches
//! it) and one `gpu_tests!` call. The suite functions take the device and a label ("metal",
//! "cuda") used in their messages; they need nothing else from the backend.

use candle_core::{Device, Tensor};

/// The `#[test]`s of one suite on one backend:
///
/// `gpu_tests!(SUITE, DEVICE, "LABEL", #[ATTR]);`
///
/// declares, for every function of the suite's module (`op` or `model`, which the caller declares
/// next to `mod gpu`), a `#[test]` of the same name carrying `#[ATTR]` (the backend's
/// `cfg_attr(not(feature = …), ignore = …)`) that opens `DEVICE` (a `candle_core::Result<Device>`
/// such as `Device::new_metal(0)`) and runs the function with it and `LABEL`.
///
/// The lists below name every suite function: one left out is dead code, which clippy refuses.
macro_rules! gpu_tests {
    (op, $($backend:tt)+) => {
        gpu_tests!(@tests op [
            small_and_odd_shapes,
            model_scale_products,
            batched_attention_and_strided_operands,
            broadcast_log_matmul_on_device,
            ieee_edges,
            overflow_and_underflow_only_where_the_product_does,
            k_zero_and_empty,
            unsupported_dtypes_are_clear_errors,
            mixed_devices_are_clear_errors,
            linear_decode_and_prefill,
            linear_unaligned_and_long_rows,
            linear_dtypes_and_layouts,
            linear_signed_zeros_and_specials,
            layers_moved_to_the_device_match_layers_built_there,
        ] $($backend)+);
    };
    (model, $($backend:tt)+) => {
        gpu_tests!(@tests model [
            tied_gqa2_matches_stock,
            untied_gqa4_f16_storage_matches_stock,
            half_precision_activations_run_on_device,
        ] $($backend)+);
    };
    (@tests $suite:ident [$($name:ident),+ $(,)?] $device:expr, $label:literal, #[$attr:meta]) => {
        $(
            #[test]
            #[$attr]
            fn $name() {
                let device = $device.unwrap_or_else(|e| {
                    panic!("{}: {e} (these tests need that GPU)", stringify!($device))
                });
                $suite::$name(&device, $label);
            }
        )+
    };
}

/// A GPU device and its label ("metal", "cuda") for messages.
#[derive(Clone, Copy)]
pub struct Gpu<'a> {
    pub dev: &'a Device,
    pub label: &'a str,
}

impl Gpu<'_> {
    /// A CPU tensor moved to the device with its layout (strides, offset) unchanged.
    pub fn on(&self, t: &Tensor) -> Tensor {
        let moved = t.to_device(self.dev).unwrap();
        assert_eq!(moved.stride(), t.stride(), "to_device keeps the layout");
        moved
    }

    /// A result of the op, which must still be on the device, copied to the CPU.
    pub fn cpu(&self, t: &Tensor) -> Tensor {
        assert!(
            t.device().same_device(self.dev),
            "the result stays on the {} device, got it on {:?}",
            self.label,
            t.device().location()
        );
        t.to_device(&Device::Cpu).unwrap()
    }
}
