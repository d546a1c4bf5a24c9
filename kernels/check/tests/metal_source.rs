//! Checks of the Metal kernel source that need no Apple machine (they run in CI on Linux):
//!
//! - `kernels/emilio.metal` compiles as C++17 against `kernels/check/metal_stdlib_stub.h`, a
//!   stand-in for `<metal_stdlib>` declaring exactly the Metal types, qualifiers and functions
//!   the kernels may use: syntax errors, type errors, misspelt or unknown functions and wrong
//!   argument counts fail here instead of at run time on a Mac;
//! - the check itself rejects a source using something the stub lacks;
//! - the source's conventions the C++ checks and the plans rely on: qualified math functions,
//!   buffers bound in parameter order.
//!
//! The kernels' behaviour is tested by emilio-op's plan tests (`emilio-op/src/plan/tests/`),
//! which run them in the SIMT emulator built from the same two files (`emilio_kernels_check::
//! emulator`); that the sign packing and constants are emilio-op's is checked there too.
//!
//! Every C++ compiler found ([`emilio_kernels_check::cxx::compilers`]) is tried. Without one the
//! tests are skipped with a note, except under `CI=true`, where they fail.

use std::path::Path;
use std::process::Command;

use emilio_kernels::{Backend, METAL_SOURCE};
use emilio_kernels_check::cxx;

const WHAT: &str = "kernels/emilio.metal";

/// `cxx -fsyntax-only` over `source` with the stub; returns (success, diagnostics).
fn syntax_check(cxx: &str, source: &Path) -> (bool, String) {
    let stub = emilio_kernels_check::stub_path(Backend::Metal);
    // Metal attributes ([[buffer(0)]], [[thread_position_in_grid]]) are unknown to C++
    // compilers, which ignore them; everything else warns as an error.
    let unknown_attributes = if cxx::is_clang(cxx) {
        "-Wno-unknown-attributes"
    } else {
        "-Wno-attributes"
    };
    let out = Command::new(cxx)
        .args(["-fsyntax-only", "-std=c++17", "-Wall", "-Wextra", "-Werror"])
        .arg(unknown_attributes)
        .arg("-include")
        .arg(&stub)
        .args(["-x", "c++"])
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
    let diagnostics = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), diagnostics)
}

#[test]
fn kernel_source_compiles_as_cpp_against_the_metal_stub() {
    let source = emilio_kernels_check::source_path(Backend::Metal);
    for cxx in cxx::compilers(WHAT) {
        let (ok, diagnostics) = syntax_check(&cxx, &source);
        assert!(
            ok,
            "{cxx} rejects kernels/emilio.metal (with kernels/check/metal_stdlib_stub.h):\n\
             {diagnostics}"
        );
        eprintln!("{cxx}: kernels/emilio.metal is well-formed");
    }
}

#[test]
fn the_check_rejects_what_the_stub_does_not_define() {
    // A kernel source calling a function the stub lacks (here metal::precise::exp, which the
    // kernels deliberately do not use) or with a type error must fail the check.
    let original = METAL_SOURCE;
    let dir = std::env::temp_dir().join(format!("emilio-metal-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = [
        (
            "unknown function",
            "return (as_type<uint>(x) & 0x7fffffffu) > 0x7f800000u ? x : y;",
            "return metal::precise::exp(x);",
        ),
        (
            "type error",
            "const uint word = srow[q];",
            "const uint word = srow;",
        ),
        (
            "wrong argument count",
            "emilio_split_store(IO::load(src[i]), i, logs, masks);",
            "emilio_split_store(IO::load(src[i]), i, logs);",
        ),
    ];
    for cxx in cxx::compilers(WHAT) {
        for (what, from, to) in broken {
            assert!(
                original.contains(from),
                "{what}: the source changed; update this test"
            );
            let path = dir.join("broken.metal");
            std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
            let (ok, _) = syntax_check(&cxx, &path);
            assert!(
                !ok,
                "{cxx} accepts a kernel source with a {what}: the check is toothless"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `fma`, `min` and `max` are called as `metal::…`: macOS's libc++ also declares float
/// overloads of C's `fma` in the global namespace, which would make an unqualified call
/// ambiguous in the C++ check and the emulator there (Metal itself accepts both).
#[test]
fn math_functions_are_qualified() {
    const SOURCE: &str = METAL_SOURCE;
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
    for part in METAL_SOURCE.split("kernel void ").skip(1) {
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
