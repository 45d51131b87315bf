//! Turning run figures into the report: medians over runs, the table with ratios, the SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::RunFigures;
use crate::load::Outcome;
use crate::procs::Flavor;

/// The `p`th percentile (nearest rank) of `values` in the same unit; 0 if empty.
pub fn percentile(values: &mut [u64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1] as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Requests around one restart, relative to its SIGHUP, in ms.
#[derive(Debug, Clone)]
pub struct Trace {
    pub points: Vec<(f64, f64)>,
    pub failures: Vec<f64>,
    pub ready: f64,
    pub gone: f64,
}

const BEFORE_MS: f64 = 50.0;
const AFTER_MS: f64 = 250.0;

impl Trace {
    pub fn around(outcome: &Outcome, signal_us: u64, ready_us: u64, gone_us: u64) -> Trace {
        let rel = |us: u64| (us as f64 - signal_us as f64) / 1e3;
        let points = outcome
            .samples
            .iter()
            .map(|s| (rel(s.start_us), s.latency_us as f64 / 1e3))
            .filter(|&(t, _)| (-BEFORE_MS..=AFTER_MS).contains(&t))
            .collect();
        let failures = outcome
            .failures
            .iter()
            .map(|f| rel(f.at_us))
            .filter(|t| (-BEFORE_MS..=AFTER_MS).contains(t))
            .collect();
        Trace {
            points,
            failures,
            ready: rel(ready_us),
            gone: rel(gone_us),
        }
    }
}

/// (label, key, better): `better` is "lower", "higher" or "" (informational).
const ROWS: &[(&str, &str, &str)] = &[
    ("keep-alive, 64 conns: req/s", "ka_rps", "higher"),
    (
        "keep-alive: requests per server CPU-second",
        "ka_per_cpu_s",
        "higher",
    ),
    ("keep-alive: server CPU (cores)", "ka_server_cpu", ""),
    ("keep-alive: p50 latency (ms)", "ka_p50_ms", "lower"),
    ("keep-alive: p99 latency (ms)", "ka_p99_ms", "lower"),
    ("keep-alive: max latency (ms)", "ka_max_ms", "lower"),
    (
        "keep-alive: load generator CPU (cores)",
        "ka_loadgen_cpu",
        "",
    ),
    (
        "connection per request, 16 clients: req/s",
        "pr_rps",
        "higher",
    ),
    (
        "connection per request: requests per server CPU-second",
        "pr_per_cpu_s",
        "higher",
    ),
    (
        "connection per request: server CPU (cores)",
        "pr_server_cpu",
        "",
    ),
    (
        "connection per request: p99 latency (ms)",
        "pr_p99_ms",
        "lower",
    ),
    (
        "connection per request: load generator CPU (cores)",
        "pr_loadgen_cpu",
        "",
    ),
    ("idle RSS (MB)", "idle_rss_mb", "lower"),
    ("peak RSS under load (MB)", "load_rss_mb", "lower"),
    (
        "peak RSS after connection churn (a connection per request, MB)",
        "pr_rss_mb",
        "lower",
    ),
    ("threads under load", "threads", "lower"),
    ("stripped binary (KiB)", "binary_kb", "lower"),
    ("unique crates (cargo tree, normal deps)", "crates", "lower"),
    ("start-up to first response (ms)", "startup_ms", "lower"),
    (
        "handoff without load, SIGHUP -> successor accepting (median ms)",
        "idle_handoff_ms",
        "lower",
    ),
    (
        "restarts, keep-alive: failed requests per run",
        "rka_failed",
        "lower",
    ),
    ("restarts, keep-alive: requests per run", "rka_requests", ""),
    (
        "restarts, keep-alive: reconnects per restart",
        "rka_reconnects_per_restart",
        "",
    ),
    (
        "restarts, keep-alive: old process sees the successor ready (median ms)",
        "rka_ready_ms",
        "lower",
    ),
    (
        "restarts, keep-alive: handoff, SIGHUP -> successor accepting (median ms)",
        "rka_handoff_ms",
        "lower",
    ),
    (
        "restarts, keep-alive: old process gone after SIGHUP (median ms)",
        "rka_exit_ms",
        "lower",
    ),
    (
        "restarts, keep-alive: p99.9 latency in restart windows (ms)",
        "rka_win_p999_ms",
        "lower",
    ),
    (
        "restarts, keep-alive: max latency in restart windows (ms)",
        "rka_win_max_ms",
        "lower",
    ),
    (
        "restarts, keep-alive: p99.9 latency outside windows (ms)",
        "rka_steady_p999_ms",
        "lower",
    ),
    (
        "restarts, keep-alive: max latency outside windows (ms)",
        "rka_steady_max_ms",
        "lower",
    ),
    (
        "restarts, per request: failed requests per run",
        "rpr_failed",
        "lower",
    ),
    (
        "restarts, per request: requests per run",
        "rpr_requests",
        "",
    ),
    (
        "restarts, per request: old process sees the successor ready (median ms)",
        "rpr_ready_ms",
        "lower",
    ),
    (
        "restarts, per request: handoff, SIGHUP -> successor accepting (median ms)",
        "rpr_handoff_ms",
        "lower",
    ),
    (
        "restarts, per request: old process gone after SIGHUP (median ms)",
        "rpr_exit_ms",
        "lower",
    ),
    (
        "restarts, per request: p99.9 latency in restart windows (ms)",
        "rpr_win_p999_ms",
        "lower",
    ),
    (
        "restarts, per request: max latency in restart windows (ms)",
        "rpr_win_max_ms",
        "lower",
    ),
    (
        "restarts, per request: p99.9 latency outside windows (ms)",
        "rpr_steady_p999_ms",
        "lower",
    ),
    (
        "restarts, per request: max latency outside windows (ms)",
        "rpr_steady_max_ms",
        "lower",
    ),
];

pub fn table(
    flavors: &[Flavor],
    results: &[Vec<RunFigures>],
    statics: &[BTreeMap<&'static str, f64>],
    machine: &str,
    pinned: bool,
    runs: usize,
) -> String {
    let value = |index: usize, key: &str| -> f64 {
        if let Some(v) = statics[index].get(key) {
            return *v;
        }
        median(
            results[index]
                .iter()
                .filter_map(|r| r.values.get(key).copied())
                .collect(),
        )
    };
    let mut out = String::new();
    let _ = writeln!(out, "## baton vs tokio + hyper + shellflip\n");
    let _ = writeln!(
        out,
        "Machine: {machine}. {}. Median of {runs} interleaved run(s). Ratio = baton (own codec) / tokio peer.\n",
        if pinned {
            "Servers pinned to CPU 0, load generator to CPU 1"
        } else {
            "No CPU pinning"
        }
    );
    // The first flavor is baton, the last the peer; the ratio compares those two.
    let peer = flavors.len() - 1;
    let names: Vec<&str> = flavors.iter().map(|f| f.name).collect();
    let _ = writeln!(out, "| figure | {} | baton / peer |", names.join(" | "));
    let _ = writeln!(out, "|---|{}---:|", "---:|".repeat(flavors.len()));
    for (label, key, better) in ROWS {
        let values: Vec<f64> = (0..flavors.len()).map(|i| value(i, key)).collect();
        let (a, b) = (values[0], values[peer]);
        let ratio = if b != 0.0 && a.is_finite() && b.is_finite() {
            format!("{:.2}", a / b)
        } else {
            "-".into()
        };
        let note = match *better {
            "higher" => " ↑",
            "lower" => " ↓",
            _ => "",
        };
        let cells: Vec<String> = values.iter().map(|v| fmt(*v)).collect();
        let _ = writeln!(out, "| {label}{note} | {} | {ratio} |", cells.join(" | "));
    }
    let _ = writeln!(out, "\n↑ higher is better, ↓ lower is better.\n");
    for (index, flavor) in flavors.iter().enumerate() {
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        let mut offsets: Vec<f64> = Vec::new();
        for run in &results[index] {
            for ((tag, kind), count) in &run.failures {
                *kinds.entry(format!("{tag}/{kind:?}")).or_default() += count;
            }
            offsets.extend(&run.failure_offsets_ms);
        }
        if kinds.is_empty() {
            let _ = writeln!(
                out,
                "- {}: no failed request in any restart run.",
                flavor.name
            );
        } else {
            offsets.sort_by(f64::total_cmp);
            let _ = writeln!(
                out,
                "- {}: failures by scenario/kind over all runs: {kinds:?}; {} ms to {} ms after the latest SIGHUP (median {} ms).",
                flavor.name,
                fmt(offsets[0]),
                fmt(offsets[offsets.len() - 1]),
                fmt(offsets[offsets.len() / 2])
            );
        }
    }
    out
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Latency of every request around one restart, one panel per server, SIGHUP at x = 0.
pub fn svg(traces: &[(&str, &Trace)]) -> String {
    let (width, panel, left, top) = (900.0, 260.0, 60.0, 30.0);
    let height = top + panel * traces.len() as f64 + 40.0;
    let max_latency = traces
        .iter()
        .flat_map(|(_, t)| t.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    // Log scale from 0.01 ms to the max.
    let floor = 0.01f64;
    let y_of = |ms: f64, base: f64| {
        let f = (ms.max(floor).ln() - floor.ln()) / (max_latency.ln() - floor.ln());
        base + panel - 30.0 - f * (panel - 50.0)
    };
    let plot_width = width - left - 20.0;
    let x_of = |t: f64| left + (t + BEFORE_MS) / (BEFORE_MS + AFTER_MS) * plot_width;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18">Latency of each request (log scale, ms) vs. its start time relative to SIGHUP (ms), keep-alive load</text>"#
    );
    for (i, (name, trace)) in traces.iter().enumerate() {
        let base = top + panel * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}" font-weight="bold">{name}</text>"#,
            base + 14.0
        );
        let (y0, y1) = (y_of(max_latency, base), y_of(floor, base));
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{y0}" width="{plot_width}" height="{}" fill="none" stroke="#999"/>"##,
            y1 - y0
        );
        for tick in [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0] {
            if tick <= max_latency {
                let y = y_of(tick, base);
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{tick}</text>"##,
                    left - 4.0,
                    y + 4.0
                );
            }
        }
        for t in [-50.0, 0.0, 50.0, 100.0, 150.0, 200.0, 250.0] {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{t}</text>"##,
                x_of(t),
                y1 + 14.0
            );
        }
        let step = (trace.points.len() / 4000).max(1);
        for &(t, ms) in trace.points.iter().step_by(step) {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="1.2" fill="#2a6fdb" fill-opacity="0.5"/>"##,
                x_of(t),
                y_of(ms, base)
            );
        }
        // Labels on separate rows: the three lines are often a few pixels apart.
        for (row, (at, color, label)) in [
            (0.0, "#000", "SIGHUP"),
            (trace.ready, "#1a9850", "ready"),
            (trace.gone, "#d73027", "old gone"),
        ]
        .into_iter()
        .enumerate()
        {
            let x = x_of(at.clamp(-BEFORE_MS, AFTER_MS));
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="{color}" stroke-dasharray="4 3"/>"#
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" fill="{color}">{label}</text>"#,
                x + 3.0,
                y0 + 12.0 + 14.0 * row as f64
            );
        }
        for &t in &trace.failures {
            let x = x_of(t);
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{}" fill="red" text-anchor="middle">×</text>"#,
                y0 + 30.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" fill="red">{} failed requests (×)</text>"#,
            left + plot_width - 4.0,
            y0 + 14.0,
            trace.failures.len()
        );
    }
    s.push_str("</svg>\n");
    s
}
