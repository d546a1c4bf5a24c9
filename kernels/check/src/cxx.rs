//! The C++ compiler the checks use: `$CXX`, else `c++`, `g++` or `clang++`, each tried with
//! `--version`.
//!
//! Without one, a check is skipped with a note, except under `CI=true`, where it fails: CI must
//! not pass by testing nothing.

use std::process::Command;

/// Every C++ compiler that runs here, `$CXX` first, then `c++`, `g++` and `clang++`, each once.
///
/// Empty (after a note on stderr) when there is none; panics instead under `CI=true`. `what`
/// names what cannot be checked then (e.g. "the Metal kernels").
pub fn compilers(what: &str) -> Vec<String> {
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
            !crate::in_ci(),
            "no C++ compiler found (tried $CXX, c++, g++, clang++): {what} cannot be checked; \
             install g++"
        );
        eprintln!("note: no C++ compiler found; skipping the checks of {what}");
    }
    found
}

/// The first of [`compilers`], the one a check needs only one of uses.
pub fn compiler(what: &str) -> Option<String> {
    compilers(what).into_iter().next()
}

/// Whether `cxx` is clang (its warning flags differ from g++'s).
pub fn is_clang(cxx: &str) -> bool {
    Command::new(cxx)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("clang"))
}
