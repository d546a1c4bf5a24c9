//! Writing results to stdout without panicking when the reader goes away.
//!
//! `println!` panics on a closed pipe (`emilio ab --json | head -1`); results are instead built
//! as text and written once, and a broken pipe ends the program quietly, as `head` expects.

use std::io::Write;

/// `writeln!` into a `String` (which cannot fail), for text later passed to [`emit`].
macro_rules! outln {
    ($o:expr) => {
        $o.push('\n')
    };
    ($o:expr, $($arg:tt)*) => {{
        $o.push_str(&format!($($arg)*));
        $o.push('\n');
    }};
}

use anyhow::Result;

/// Writes `text` to stdout and flushes it.
pub fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Whether `err` is stdout's reader having gone away, which is not a failure of ours.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
