//! The soak's chart: throughput and latency of the load, and each node's resident memory,
//! open file descriptors, data directory and records over time, with the end of the warm-up
//! marked. One SVG, six panels.

use std::path::Path;

use plotters::prelude::*;

use super::Sample;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the soak chart: {e}")
}

/// One panel: a line per series of (seconds, value) points.
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    series: &[(String, Vec<(f64, f64)>)],
    warmup_s: f64,
) -> anyhow::Result<()> {
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max)
        * 1.15;
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    c.draw_series(std::iter::once(PathElement::new(
        vec![(warmup_s, 0.0), (warmup_s, y_max)],
        BLACK.mix(0.4).stroke_width(1),
    )))
    .map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(err)?
        .label(name.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Draws `samples` to `path` (SVG).
pub fn chart(path: &Path, samples: &[Sample], warmup_s: f64) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1400, 1200)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((3, 2));
    let mut last_at = 0.0;
    let mut load = vec![
        ("committed".to_owned(), Vec::new()),
        ("aborted".to_owned(), Vec::new()),
        ("shed or failed".to_owned(), Vec::new()),
    ];
    let mut latency = vec![
        ("p50".to_owned(), Vec::new()),
        ("p99".to_owned(), Vec::new()),
    ];
    for s in samples {
        let secs = (s.at_s - last_at).max(0.001);
        last_at = s.at_s;
        load[0].1.push((s.at_s, s.committed as f64 / secs));
        load[1].1.push((s.at_s, s.aborted as f64 / secs));
        load[2].1.push((s.at_s, (s.shed + s.failed) as f64 / secs));
        latency[0].1.push((s.at_s, s.p50_ms));
        latency[1].1.push((s.at_s, s.p99_ms));
    }
    panel(&areas[0], "transfers", "per second", &load, warmup_s)?;
    panel(
        &areas[1],
        "latency of committed transfers",
        "ms",
        &latency,
        warmup_s,
    )?;
    let per_node = |f: &dyn Fn(&super::NodeSample) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        let names: Vec<String> = samples
            .first()
            .map(|s| s.nodes.iter().map(|n| n.node.clone()).collect())
            .unwrap_or_default();
        names
            .into_iter()
            .map(|name| {
                let points = samples
                    .iter()
                    .filter_map(|s| {
                        s.nodes
                            .iter()
                            .find(|n| n.node == name)
                            .map(|n| (s.at_s, f(n)))
                    })
                    .collect();
                (name, points)
            })
            .collect()
    };
    let mib = 1024.0 * 1024.0;
    panel(
        &areas[2],
        "resident memory",
        "MiB",
        &per_node(&|n| n.rss_bytes as f64 / mib),
        warmup_s,
    )?;
    panel(
        &areas[3],
        "open file descriptors",
        "fds",
        &per_node(&|n| n.open_fds as f64),
        warmup_s,
    )?;
    panel(
        &areas[4],
        "data directory",
        "MiB",
        &per_node(&|n| n.data_bytes as f64 / mib),
        warmup_s,
    )?;
    panel(
        &areas[5],
        "records held",
        "records",
        &per_node(&|n| n.total_records() as f64),
        warmup_s,
    )?;
    root.present().map_err(err)?;
    Ok(())
}
