//! Progress bars on stderr, one style for every long step (a download, an evaluation pass):
//! indicatif redraws them in place, with rate and ETA, and hides them when stderr is not a
//! terminal, so logs and test output stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` units named `prefix`; `counts` is the indicatif template of its position,
/// e.g. `{pos}/{len} tokens` or `{bytes}/{total_bytes}`.
pub fn bar(total: u64, prefix: &str, counts: &str) -> ProgressBar {
    let template = format!("{{prefix}} [{{bar:30}}] {counts}, {{per_sec}}, ETA {{eta}}");
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::new(total).with_style(style);
    bar.set_prefix(prefix.to_string());
    bar.tick();
    bar
}
