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

/// Memory the system can give without swapping, in bytes (`MemAvailable`); `None` where it
/// cannot be read (not Linux).
pub fn available_bytes() -> Option<u64> {
    kib_of("/proc/meminfo", "MemAvailable:").map(|k| k * 1024)
}

/// Errors, before a generation starts, when the KV caches of `models` models of `config` for
/// `positions` positions in `dtype` would not fit in the memory available: a cache grows token
/// by token, and running out half way aborts the process instead of saying why. Where the
/// available memory cannot be read, nothing is checked.
pub fn check_kv_cache(
    config: &emilio_qwen::Config,
    positions: usize,
    dtype: candle_core::DType,
    models: usize,
) -> anyhow::Result<()> {
    let per_position = 2
        * config.num_hidden_layers
        * config.num_key_value_heads
        * config.head_dim()
        * dtype.size_in_bytes()
        * models;
    match available_bytes() {
        Some(available) => kv_cache_fits(per_position, positions, available),
        None => Ok(()),
    }
}

fn kv_cache_fits(per_position: usize, positions: usize, available: u64) -> anyhow::Result<()> {
    let needed = (per_position as u64).saturating_mul(positions as u64);
    if needed > available {
        let fits = available / per_position.max(1) as u64;
        anyhow::bail!(
            "a KV cache of {positions} positions needs {:.1} GB ({per_position} bytes a \
             position), more than the {:.1} GB this machine has available: generate at most \
             about {fits} tokens in all (a smaller --max-tokens or prompt)",
            needed as f64 / 1e9,
            available as f64 / 1e9
        )
    }
    Ok(())
}

fn status_kib(key: &str) -> Option<u64> {
    kib_of("/proc/self/status", key)
}

fn kib_of(file: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(file).ok()?;
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
        // The resident size before the peak: the peak is read later, so it covers that size
        // even when another thread grows the process between the two readings (the kernel
        // updates its high-water mark lazily, and a test harness runs threads beside this).
        let after = rss_bytes();
        let memory = match (before, reset, peak_rss_bytes(), after) {
            (Some(rss_before_bytes), true, Some(peak), Some(rss_after_bytes)) => Some(Self {
                rss_before_bytes,
                peak_rss_bytes: peak.max(rss_after_bytes),
                rss_after_bytes,
            }),
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
    fn a_kv_cache_past_the_memory_is_refused_before_it_grows() {
        kv_cache_fits(1000, 1000, 1_000_000).unwrap();
        let e = kv_cache_fits(1000, 1001, 1_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1001 positions") && e.contains("about 1000 tokens"),
            "{e}"
        );
        assert!(available_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn a_load_that_touches_memory_shows_in_the_peak() {
        let n = 64 << 20;
        let (v, m) = LoadMemory::measure(|| Ok::<_, ()>(vec![1u8; n])).unwrap();
        let m = m.expect("Linux reports memory");
        assert!(m.peak_growth_bytes() >= n as u64 * 9 / 10, "{m:?}");
        drop(v);
    }
}
