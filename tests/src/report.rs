//! Renders the comparison: side-by-side tables (the runs, the read paths, the events
//! protocol), report.json, report.md, and a chart (SVG) of throughput and of the events
//! protocol's money in flight over time, with the fault windows marked.

use std::path::Path;

use anyhow::Context;
use comfy_table::{Cell, Table, presets::UTF8_FULL_CONDENSED};
use plotters::prelude::*;
use serde::Serialize;

use crate::compare::{CompareConfig, RunReport};

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The header and rows shared by the terminal table and the markdown one.
fn rows(runs: &[RunReport]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "scenario",
        "protocol",
        "committed",
        "aborted",
        "unknown (applied)",
        "not started",
        "checked at parts.",
        "txn/s",
        "p50 ms",
        "p99 ms",
        "atomicity viol.",
        "lost acks",
        "events lost",
        "total kept",
        "audits off/ok/tried",
        "audit p50/p99 ms",
        "lost updates",
        "longest in doubt / in flight ms",
        "unresolved",
        "recovery ms",
        "settled ms",
        "result",
    ];
    let rows = runs
        .iter()
        .map(|r| {
            vec![
                r.scenario.clone(),
                r.protocol.clone(),
                r.committed.to_string(),
                r.aborted.to_string(),
                format!("{} ({})", r.unknown, r.unknown_resolved.committed),
                r.not_started.to_string(),
                r.txns_checked_at_participants.to_string(),
                format!("{:.0}", r.tps),
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.p99_ms),
                r.atomicity_violations.to_string(),
                r.lost_acknowledged.to_string(),
                r.events_lost.to_string(),
                if r.total_conserved {
                    "yes".into()
                } else {
                    "NO".into()
                },
                format!(
                    "{}/{}/{}",
                    r.audits_inconsistent, r.audits_completed, r.audits_tried
                ),
                format!("{:.0}/{:.0}", r.audit_p50_ms, r.audit_p99_ms),
                r.lost_updates
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "n/a".into()),
                opt(r.longest_in_doubt_ms.or(r.longest_in_flight_ms)),
                r.unresolved_at_end.to_string(),
                opt(r.recovery_ms),
                opt(r.settled_ms),
                if r.is_failure() {
                    "FAILED".into()
                } else {
                    "ok".into()
                },
            ]
        })
        .collect();
    (header, rows)
}

pub fn table(runs: &[RunReport]) -> String {
    let (header, rows) = rows(runs);
    terminal(header, rows)
}

fn pct(part: u64, of: u64) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / of as f64)
    }
}

/// The read paths of every run: one row per run and path.
fn read_path_rows(runs: &[RunReport]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "scenario",
        "protocol",
        "read path",
        "reads ok/tried",
        "saw money in flight or torn",
        "p50 / p99 ms",
        "stale p50 / p99 / max ms",
    ];
    let rows = runs
        .iter()
        .flat_map(|r| {
            r.read_paths.iter().map(move |p| {
                vec![
                    r.scenario.clone(),
                    r.protocol.clone(),
                    p.path.clone(),
                    format!("{}/{}", p.completed, p.tried),
                    format!("{} ({})", pct(p.off, p.completed), p.off),
                    format!("{:.1} / {:.1}", p.p50_ms, p.p99_ms),
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        p.stale_p50_ms, p.stale_p99_ms, p.stale_max_ms
                    ),
                ]
            })
        })
        .collect();
    (header, rows)
}

/// The events protocol's runs.
fn events_rows(runs: &[RunReport]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "scenario",
        "protocol",
        "accepted",
        "settled",
        "refunds",
        "accept to settled p50 / p99 / max ms",
        "max money in flight",
        "dups delivered / suppressed",
        "events lost",
        "total kept once quiet",
        "result",
    ];
    let rows = runs
        .iter()
        .filter_map(|r| r.events.as_ref().map(|e| (r, e)))
        .map(|(r, e)| {
            vec![
                r.scenario.clone(),
                r.protocol.clone(),
                e.accepted.to_string(),
                e.settled.to_string(),
                e.refunds.to_string(),
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    e.accept_to_settled_p50_ms,
                    e.accept_to_settled_p99_ms,
                    e.accept_to_settled_max_ms
                ),
                e.in_flight_max.to_string(),
                format!(
                    "{} / {}",
                    r.duplicates_delivered,
                    r.duplicates_delivered
                        .saturating_sub(r.double_effects as u64)
                ),
                r.events_lost.to_string(),
                if r.total_conserved { "yes" } else { "NO" }.into(),
                if r.is_failure() { "FAILED" } else { "ok" }.into(),
            ]
        })
        .collect();
    (header, rows)
}

