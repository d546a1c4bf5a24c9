//! Every documented misuse returns `Err` (never `Ok`, never a panic) whose message names the
//! offending shapes (as Candle prints them, `[2, 3]`, or as a tuple) or dtypes (`u32`, any case).

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use emilio_op::{
    broadcast_log_matmul, log_linear, log_linear_no_bias, log_matmul, LogLinear, LogWeight,
    WeightFormat,
};
use emilio_tests::{expect_err, names_shape, randn};

fn f32s(dims: &[usize]) -> Tensor {
    randn(1, dims, 1.0, DType::F32)
}

fn zeros(dims: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(dims, dtype, &Device::Cpu).unwrap()
}

/// `f` must fail naming both shapes.
fn shapes_named(what: &str, ad: &[usize], bd: &[usize], msg: &str) {
    assert!(
        names_shape(msg, ad) && names_shape(msg, bd),
        "{what}: error should name {ad:?} and {bd:?}: {msg}"
    );
}

fn matmul_shape_error(ad: &[usize], bd: &[usize]) {
    let (a, b) = (f32s(ad), f32s(bd));
    let what = format!("log_matmul {ad:?} x {bd:?}");
    let msg = expect_err(&what, || log_matmul(&a, &b));
    shapes_named(&what, ad, bd, &msg);
}

fn broadcast_shape_error(ad: &[usize], bd: &[usize]) {
    let (a, b) = (f32s(ad), f32s(bd));
    let what = format!("broadcast_log_matmul {ad:?} x {bd:?}");
    let msg = expect_err(&what, || broadcast_log_matmul(&a, &b));
    shapes_named(&what, ad, bd, &msg);
}

#[test]
fn rank_below_two() {
    matmul_shape_error(&[3], &[3, 4]);
    matmul_shape_error(&[2, 3], &[3]);
    matmul_shape_error(&[5], &[5]);
    broadcast_shape_error(&[4], &[4, 5]);
    broadcast_shape_error(&[2, 4], &[4]);
}

#[test]
fn ranks_differ() {
    matmul_shape_error(&[2, 3, 4], &[4, 5]);
    matmul_shape_error(&[3, 4], &[2, 4, 5]);
    matmul_shape_error(&[1, 2, 3, 4], &[2, 4, 5]);
}

#[test]
fn inner_dims_mismatch() {
    matmul_shape_error(&[2, 3], &[4, 5]);
    matmul_shape_error(&[2, 3, 4], &[2, 5, 6]);
    matmul_shape_error(&[1, 7], &[8, 1]);
    broadcast_shape_error(&[2, 3, 4], &[5, 6]);
    broadcast_shape_error(&[3, 4], &[2, 5, 6]);
}

#[test]
fn batch_mismatch() {
    matmul_shape_error(&[2, 3, 4], &[3, 4, 5]);
    matmul_shape_error(&[2, 2, 3, 4], &[2, 3, 4, 5]);
    // Not broadcastable: 2 vs 3 (neither is 1).
    broadcast_shape_error(&[2, 3, 4], &[3, 4, 5]);
    broadcast_shape_error(&[2, 1, 3, 4], &[3, 2, 4, 5]);
}

#[test]
fn integer_dtypes() {
    for (dtype, name) in [(DType::U32, "u32"), (DType::I64, "i64"), (DType::U8, "u8")] {
        let (a, b) = (zeros(&[2, 3], dtype), zeros(&[3, 4], dtype));
        let msg = expect_err(&format!("log_matmul {name}"), || log_matmul(&a, &b));
        assert!(
            msg.contains(name),
            "log_matmul {name}: error should name the dtype: {msg}"
        );
        let msg = expect_err(&format!("broadcast_log_matmul {name}"), || {
            broadcast_log_matmul(&a, &b)
        });
        assert!(msg.contains(name), "broadcast_log_matmul {name}: {msg}");
        // An integer weight.
        let w = zeros(&[4, 3], dtype);
        let msg = expect_err(&format!("LogWeight {name}"), || {
            LogWeight::from_tensor(&w, WeightFormat::F16)
        });
        assert!(msg.contains(name), "LogWeight::from_tensor {name}: {msg}");
        // An integer activation into a LogLinear.
        let lin = LogLinear::from_weights(&f32s(&[4, 3]), None, WeightFormat::F32).unwrap();
        let x = zeros(&[2, 3], dtype);
        let msg = expect_err(&format!("LogLinear x {name}"), || lin.forward(&x));
        assert!(msg.contains(name), "LogLinear forward {name}: {msg}");
    }
}

#[test]
fn mismatched_dtypes() {
    for (da, db) in [
        (DType::F32, DType::F16),
        (DType::F64, DType::BF16),
        (DType::F16, DType::BF16),
        (DType::F32, DType::F64),
    ] {
        let a = zeros(&[2, 3], da);
        let b = zeros(&[3, 4], db);
        let (na, nb) = (da.as_str(), db.as_str());
        let msg = expect_err(&format!("log_matmul {na} x {nb}"), || log_matmul(&a, &b));
        assert!(
            msg.contains(na) && msg.contains(nb),
            "log_matmul {na} x {nb}: error should name both dtypes: {msg}"
        );
        let msg = expect_err(&format!("broadcast {na} x {nb}"), || {
            broadcast_log_matmul(&a, &b)
        });
        assert!(
            msg.contains(na) && msg.contains(nb),
            "broadcast {na} x {nb}: {msg}"
        );
    }
}

