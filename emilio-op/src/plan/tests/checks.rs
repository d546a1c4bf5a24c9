//! The plans' own checks, per backend: what they refuse, and which kernels they choose. These
//! need no emulator.

use candle_core::{DType, Layout, Shape};
use emilio_kernels::Backend;

use crate::plan;

fn contiguous(dims: &[usize]) -> Layout {
    Layout::contiguous(Shape::from(dims))
}

fn f64_and_integer_inputs_are_refused_clearly(gpu: Backend) {
    let matmul_err = |dtype| {
        plan::log_matmul(
            gpu,
            dtype,
            dtype,
            &contiguous(&[2, 3]),
            &contiguous(&[3, 4]),
            (2, 3, 4),
        )
        .unwrap_err()
        .to_string()
    };
    let err = matmul_err(DType::F64);
    assert!(
        err.contains("f64") && err.contains(gpu.name()) && err.contains("to_dtype"),
        "{err}"
    );
    let err = matmul_err(DType::U32);
    assert!(err.contains("U32"), "{err}");
    let (a, b) = (contiguous(&[2, 3]), contiguous(&[3, 4]));
    let err = plan::log_matmul(gpu, DType::F32, DType::F16, &a, &b, (2, 3, 4))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("F32") && err.contains("F16") && err.contains(gpu.name()),
        "{err}"
    );
    let err = plan::log_linear(
        gpu,
        DType::F64,
        &contiguous(&[1, 3]),
        DType::F16,
        &contiguous(&[4, 3]),
        DType::U32,
        &contiguous(&[4, 1]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("f64"), "{err}");
}

fn malformed_weights_are_refused(gpu: Backend) {
    let x = contiguous(&[1, 40]);
    let mags = contiguous(&[8, 40]);
    let signs = contiguous(&[8, 2]);
    // f32 activations against magnitudes and signs of these dtypes and layouts.
    let linear = |x: &Layout, mag_dtype, mags: &Layout, signs: &Layout| {
        plan::log_linear(gpu, DType::F32, x, mag_dtype, mags, DType::U32, signs)
    };
    assert!(linear(&x, DType::F16, &mags, &signs).is_ok());
    let t = contiguous(&[40, 8]).transpose(0, 1).unwrap();
    let err = linear(&x, DType::F16, &t, &signs).unwrap_err();
    assert!(err.to_string().contains("contiguous"), "{err}");
    let err = linear(&x, DType::BF16, &mags, &signs).unwrap_err();
    assert!(err.to_string().contains("f32 or f16"), "{err}");
    let err = linear(&x, DType::F16, &mags, &contiguous(&[8, 1])).unwrap_err();
    assert!(err.to_string().contains("(8, 2)"), "{err}");
    let err = linear(&contiguous(&[1, 39]), DType::F16, &mags, &signs).unwrap_err();
    assert!(err.to_string().contains("(…, 40)"), "{err}");
}

fn kernel_choice_follows_the_row_count(gpu: Backend) {
    let mags = contiguous(&[8, 40]);
    let signs = contiguous(&[8, 2]);
    for (rows, kernel) in [
        (1, "emilio_gemv_f16_f16"),
        (4, "emilio_gemv_f16_f16"),
        (5, "emilio_gemm_w_f16_f16"),
    ] {
        let p = plan::log_linear(
            gpu,
            DType::F16,
            &contiguous(&[rows, 40]),
            DType::F16,
            &mags,
            DType::U32,
            &signs,
        )
        .unwrap();
        assert_eq!(p.dispatches.len(), 2);
        assert_eq!(p.dispatches[0].kernel, "emilio_ln_split_contiguous_f16");
        assert_eq!(p.dispatches[1].kernel, kernel);
    }
    // A broadcast right operand is split once: its split covers one batch.
    let b = contiguous(&[20, 5]).broadcast_as((3, 20, 5)).unwrap();
    let p = plan::log_matmul(
        gpu,
        DType::F32,
        DType::F32,
        &contiguous(&[3, 7, 20]),
        &b,
        (7, 20, 5),
    )
    .unwrap();
    assert_eq!(p.temps, vec![8 * 3 * 7 * 20, 8 * 20 * 5]);
    assert_eq!(p.dispatches[1].kernel, "emilio_ln_split_strided_f32");
    assert_eq!(p.dispatches[2].args[3], plan::Arg::U32(0));
}

per_backend!(
    f64_and_integer_inputs_are_refused_clearly,
    malformed_weights_are_refused,
    kernel_choice_follows_the_row_count,
);
