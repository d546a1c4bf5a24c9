//! The kernel sources held to the Rust side. Both open with a block of `#define EMILIO_…`
//! constants (the sign-packing width of [`crate::packing`], the constants of the CPU's `exp`
//! and `ln`, which the kernels compute operation for operation, and the tiling the plans
//! dispatch with); these tests parse the Metal one and hold it to the Rust constants, bit for
//! bit, so the two cannot drift apart (that the CUDA block is the same, digit for digit, is a
//! test of `kernels/check/`). And the kernels both sources define are exactly the names the
//! plans form.

use std::collections::HashMap;

use emilio_kernels::{Backend, METAL_SOURCE as SOURCE};
use emilio_kernels_check::source;

use crate::cpu::exp::consts;
use crate::packing;
use crate::plan;

/// `name → value text` of the shared-constants block of the Metal source.
fn defines() -> HashMap<&'static str, &'static str> {
    source::defines(SOURCE)
}

fn int(name: &str) -> i64 {
    let text = defines()[name];
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("{name} = {text}: {e}"))
}

/// The `f32` a Metal (or C++) compiler makes of a literal such as `1.5e-04f`: the correctly
/// rounded value, as Rust's parser gives.
fn float(name: &str) -> f32 {
    let text = defines()[name];
    let digits = text
        .strip_suffix('f')
        .unwrap_or_else(|| panic!("{name} = {text}: a float literal must end in f"));
    digits
        .parse()
        .unwrap_or_else(|e| panic!("{name} = {text}: {e}"))
}

#[test]
fn sign_packing_is_the_one_of_packing_rs() {
    assert_eq!(
        int("EMILIO_SIGN_BITS_PER_WORD") as usize,
        packing::SIGN_BITS_PER_WORD
    );
    assert_eq!(int("EMILIO_SIMD_WIDTH") as usize, plan::SIMD_WIDTH);
    // The kernels read bit j of word q as the sign of element 32·q + j: the macro that
    // does it, and packing.rs's own reader, agree on a word with every bit pattern.
    assert!(SOURCE.contains("#define EMILIO_SIGN_BIT(WORD, J) (((WORD) >> (J)) & 1u)"));
    let signs: Vec<bool> = (0..70).map(|k| (k * 5 + 3) % 7 < 3).collect();
    let mut words = vec![0u32; packing::sign_words_per_row(signs.len())];
    packing::pack_sign_row(signs.iter().copied(), &mut words);
    for (k, &s) in signs.iter().enumerate() {
        let (q, j) = (k / 32, k % 32);
        assert_eq!((words[q] >> j) & 1, s as u32, "element {k}");
        assert_eq!(packing::sign_bit(&words, k), s as u32);
    }
}

/// A `#define` line as it should read for `v`: Rust's shortest round-trip form, which a C++
/// or Metal compiler parses back to the same `f32`.
fn float_line(name: &str, v: f32) -> String {
    format!("#define {name} {v:e}f")
}

#[test]
fn exp_constants_are_the_cpu_ones() {
    // On a mismatch the message lists the lines kernels/emilio.metal should have (and, if
    // the polynomial's length changed, the Horner chain in emilio_exp needs its lines too).
    let mut want = vec![
        ("EMILIO_EXP_LOG2E".to_string(), consts::LOG2E),
        ("EMILIO_EXP_ROUND_MAGIC".to_string(), consts::ROUND_MAGIC),
        ("EMILIO_EXP_LN2_HI".to_string(), consts::LN2_HI),
        ("EMILIO_EXP_LN2_LO".to_string(), consts::LN2_LO),
        ("EMILIO_EXP_X_MAX".to_string(), consts::X_MAX),
        ("EMILIO_EXP_X_MIN".to_string(), consts::X_MIN),
    ];
    for (i, &c) in consts::POLY.iter().enumerate() {
        want.push((format!("EMILIO_EXP_POLY_{i}"), c));
    }
    let expected: Vec<String> = want.iter().map(|(n, v)| float_line(n, *v)).collect();
    let defines = defines();
    let poly_defines = defines
        .keys()
        .filter(|k| k.starts_with("EMILIO_EXP_POLY_"))
        .count();
    let same = poly_defines == consts::POLY.len()
        && want.iter().all(|(name, v)| {
            defines.contains_key(name.as_str()) && float(name).to_bits() == v.to_bits()
        });
    assert!(
        same,
        "kernels/emilio.metal's exp constants differ from emilio-op/src/cpu/exp.rs; the \
         block should read:\n{}",
        expected.join("\n")
    );
    // The Horner chain evaluates every coefficient, in order.
    for i in 1..consts::POLY.len() {
        let step = format!("p = metal::fma(p, r, EMILIO_EXP_POLY_{i});");
        assert!(SOURCE.contains(&step), "emilio_exp lacks `{step}`");
    }
    let first = "float p = EMILIO_EXP_POLY_0;";
    assert!(SOURCE.contains(first), "emilio_exp lacks `{first}`");
}