fn terminal(header: Vec<&'static str>, rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.into_iter().map(Cell::new));
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

fn markdown_table(md: &mut String, (header, rows): (Vec<&'static str>, Vec<Vec<String>>)) {
    md.push_str(&format!("| {} |\n", header.join(" | ")));
    md.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in rows {
        md.push_str(&format!("| {} |\n", r.join(" | ")));
    }
}

pub fn read_paths_table(runs: &[RunReport]) -> String {
    let (header, rows) = read_path_rows(runs);
    terminal(header, rows)
}

pub fn events_table(runs: &[RunReport]) -> String {
    let (header, rows) = events_rows(runs);
    terminal(header, rows)
}

pub fn markdown(runs: &[RunReport], cfg: &CompareConfig) -> String {
    let (header, rows) = rows(runs);
    let mut md = String::new();
    md.push_str("# 2PC, saga and events under faults\n\n");
    md.push_str(&format!(
        "Seed {}, {} s per run, {} transfer clients; readers: {} atomic, {} composed, {} read \
         model; {} participants, {} accounts, {:.0}% of transfers overdraw, {:.0}% go to a \
         closed account. Produced by `harness compare`.\n\n",
        cfg.seed,
        cfg.duration.as_secs(),
        cfg.clients,
        cfg.auditors,
        cfg.composed_readers,
        cfg.readmodel_readers,
        cfg.participants,
        cfg.accounts,
        cfg.overdraft_share * 100.0,
        cfg.refusal_share * 100.0
    ));
    md.push_str(&format!("| {} |\n", header.join(" | ")));
    md.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in rows {
        md.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    md.push_str(
        "\nColumns: *unknown* calls had no answer after they may have reached a live \
         coordinator, and in brackets how many of them the participants' records show applied; \
         *not started* calls were refused before any coordinator ran them (connection refused \
         while it was down); *checked at parts.* counts the txns (2PC) or sagas judged \
         all-or-none from the participants' own durable records, whatever their clients heard; \
         *atomicity viol.* counts txns applied at some participants and not others (2PC) or \
         sagas left half-done (saga); *lost acks* are transfers the client saw committed that \
         are not fully applied; *audits off/ok/tried*: atomic reads of every balance tried \
         (those refused while the coordinator was down are not counted), those that completed, and those whose total was not the bank's (a reader saw money in \
         flight); *audit p50/p99*: how long a completed audit took (2PC's readers wait for \
         writers); *lost updates* counts accounts whose balance differs from the acknowledged \
         transfers (n/a when some call had no answer; the bank's compensations are additive, so \
         a lost update is a bug under either protocol); *longest in \
         doubt* (2PC) is the longest a participant held a transfer prepared, and *in flight* \
         (saga) the longest from a saga's first step to its end, both from the participants' \
         records, auditors left out; *recovery* is from the last heal until committed \
         throughput is back at 80% of its pre-fault rate; *settled* from the last heal until \
         every transfer begun by then was settled at its participants; *result* is FAILED when \
         the run broke a guarantee its protocol must keep, which also fails `harness \
         compare`.\n\n",
    );
    md.push_str("## Read paths\n\n");
    markdown_table(&mut md, read_path_rows(runs));
    md.push_str(
        "\n*composed* reads every participant's Read in parallel (retrying a key a prepared txn \
         holds), *atomic 2pc* is one read-only 2PC txn, *read model* one txn-consistent query \
         of the read model. *Saw money in flight or torn*: completed reads whose total was not \
         the bank's. *Stale*: how long before a read began the first commit it does not \
         reflect had been acknowledged (from markers committed at each participant in turn).\n\n",
    );
    if runs.iter().any(|r| r.events.is_some()) {
        md.push_str("## Events protocol\n\n");
        markdown_table(&mut md, events_rows(runs));
        md.push_str(
            "\n*accepted*: debits committed; *settled*: credited, or refunded after the \
             destination refused; times from the participants' records. *Dups delivered / \
             suppressed*: events a consumer (a participant's inbox, the read model) got again, \
             and those it did not apply again. *Events lost*: changes without their event, feed \
             gaps, events a consumer never applied (must be 0).\n\n",
        );
    }
    md.push_str("## Faults injected\n\n");
    for r in runs {
        for f in &r.faults {
            md.push_str(&format!(
                "- {} / {}: {} from {} ms to {} ms\n",
                r.scenario, r.protocol, f.what, f.start_ms, f.end_ms
            ));
        }
    }
    let problems: Vec<_> = runs
        .iter()
        .flat_map(|r| {
            r.problems
                .iter()
                .map(move |p| format!("- {} / {}: {p}", r.scenario, r.protocol))
        })
        .collect();
    if !problems.is_empty() {
        md.push_str("\n## Problems found\n\n");
        md.push_str(&problems.join("\n"));
        md.push('\n');
    }
    md.push_str("\n![throughput over time](throughput.svg)\n");
    md
}

#[derive(Serialize)]
struct JsonReport<'a> {
    version: &'static str,
    seed: u64,
    duration_s: f64,
    clients: usize,
    auditors: usize,
    composed_readers: usize,
    readmodel_readers: usize,
    participants: usize,
    accounts: usize,
    refusal_share: f64,
    runs: &'a [RunReport],
}

pub fn write_all(dir: &Path, runs: &[RunReport], cfg: &CompareConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = JsonReport {
        version: env!("CARGO_PKG_VERSION"),
        seed: cfg.seed,
        duration_s: cfg.duration.as_secs_f64(),
        clients: cfg.clients,
        auditors: cfg.auditors,
        composed_readers: cfg.composed_readers,
        readmodel_readers: cfg.readmodel_readers,
        refusal_share: cfg.refusal_share,
        participants: cfg.participants,
        accounts: cfg.accounts,
        runs,
    };
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(dir.join("report.md"), markdown(runs, cfg))?;
    chart(&dir.join("throughput.svg"), runs)?;
    Ok(())
}

/// One colour per variant in the chart.
fn protocol_color(protocol: &str) -> RGBColor {
    match protocol {
        "2pc" => BLUE,
        "saga" => RED,
        "events" => RGBColor(0, 140, 60),
        "2pc-etcd" => RGBColor(130, 60, 180),
        _ => RGBColor(200, 120, 0),
    }
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// One row per scenario: on the left committed (events: accepted) transfers per second over
/// time, one line per protocol; on the right the events protocol's money in flight (taken
/// from a source, not yet at its destination). Fault windows shaded.
pub fn chart(path: &Path, runs: &[RunReport]) -> anyhow::Result<()> {
    let mut scenarios: Vec<&str> = Vec::new();
    for r in runs {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let rows = scenarios.len().max(1);
    let root = SVGBackend::new(path, (1200, 260 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((rows, 2));
    for (i, scenario) in scenarios.iter().enumerate() {
        let these: Vec<&RunReport> = runs.iter().filter(|r| r.scenario == *scenario).collect();
        let throughput = |r: &RunReport| -> Vec<f64> {
            let bucket_s = r.bucket_ms as f64 / 1000.0;
            r.timeline.iter().map(|&n| n as f64 / bucket_s).collect()
        };
        let in_flight = |r: &RunReport| -> Vec<f64> {
            r.in_flight_timeline.iter().map(|&n| n as f64).collect()
        };
        panel(&areas[2 * i], scenario, "txn/s", &these, throughput)?;
        panel(
            &areas[2 * i + 1],
            &format!("{scenario}: money in flight (events)"),
            "amount",
            &these,
            in_flight,
        )?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// One panel: `series` of each run over time, fault windows shaded.
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    runs: &[&RunReport],
    series: impl Fn(&RunReport) -> Vec<f64>,
) -> anyhow::Result<()> {
    let bucket_s = runs
        .first()
        .map(|r| r.bucket_ms as f64 / 1000.0)
        .unwrap_or(0.25);
    let x_max = runs
        .iter()
        .map(|r| r.timeline.len() as f64 * bucket_s)
        .fold(1.0, f64::max);
    let y_max = runs.iter().flat_map(|r| series(r)).fold(10.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(plot_err)?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .draw()
        .map_err(plot_err)?;
    for r in runs {
        for f in &r.faults {
            let (a, b) = (f.start_ms as f64 / 1000.0, f.end_ms as f64 / 1000.0);
            c.draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b.max(a + 0.05), y_max)],
                protocol_color(&r.protocol).mix(0.06).filled(),
            )))
            .map_err(plot_err)?;
        }
    }
    for r in runs {
        let values = series(r);
        if values.is_empty() {
            continue;
        }
        let color = protocol_color(&r.protocol);
        let points = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| ((i as f64 + 0.5) * bucket_s, v));
        c.draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(r.protocol.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}
