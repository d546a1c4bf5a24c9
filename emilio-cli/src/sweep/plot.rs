//! The sweep's plot: mean KL (log axis) against the decode speed ratio, one labelled point per
//! pair, the Pareto front drawn through its pairs, written as SVG.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::PairRow;

/// KL values are drawn at least at this height: a log axis has no zero.
const KL_FLOOR: f64 = 1e-12;

pub fn write(path: &Path, rows: &[PairRow], model: &str) -> Result<()> {
    draw(path, rows, model)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot write the sweep's plot to {}", path.display()))
}

fn draw(path: &Path, rows: &[PairRow], model: &str) -> Result<(), Box<dyn std::error::Error>> {
    let kl = |r: &PairRow| r.kl_mean.max(KL_FLOOR);
    let (kl_lo, kl_hi) = rows
        .iter()
        .map(kl)
        .fold((f64::INFINITY, 0f64), |(lo, hi), k| (lo.min(k), hi.max(k)));
    let speed_hi = rows.iter().map(|r| r.decode_ratio).fold(0f64, f64::max);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("emilio sweep: {model} (KL against stock, decode speed over stock f32)"),
            ("sans-serif", 18),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(
            0f64..(speed_hi * 1.2).max(1.2),
            (kl_lo / 10.0..kl_hi * 10.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("decode tokens/s over stock f32 (same run)")
        .y_desc("mean KL(stock ‖ emilio), nats")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;
    let mut front: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.pareto)
        .map(|r| (r.decode_ratio, kl(r)))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(front, RED.stroke_width(2)))?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_series(rows.iter().map(|r| {
        let colour = if r.pareto { RED } else { BLUE };
        EmptyElement::at((r.decode_ratio, kl(r)))
            + Circle::new((0, 0), 5, colour.filled())
            + Text::new(
                format!("{}/{}", r.weight_format, r.exp),
                (8, -12),
                ("sans-serif", 13),
            )
    }))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
