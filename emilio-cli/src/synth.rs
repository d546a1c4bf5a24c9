//! `emilio synth`: an offline checkpoint with seeded random weights, as a directory or as one
//! GGUF file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use emilio_qwen::synthetic::gguf::{write_gguf, GgufQuant};
use emilio_qwen::synthetic::{checkpoint_file_names, write_checkpoint, SyntheticSpec};

use crate::cli::{SynthArgs, SynthFormat};

pub fn run(args: &SynthArgs) -> Result<()> {
    let spec = SyntheticSpec::new(args.preset)
        .with_seed(args.seed)
        .with_dtype(args.dtype.dtype());
    let spec = if args.untied {
        spec.with_tied(false)
    } else {
        spec
    };
    match args.format {
        SynthFormat::Dir => {
            if let Some(q) = args.quant {
                bail!(
                    "--quant {q} applies only with --format gguf; a directory checkpoint stores \
                     its weights as --dtype"
                )
            }
            run_dir(args, &spec)
        }
        SynthFormat::Gguf => run_gguf(args, &spec, args.quant.unwrap_or(GgufQuant::Q8_0)),
    }
}

fn run_dir(args: &SynthArgs, spec: &SyntheticSpec) -> Result<()> {
    if !args.force {
        let existing: Vec<String> = checkpoint_file_names(spec)
            .into_iter()
            .filter(|name| std::fs::symlink_metadata(args.out.join(name)).is_ok())
            .collect();
        if let Some(first) = existing.first() {
            bail!(
                "--out {} already holds {}{}: pass --force to replace them, or choose another \
                 --out",
                args.out.display(),
                args.out.join(first).display(),
                match existing.len() {
                    1 => String::new(),
                    n => format!(
                        " and {} more checkpoint file(s) ({})",
                        n - 1,
                        existing[1..].join(", ")
                    ),
                }
            )
        }
    }
    check_writable(&args.out)?;
    let written = write_checkpoint(&args.out, spec).with_context(|| {
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
        spec.dtype
    );
    outln!(
        o,
        "try: emilio generate --model {} --prompt \"Hello\"",
        written.dir.display()
    );
    crate::output::emit(&o)
}

fn run_gguf(args: &SynthArgs, spec: &SyntheticSpec, quant: GgufQuant) -> Result<()> {
    let out = &args.out;
    if out.is_dir() {
        bail!(
            "--out {} is a directory; with --format gguf it names the .gguf file to write",
            out.display()
        )
    }
    if out.extension().and_then(|e| e.to_str()) != Some("gguf") {
        bail!(
            "--out {} does not end in .gguf; with --format gguf it names the .gguf file to write",
            out.display()
        )
    }
    if !args.force && std::fs::symlink_metadata(out).is_ok() {
        bail!(
            "--out {} already exists: pass --force to replace it, or choose another --out",
            out.display()
        )
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| {
            format!(
                "cannot create the directory of {} ({})",
                out.display(),
                parent.display()
            )
        })?;
    }
    let written = write_gguf(out, spec, quant).with_context(|| {
        format!(
            "writing a {} {quant} GGUF to {}",
            args.preset,
            out.display()
        )
    })?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let mut o = String::new();
    outln!(
        o,
        "wrote {} (preset {}, seed {}, {} layers, {:.1} MB, {quant} weights, qwen2 GGUF)",
        written.path.display(),
        args.preset,
        args.seed,
        written.config.num_hidden_layers,
        bytes as f64 / 1e6,
    );
    crate::output::emit(&o)
}

/// Fails early, naming the path, when `out` cannot be created or written.
fn check_writable(out: &Path) -> Result<()> {
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