#[test]
fn log_linear_input_width_mismatch() {
    let lin = LogLinear::from_weights(&f32s(&[5, 37]), None, WeightFormat::F16).unwrap();
    for xd in [vec![2, 41], vec![3, 4, 36], vec![1, 1]] {
        let x = f32s(&xd);
        let msg = expect_err(&format!("LogLinear x {xd:?}"), || lin.forward(&x));
        assert!(
            names_shape(&msg, &xd),
            "LogLinear x {xd:?}: error should name the input shape: {msg}"
        );
    }
    // Same through LogWeight::forward.
    let lw = LogWeight::from_tensor(&f32s(&[5, 37]), WeightFormat::F32).unwrap();
    let x = f32s(&[2, 41]);
    let msg = expect_err("LogWeight::forward", || lw.forward(&x));
    assert!(names_shape(&msg, &[2, 41]), "{msg}");
}

#[test]
fn log_weight_rank() {
    for wd in [vec![37], vec![2, 3, 4]] {
        let w = f32s(&wd);
        for format in [WeightFormat::F32, WeightFormat::F16] {
            let msg = expect_err(&format!("LogWeight {wd:?}"), || {
                LogWeight::from_tensor(&w, format)
            });
            assert!(names_shape(&msg, &wd), "LogWeight {wd:?} {format}: {msg}");
        }
    }
}

#[test]
fn log_linear_bias_shape() {
    let w = f32s(&[5, 8]);
    let b = f32s(&[6]);
    let msg = expect_err("bias (6,) for out = 5", || {
        LogLinear::from_weights(&w, Some(b.clone()), WeightFormat::F32)
    });
    assert!(
        names_shape(&msg, &[6]) && msg.contains('5'),
        "should name the bias shape and the weight's out dim: {msg}"
    );
}

#[test]
fn var_builder_errors() {
    let map = HashMap::from([("weight".to_string(), f32s(&[5, 8]))]);
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
    // No bias in the checkpoint.
    let msg = expect_err("missing bias", || {
        log_linear(8, 5, WeightFormat::F16, vb.clone())
    });
    assert!(msg.contains("bias"), "{msg}");
    // Wrong dims requested.
    let msg = expect_err("wrong dims", || {
        log_linear_no_bias(9, 5, WeightFormat::F16, vb.clone())
    });
    assert!(
        names_shape(&msg, &[5, 8]) && names_shape(&msg, &[5, 9]),
        "{msg}"
    );
    // Missing weight under a prefix.
    let msg = expect_err("missing weight", || {
        log_linear_no_bias(8, 5, WeightFormat::F16, vb.pp("nope"))
    });
    assert!(msg.contains("nope.weight"), "{msg}");
}

#[test]
fn weight_format_parse_error_names_the_input() {
    let e = "q8".parse::<WeightFormat>().unwrap_err();
    assert!(e.to_string().contains("q8"), "{e}");
}

/// The library speaks in its own terms: its refusals name values, types and methods, never
/// an application's command-line flags (the CLI adds those), and the pre-checks return them
/// typed.
#[test]
fn refusals_are_in_api_terms_and_typed() {
    use emilio_op::{log_matmul_with, ExpMode, LogConfig, OpError};
    let w = f32s(&[4, 8]);
    let mut messages = Vec::new();
    for format in WeightFormat::ALL {
        for exp in ExpMode::ALL {
            let config = LogConfig::new(format, exp);
            if config.is_supported() {
                continue;
            }
            match config.check() {
                Err(OpError::UnsupportedPair {
                    format: f, exp: e, ..
                }) => {
                    assert_eq!((f, e), (format.name(), exp), "{config}")
                }
                other => panic!("{config}: {other:?}"),
            }
            messages.push(expect_err("unsupported pair", || {
                LogWeight::from_tensor(&w, config)
            }));
        }
    }
    let x64 = randn(2, &[2, 8], 1.0, DType::F64);
    for exp in [ExpMode::Fast, ExpMode::Mitchell, ExpMode::Lmul] {
        messages.push(expect_err("f64 in an approximate mode", || {
            log_matmul_with(&x64, &x64.t()?, exp)
        }));
    }
    let mut bad = vec![1.0f32; 32];
    bad[5] = f32::INFINITY;
    let bad = Tensor::from_vec(bad, (1, 32), &Device::Cpu).unwrap();
    messages.push(expect_err("inf in lns8", || {
        LogWeight::from_tensor(&bad, WeightFormat::Lns8)
    }));
    let lmul =
        LogWeight::from_tensor(&w, LogConfig::new(WeightFormat::F16, ExpMode::Lmul)).unwrap();
    messages.push(expect_err("switching out of lmul", || {
        lmul.with_exp(ExpMode::Exact)
    }));
    assert!(messages.len() >= 8);
    for m in &messages {
        assert!(!m.contains("--"), "a flag in a library error: {m}");
    }
}
