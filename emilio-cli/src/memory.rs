//! The process's resident memory, to report what loading a model costs.
//!
//! Linux only (`/proc/self/status`, `/proc/self/clear_refs`); elsewhere every reading is
//! `None` and the reports leave the figures out.

/// Resident set size now, in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// The peak resident set size since the last [`reset_peak`] (or the start), in bytes (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Resets the peak to the current resident size (writing `5` to `/proc/self/clear_refs`,
/// Linux ≥ 4.0), so the next [`peak_rss_bytes`] measures only what follows. Returns whether it
/// worked; when not, the peak still counts from the start of the process.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What loading one backend cost in memory.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LoadMemory {
    /// Resident bytes just before the load began.
    pub rss_before_bytes: u64,
    /// The peak resident bytes during the load.
    pub peak_rss_bytes: u64,
    /// Resident bytes once loaded.
    pub rss_after_bytes: u64,
}

impl LoadMemory {
    /// Measures `load`: resets the peak, runs it, reads the peak. `None` where the process's
    /// memory cannot be read, or the peak cannot be reset (the figure would be the process's).
    pub fn measure<T, E>(load: impl FnOnce() -> Result<T, E>) -> Result<(T, Option<Self>), E> {
        let before = rss_bytes();
        let reset = reset_peak();
        let value = load()?;
        let memory = match (before, reset, peak_rss_bytes(), rss_bytes()) {
            (Some(rss_before_bytes), true, Some(peak_rss_bytes), Some(rss_after_bytes)) => {
                Some(Self {
                    rss_before_bytes,
                    peak_rss_bytes,
                    rss_after_bytes,
                })
            }
            _ => None,
        };
        Ok((value, memory))
    }

    /// How far the peak rose above the resident size before the load.
    pub fn peak_growth_bytes(&self) -> u64 {
        self.peak_rss_bytes.saturating_sub(self.rss_before_bytes)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_load_that_touches_memory_shows_in_the_peak() {
        let n = 64 << 20;
        let (v, m) = LoadMemory::measure(|| Ok::<_, ()>(vec![1u8; n])).unwrap();
        let m = m.expect("Linux reports memory");
        assert!(m.peak_growth_bytes() >= n as u64 * 9 / 10, "{m:?}");
        assert!(m.peak_rss_bytes >= m.rss_after_bytes);
        drop(v);
    }
}
