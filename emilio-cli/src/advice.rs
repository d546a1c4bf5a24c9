//! The op's errors ([`OpError`], in the library's own terms) turned into advice about this
//! program's flags, and the help of the flags that pick a weight format and an exp mode,
//! generated from the library's lists so it cannot drift from them.

use anyhow::{anyhow, Result};
use candle_core::Device;
use emilio_op::{ExpMode, LogConfig, OpError, WeightFormat};

/// Checks `--weight-format` and `--exp` against each other and against `--device` before
/// anything loads, with advice in flags.
pub fn check_log_config(config: LogConfig, device: &Device) -> Result<()> {
    config
        .check_device(device)
        .map_err(|e| anyhow!(flag_advice(&e)))
}

/// The op's error with what to pass instead.
pub fn flag_advice(e: &OpError) -> String {
    match e {
        OpError::UnsupportedPair { format, .. } => {
            let modes = format
                .parse::<WeightFormat>()
                .map(|f| names(f.exp_modes()))
                .unwrap_or_default();
            format!("{e}\n  (--weight-format {format} runs with --exp {modes})")
        }
        OpError::CpuOnly { device, .. } => format!(
            "{e}\n  (on --device {device} pass --weight-format f16 or f32 with --exp exact, or \
             pass --device cpu)"
        ),
        OpError::NoF64Kernel { .. } => format!("{e}\n  (pass --dtype f32, or --exp exact)"),
        OpError::BackendNotBuilt { feature, .. } => format!(
            "{e}\n  (rebuild emilio with `cargo build --release --features {feature}`, or pass \
             --device cpu)"
        ),
        _ => e.to_string(),
    }
}

/// `--weight-format`'s one-line help.
pub fn weight_format_help() -> String {
    format!(
        "How the log-domain weights are stored: {} (--help: each one's bits, error and exp modes)",
        names(WeightFormat::ALL)
    )
}

/// `--weight-format`'s long help: one paragraph per format.
pub fn weight_format_long_help() -> String {
    let mut help = "How the log-domain weights are stored:\n".to_string();
    for f in WeightFormat::ALL {
        help += &format!(
            "\n{f}: {}.\n    --exp {}\n",
            f.summary(),
            names(f.exp_modes())
        );
    }
    help
}

/// `--exp`'s one-line help.
pub fn exp_help() -> String {
    format!(
        "How each log-domain product's exp is taken: {} (--help: each one's bound)",
        names(ExpMode::ALL)
    )
}

/// `--exp`'s long help: one paragraph per mode.
pub fn exp_long_help() -> String {
    let mut help = "How each log-domain product's exp is taken (bounds per product, as \
                    docs/architecture.md states them):\n"
        .to_string();
    for e in ExpMode::ALL {
        let formats: Vec<_> = WeightFormat::ALL
            .into_iter()
            .filter(|f| LogConfig::new(*f, e).is_supported())
            .collect();
        help += &format!(
            "\n{e}: {}.\n    --weight-format {}\n",
            e.summary(),
            names(formats)
        );
    }
    help
}

/// `a, b, c`.
fn names<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_format_and_mode_with_its_summary() {
        let (formats, exps) = (weight_format_long_help(), exp_long_help());
        for f in WeightFormat::ALL {
            assert!(
                formats.contains(&format!("{f}: {}", f.summary())),
                "{formats}"
            );
            assert!(weight_format_help().contains(f.name()));
        }
        for e in ExpMode::ALL {
            assert!(exps.contains(&format!("{e}: {}", e.summary())), "{exps}");
            assert!(exp_help().contains(e.name()));
        }
    }

    #[test]
    fn unsupported_pairs_get_flag_advice_naming_the_modes_that_run() {
        let e = LogConfig::new(WeightFormat::Lns8, ExpMode::Lmul)
            .check()
            .unwrap_err();
        let advice = flag_advice(&e);
        assert!(advice.contains("(lns8, lmul)"), "{advice}");
        assert!(
            advice.contains("--weight-format lns8 runs with --exp exact, fast, mitchell"),
            "{advice}"
        );
        assert!(check_log_config(
            LogConfig::new(WeightFormat::F16, ExpMode::Fast),
            &Device::Cpu
        )
        .is_ok());
    }
}
