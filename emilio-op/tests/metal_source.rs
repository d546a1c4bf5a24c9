//! Checks of the Metal kernel source that need no Apple machine (they run in CI on Linux):
//!
//! - `kernels/emilio.metal` compiles as C++17 against `kernels/check/metal_stdlib_stub.h`, a
//!   stand-in for `<metal_stdlib>` declaring exactly the Metal types, qualifiers and functions
//!   the kernels may use: syntax errors, type errors, misspelt or unknown functions and wrong
//!   argument counts fail here instead of at run time on a Mac;
//! - the check itself rejects a source using something the stub lacks;
//! - the sign packing the kernels are written for is `emilio_op::packing`'s.
//!
//! The kernels' behaviour is tested by emilio-op's unit tests (`src/emulate.rs`), which
//! run them in a SIMT emulator built from the same two files.
//!
//! The C++ compiler is `$CXX`, else `c++`, `g++` or `clang++`, the first found. Without one the
//! tests are skipped with a note, except under `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("emilio-op lives in the workspace")
        .to_path_buf()
}

/// Every available C++ compiler, `$CXX` first.
fn compilers() -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let candidates = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from));
    for c in candidates {
        let works = Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if works && !found.contains(&c) {
            found.push(c);
        }
    }
    if found.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no C++ compiler found (tried $CXX, c++, g++, clang++): kernels/emilio.metal \
             cannot be checked; install g++"
        );
        eprintln!("note: no C++ compiler found; skipping the Metal source checks");
    }
    found
}

fn is_clang(cxx: &str) -> bool {
    Command::new(cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("clang"))
}

/// `cxx -fsyntax-only` over `source` with the stub; returns (success, diagnostics).
fn syntax_check(cxx: &str, source: &Path) -> (bool, String) {
    let stub = root().join("kernels/check/metal_stdlib_stub.h");
    // Metal attributes ([[buffer(0)]], [[thread_position_in_grid]]) are unknown to C++
    // compilers, which ignore them; everything else warns as an error.
    let unknown_attributes = if is_clang(cxx) {
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
    let source = root().join("kernels/emilio.metal");
    for cxx in compilers() {
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
    let original = std::fs::read_to_string(root().join("kernels/emilio.metal")).unwrap();
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
    for cxx in compilers() {
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

#[test]
fn kernels_pack_signs_as_emilio_op_packing_does() {
    let source = std::fs::read_to_string(root().join("kernels/emilio.metal")).unwrap();
    let value = source
        .lines()
        .find_map(|l| l.strip_prefix("#define EMILIO_SIGN_BITS_PER_WORD "))
        .expect("EMILIO_SIGN_BITS_PER_WORD in kernels/emilio.metal");
    assert_eq!(
        value.trim().parse::<usize>().unwrap(),
        emilio_op::packing::SIGN_BITS_PER_WORD
    );
    // Lane j of a SIMD-group reads bit j of the word (packing.rs: "lane j ... (word >> j) & 1").
    assert!(source.contains("#define EMILIO_SIGN_BIT(WORD, J) (((WORD) >> (J)) & 1u)"));
    let mut words = [0u32; 2];
    emilio_op::packing::pack_sign_row((0..40).map(|k| k % 3 == 0), &mut words);
    for k in 0..40 {
        assert_eq!(
            (words[k / 32] >> (k % 32)) & 1,
            (k % 3 == 0) as u32,
            "element {k}"
        );
    }
}
