//! Reading Candle errors in tests: their text without backtraces, an assertion that a call
//! fails (rather than succeeding or panicking), and whether a message names a shape.

/// The text of a Candle error without any captured backtrace (which `Display` appends when
/// `RUST_BACKTRACE` is set, and whose symbol names could match a dtype or shape by accident).
pub fn error_text(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => error_text(inner),
        E::Context { inner, context } => format!("{context}\n{}", error_text(inner)),
        E::WithPath { inner, path } => format!("path: {path:?} {}", error_text(inner)),
        other => other.to_string(),
    }
}

/// Run `f`, which must return `Err` (not `Ok`, not a panic); returns the error's text without
/// backtrace, lowercased.
pub fn expect_err<T>(what: &str, f: impl FnOnce() -> candle_core::Result<T>) -> String {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(_)) => panic!("{what}: expected an error, got Ok"),
        Ok(Err(e)) => {
            let text = error_text(&e);
            eprintln!("{what}: {text}");
            text.to_lowercase()
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}: panicked instead of returning an error: {msg}")
        }
    }
}

/// Whether an error text names `dims`, as Candle prints shapes (`[2, 3]`) or as a tuple
/// (`(2, 3)`).
pub fn names_shape(msg: &str, dims: &[usize]) -> bool {
    let list = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    msg.contains(&format!("[{list}]")) || msg.contains(&format!("({list})"))
}

/// Shape text as Candle prints a `Shape` in its errors (`Debug`): `[2, 3]`.
pub fn shape_text(dims: &[usize]) -> String {
    format!("{dims:?}")
}