#[test]
fn ln_constants_are_well_formed() {
    // The values themselves are private to cpu/ln.rs; the emulated tests (`emulated.rs`)
    // compare the kernels' ln bit for bit with the CPU's, which fails on any difference.
    for i in 0..9 {
        float(&format!("EMILIO_LN_P{i}"));
    }
    assert_eq!(float("EMILIO_LN_LN2_HI"), consts::LN2_HI);
    assert_eq!(float("EMILIO_LN_LN2_LO"), consts::LN2_LO);
    assert_eq!(int("EMILIO_LN_SQRT_HALF_BITS"), 0x3f35_04f3);
    assert_eq!(float("EMILIO_LN_TWO_POW_M126"), f32::MIN_POSITIVE);
}

#[test]
fn tiling_is_the_one_the_plans_dispatch() {
    let pairs = [
        ("EMILIO_GEMV_ROWS_PER_GROUP", plan::GEMV_ROWS_PER_GROUP),
        ("EMILIO_GEMV_MAX_M", plan::GEMV_MAX_M),
        ("EMILIO_GEMM_BM", plan::GEMM_BM),
        ("EMILIO_GEMM_BN", plan::GEMM_BN),
        ("EMILIO_GEMM_BK", plan::GEMM_BK),
        ("EMILIO_GEMM_THREADS", plan::GEMM_THREADS),
    ];
    for (name, want) in pairs {
        assert_eq!(int(name) as usize, want, "{name}");
    }
}

#[test]
fn kernels_pack_signs_as_emilio_op_packing_does() {
    let value = SOURCE
        .lines()
        .find_map(|l| l.strip_prefix("#define EMILIO_SIGN_BITS_PER_WORD "))
        .expect("EMILIO_SIGN_BITS_PER_WORD in kernels/emilio.metal");
    assert_eq!(
        value.trim().parse::<usize>().unwrap(),
        packing::SIGN_BITS_PER_WORD
    );
    // Lane j of a SIMD-group reads bit j of the word (packing.rs: "lane j ... (word >> j) & 1").
    assert!(SOURCE.contains("#define EMILIO_SIGN_BIT(WORD, J) (((WORD) >> (J)) & 1u)"));
    let mut words = [0u32; 2];
    packing::pack_sign_row((0..40).map(|k| k % 3 == 0), &mut words);
    for k in 0..40 {
        assert_eq!(
            (words[k / 32] >> (k % 32)) & 1,
            (k % 3 == 0) as u32,
            "element {k}"
        );
    }
}

/// Every kernel a plan can launch is defined in both sources, and they define no other: the
/// plans and the sources name one set of kernels (and nvcc's PTX has exactly the CUDA
/// source's, `kernels/check/tests/cuda_source.rs`).
#[test]
fn the_sources_define_exactly_the_kernels_the_plans_name() {
    let mut planned = plan::kernel_names();
    planned.sort();
    let count = planned.len();
    planned.dedup();
    assert_eq!(planned.len(), count, "a kernel name formed twice");
    for backend in Backend::ALL {
        let mut defined = source::kernels(backend.source());
        defined.sort();
        let missing: Vec<_> = planned.iter().filter(|k| !defined.contains(k)).collect();
        let unplanned: Vec<_> = defined.iter().filter(|k| !planned.contains(k)).collect();
        assert!(
            missing.is_empty() && unplanned.is_empty(),
            "kernels/{}: planned but not defined {missing:?}, defined but not planned \
             {unplanned:?}",
            backend.source_file()
        );
    }
}
