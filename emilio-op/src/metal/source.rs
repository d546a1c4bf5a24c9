//! `kernels/emilio.metal`, embedded, and the description of the data it shares with the CPU path.
//!
//! The kernel source opens with a block of `#define EMILIO_…` constants: the sign-packing width
//! of [`crate::packing`], the constants of the CPU's `exp` and `ln` (which the kernels compute
//! operation for operation) and the tile sizes [`crate::plan`] dispatches with. The tests below
//! parse that block and hold it to the Rust side, bit for bit, so the two cannot drift apart.

/// The Metal source of every kernel, compiled at run time by the device.
pub(crate) const SOURCE: &str = include_str!("../../../kernels/emilio.metal");

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::SOURCE;
    use crate::cpu::exp::consts;
    use crate::packing;
    use crate::plan;

    /// `name → value text` of the shared-constants block of the Metal source.
    fn defines() -> HashMap<&'static str, &'static str> {
        defines_of(SOURCE)
    }

    /// `name → value text` of the shared-constants block of a kernel source.
    fn defines_of(source: &'static str) -> HashMap<&'static str, &'static str> {
        let begin = source
            .find("---- BEGIN EMILIO SHARED CONSTANTS")
            .expect("shared-constants block");
        let end = source
            .find("---- END EMILIO SHARED CONSTANTS")
            .expect("end of the shared-constants block");
        let mut out = HashMap::new();
        for line in source[begin..end].lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("#define") {
                continue;
            }
            let name = words.next().expect("a #define names something");
            let value = words
                .next()
                .unwrap_or_else(|| panic!("{name} has no value"));
            assert!(words.next().is_none(), "{name}: one value per #define");
            assert!(out.insert(name, value).is_none(), "{name} defined twice");
        }
        out
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

    /// kernels/emilio.cu computes the same exp and ln and is driven by the same plans: its
    /// constants block must be this one, name for name and digit for digit (so every check
    /// below holds for it too).
    #[test]
    fn cuda_source_shares_every_constant() {
        let cuda = defines_of(include_str!("../../../kernels/emilio.cu"));
        let metal = defines();
        let mut names: Vec<_> = metal.keys().chain(cuda.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            assert_eq!(
                cuda.get(name),
                metal.get(name),
                "{name}: kernels/emilio.cu and kernels/emilio.metal disagree"
            );
        }
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
        // The values themselves are private to cpu/ln.rs; the emulator tests (crate::emulate)
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

    /// `fma`, `min` and `max` are called as `metal::…`: macOS's libc++ also declares float
    /// overloads of C's `fma` in the global namespace, which would make an unqualified call
    /// ambiguous in the C++ check and the emulator there (Metal itself accepts both).
    #[test]
    fn math_functions_are_qualified() {
        for name in ["fma(", "min(", "max("] {
            for (at, _) in SOURCE.match_indices(name) {
                let before = &SOURCE[..at];
                let qualified = before.ends_with("metal::");
                let part_of_word = before
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
                let line = SOURCE[..at].lines().count();
                assert!(
                    qualified || part_of_word,
                    "kernels/emilio.metal line {line}: call metal::{name}…) qualified"
                );
            }
        }
    }

    /// Every kernel binds its arguments at `[[buffer(0)]]`, `[[buffer(1)]]`, … in the order of
    /// its parameters: the plans give arguments by position.
    #[test]
    fn kernel_arguments_are_bound_in_parameter_order() {
        let mut kernels = 0;
        for part in SOURCE.split("kernel void ").skip(1) {
            let body = &part[..part.find('{').expect("kernel body")];
            let name = body.split('(').next().unwrap().trim();
            let mut next = 0;
            let mut rest = body;
            while let Some(at) = rest.find("[[buffer(") {
                rest = &rest[at + "[[buffer(".len()..];
                let index: usize = rest[..rest.find(')').unwrap()].parse().unwrap();
                assert_eq!(index, next, "{name}: buffer indices must run 0, 1, 2, …");
                next += 1;
            }
            assert!(next > 0, "{name} binds no buffer");
            kernels += 1;
        }
        // The five kernel macros: contiguous and strided split, GEMV, GEMM against weights,
        // GEMM of activations (instantiated per dtype).
        assert_eq!(kernels, 5, "kernel definitions in the source");
    }
}
