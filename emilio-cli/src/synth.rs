//! `emilio synth`: an offline checkpoint with seeded random weights.

use anyhow::{bail, Context, Result};
use emilio_qwen::synthetic::{write_checkpoint, SyntheticSpec};

use crate::cli::SynthArgs;

pub fn run(args: &SynthArgs) -> Result<()> {
    let dtype = args.dtype.dtype();
    check_writable(&args.out)?;
    let spec = SyntheticSpec::new(args.preset)
        .with_seed(args.seed)
        .with_dtype(dtype);
    let spec = if args.untied {
        spec.with_tied(false)
    } else {
        spec
    };
    let written = write_checkpoint(&args.out, &spec).with_context(|| {
        format!(
            "writing a {} checkpoint to {}",
            args.preset,
            args.out.display()
        )
    })?;
    let bytes: u64 = written
        .weight_files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let mut o = String::new();
    outln!(
        o,
        "wrote {} (preset {}, seed {}, {} layers, {:.1} MB of {:?} weights)",
        written.dir.display(),
        args.preset,
        args.seed,
        written.config.num_hidden_layers,
        bytes as f64 / 1e6,
        dtype
    );
    outln!(
        o,
        "try: emilio generate --model {} --prompt \"Hello\"",
        written.dir.display()
    );
    crate::output::emit(&o)
}

/// Fails early, naming the path, when `out` cannot be created or written.
fn check_writable(out: &std::path::Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display())
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let probe = out.join(".emilio-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("cannot write into the output directory {}", out.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
