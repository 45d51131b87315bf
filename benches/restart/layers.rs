//! The layers, told apart: baton with its http-types handler, baton's lean handler path, the
//! tokio peer, and a raw epoll server with a fixed response (the limit, `raw.rs`).
//!
//! Timed, per run and interleaved: keep-alive (64 connections) and a connection per request
//! (16 clients), requests per server CPU-second and p99. Counted, once per server (counts
//! hardly vary between runs, unlike timings on a VM):
//! - syscalls per keep-alive request and per connection, from the kernel's syscall
//!   tracepoints (`perf stat -e 'syscalls:sys_enter_*'` attached to the server);
//! - user-space instructions per keep-alive request (valgrind's callgrind), and heap
//!   allocations per request (valgrind's DHAT), under the same keep-alive load (64
//!   connections) for `SHORT` and for `LONG`: the difference in the count over the
//!   difference in requests answered, so start-up and shutdown cancel; and instructions per
//!   connection the same way with a connection per request (16 clients);
//! - the http-types floor: instructions and allocations of one request's http-types objects
//!   and the fixture's handler with no server (`fixture http-types-floor ROUNDS`,
//!   tests/fixture/floor.rs; two round counts, the difference over the rounds), set against
//!   the http-types path, the lean path and the peer.
//!
//! A count whose tool is missing (no `perf`, no `valgrind`) shows as "-".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::load::Mode;
use crate::procs::{self, Flavor, Running};
use crate::{Plan, interleaved, load_for, per_cpu_second, report};

/// How long the load runs in the short and the long valgrind run.
const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(3);
/// Rounds of the short and the long run of the http-types floor.
const FLOOR_SHORT: u64 = 10_000;
const FLOOR_LONG: u64 = 40_000;
/// How long each syscall count runs its load.
const COUNTED: Duration = Duration::from_millis(1500);

/// The flavors of this section: baton, baton lean and the peer from the main list, and the
/// raw server (this bench's own binary).
pub fn flavors(all: &[Flavor]) -> Vec<Flavor> {
    let pick = |name: &str| {
        all.iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no flavor {name:?}"))
            .clone()
    };
    vec![
        pick("baton"),
        pick("baton lean"),
        pick("tokio peer"),
        Flavor {
            name: "raw epoll (limit)",
            binary: std::env::current_exe().expect("the bench's own path"),
            prefix: "raw",
            args: vec!["--raw-epoll-server".into()],
            addr: "127.0.0.1:0",
            features: "",
        },
    ]
}

/// Runs the section and returns its part of the report.
pub fn scenarios(flavors: &[Flavor], plan: &Plan, cpu: Option<usize>) -> String {
    let mut timed: Vec<BTreeMap<&str, Vec<f64>>> = vec![BTreeMap::new(); flavors.len()];
    for (run, index) in interleaved(plan.runs, flavors.len()) {
        let flavor = &flavors[index];
        eprintln!(
            "[bench] layers run {}/{}: {}",
            run + 1,
            plan.runs,
            flavor.name
        );
        let server = Running::start(flavor, cpu);
        for (mode, clients, tag) in [
            (Mode::KeepAlive, plan.keep_alive_clients, "ka"),
            (Mode::PerRequest, plan.per_request_clients, "pr"),
        ] {
            let before = procs::cpu(server.pid);
            let outcome = load_for(server.addr, None, mode, clients, plan.steady, |_| {});
            let used = procs::cpu(server.pid).saturating_sub(before).as_secs_f64();
            let mut latencies: Vec<u64> = outcome.samples.iter().map(|s| s.latency_us).collect();
            let n = latencies.len() as f64;
            let entry = &mut timed[index];
            let per_cpu = per_cpu_second(n, used);
            entry.entry(key(tag, "per_cpu")).or_default().push(per_cpu);
            let p99 = report::percentile(&mut latencies, 99.0) / 1e3;
            entry.entry(key(tag, "p99")).or_default().push(p99);
            let failed = outcome.failures.len() as f64;
            entry.entry(key(tag, "failed")).or_default().push(failed);
            eprintln!("[bench]   {tag}: {per_cpu:.0} requests per CPU-second");
        }
    }
    let mut counted: Vec<Counts> = Vec::new();
    for flavor in flavors {
        eprintln!("[bench] layers, counting: {}", flavor.name);
        counted.push(Counts {
            syscalls_ka: syscalls(flavor, Mode::KeepAlive, 64, cpu),
            syscalls_pr: syscalls(flavor, Mode::PerRequest, 16, cpu),
            instructions: valgrind_difference(flavor, Tool::Callgrind, Mode::KeepAlive, 64),
            instructions_pr: valgrind_difference(flavor, Tool::Callgrind, Mode::PerRequest, 16),
            allocations: valgrind_difference(flavor, Tool::Dhat, Mode::KeepAlive, 64),
        });
    }
    eprintln!("[bench] layers, counting: the http-types floor");
    let floor = Floor {
        instructions: floor_difference(&flavors[0], Tool::Callgrind),
        allocations: floor_difference(&flavors[0], Tool::Dhat),
    };
    render(flavors, &timed, &counted, &floor, plan.runs)
}

/// What the http-types objects of one request cost alone (`fixture http-types-floor`).
struct Floor {
    instructions: Option<f64>,
    allocations: Option<f64>,
}

fn key(tag: &str, what: &str) -> &'static str {
    match (tag, what) {
        ("ka", "per_cpu") => "ka_per_cpu",
        ("ka", "p99") => "ka_p99",
        ("ka", _) => "ka_failed",
        (_, "per_cpu") => "pr_per_cpu",
        (_, "p99") => "pr_p99",
        _ => "pr_failed",
    }
}

/// What was counted for one server.
struct Counts {
    /// Per keep-alive request: the total, and per syscall.
    syscalls_ka: Option<BTreeMap<String, f64>>,
    /// Per connection (one request each).
    syscalls_pr: Option<BTreeMap<String, f64>>,
    instructions: Option<f64>,
    /// Per connection (one request each).
    instructions_pr: Option<f64>,
    allocations: Option<f64>,
}

/// Syscalls per request (`mode` keep-alive) or per connection (a connection per request),
/// by name, with `"total"`; `None` if `perf` cannot count them here.
fn syscalls(
    flavor: &Flavor,
    mode: Mode,
    clients: usize,
    cpu: Option<usize>,
) -> Option<BTreeMap<String, f64>> {
    let server = Running::start(flavor, cpu);
    let out = scratch(&format!("perf-{}-{}.csv", flavor.prefix, server.pid));
    let mut perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "syscalls:sys_enter_*", "-p"])
        .arg(server.pid.to_string())
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // perf reports nothing until it is attached; it is by the time it created its output.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let outcome = load_for(server.addr, None, mode, clients, COUNTED, |_| {});
    procs::kill(perf.id(), Signal::INT);
    let _ = perf.wait();
    drop(server);
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let requests = outcome.samples.len() as f64;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split(',');
        let (Some(count), Some(_), Some(event)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(count), Some(name)) = (
            count.parse::<f64>(),
            event.strip_prefix("syscalls:sys_enter_"),
        ) else {
            continue;
        };
        if count > 0.0 {
            counts.insert(name.to_owned(), count / requests);
        }
    }
    if counts.is_empty() || requests == 0.0 {
        return None;
    }
    let total = counts.values().sum();
    counts.insert("total".to_owned(), total);
    Some(counts)
}

#[derive(Clone, Copy)]
enum Tool {
    Callgrind,
    Dhat,
}

/// Per request: (count in the `LONG` run − count in the `SHORT` run) / (requests answered
/// in the one − in the other), under `mode` load from `clients`.
fn valgrind_difference(flavor: &Flavor, tool: Tool, mode: Mode, clients: usize) -> Option<f64> {
    let (short, short_requests) = under_valgrind(flavor, tool, (mode, clients), SHORT)?;
    let (long, long_requests) = under_valgrind(flavor, tool, (mode, clients), LONG)?;
    let requests = long_requests
        .checked_sub(short_requests)
        .filter(|&n| n > 0)?;
    Some((long - short) / requests as f64)
}

/// Runs `flavor` under valgrind's `tool` with `mode` load from `clients` for `load`, stops it
/// with SIGTERM, and returns the tool's total (instructions executed by callgrind, heap
/// blocks allocated by DHAT) and the requests answered.
fn under_valgrind(
    flavor: &Flavor,
    tool: Tool,
    (mode, clients): (Mode, usize),
    load: Duration,
) -> Option<(f64, usize)> {
    let out = scratch(&format!(
        "valgrind-{}-{}.out",
        flavor.prefix,
        load.as_millis()
    ));
    let tool_args = valgrind_args(tool, &out)?;
    let server = Running::start_wrapped(flavor, None, "valgrind", &tool_args);
    let outcome = load_for(server.addr, None, mode, clients, load, |_| {});
    let answered = outcome.samples.len();
    procs::kill(server.pid, Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while procs::alive(server.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = match tool {
        Tool::Callgrind => callgrind_total(&out),
        Tool::Dhat => {
            server.wait_count("Total:", 1);
            server.lines().iter().find_map(|l| dhat_blocks(l))
        }
    };
    let _ = std::fs::remove_file(&out);
    assert!(
        outcome.failures.is_empty(),
        "{} under valgrind: {} failed requests",
        flavor.name,
        outcome.failures.len()
    );
    Some((total?, answered))
}

/// valgrind's arguments for `tool`, writing its output to `out`; `None` without valgrind.
fn valgrind_args(tool: Tool, out: &Path) -> Option<Vec<String>> {
    let available = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        return None;
    }
    Some(match tool {
        Tool::Callgrind => vec![
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
        ],
        Tool::Dhat => vec![
            "--tool=dhat".to_owned(),
            format!("--dhat-out-file={}", out.display()),
        ],
    })
}

/// Instructions of all threads in callgrind's output `out`: its last `summary:` or
/// `totals:` line.
fn callgrind_total(out: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(out).ok()?;
    text.lines()
        .filter_map(|l| l.strip_prefix("summary:").or(l.strip_prefix("totals:")))
        .filter_map(|n| n.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
}

/// Heap blocks allocated, from DHAT's `==pid== Total:     1,234 bytes in 56 blocks` line.
fn dhat_blocks(line: &str) -> Option<f64> {
    let rest = line.split("Total:").nth(1)?;
    let blocks = rest.split(" in ").nth(1)?.split_whitespace().next()?;
    blocks.replace(',', "").parse::<f64>().ok()
}

/// The http-types floor (`fixture http-types-floor`, tests/fixture/floor.rs) of `flavor`'s
/// binary under `tool`, per request: the difference between its long and its short run over
/// the difference in rounds.
fn floor_difference(flavor: &Flavor, tool: Tool) -> Option<f64> {
    let count = |rounds: u64| -> Option<f64> {
        let out = scratch(&format!("valgrind-floor-{rounds}.out"));
        let args = valgrind_args(tool, &out)?;
        let output = Command::new("valgrind")
            .args(&args)
            .arg(&flavor.binary)
            .args(["http-types-floor", &rounds.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("run valgrind");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "the http-types floor under valgrind failed: {stderr}"
        );
        let total = match tool {
            Tool::Callgrind => callgrind_total(&out),
            Tool::Dhat => stderr.lines().find_map(dhat_blocks),
        };
        let _ = std::fs::remove_file(&out);
        total
    };
    let (short, long) = (count(FLOOR_SHORT)?, count(FLOOR_LONG)?);
    Some((long - short) / (FLOOR_LONG - FLOOR_SHORT) as f64)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/layers");
    std::fs::create_dir_all(&dir).expect("create target/bench/layers");
    dir.join(name)
}

fn render(
    flavors: &[Flavor],
    timed: &[BTreeMap<&str, Vec<f64>>],
    counted: &[Counts],
    floor: &Floor,
    runs: usize,
) -> String {
    let mut out = String::from("\n## The layers: handler paths, the peer, the limit\n\n");
    let _ = writeln!(
        out,
        "Timed rows: median (min–max) of {runs} interleaved run(s), servers pinned as above. \
         Counted rows: once per server (syscalls from the kernel's tracepoints with `perf \
         stat`; instructions and heap allocations with valgrind, under keep-alive load with \
         64 connections, or a connection per request from 16 clients where the row says so: \
         the difference between a {LONG:?} and a {SHORT:?} run over the difference in \
         requests). Ratios against the tokio peer.\n"
    );
    let names: Vec<&str> = flavors.iter().map(|f| f.name).collect();
    let _ = writeln!(
        out,
        "| figure | {} | baton / peer | lean / peer |",
        names.join(" | ")
    );
    let _ = writeln!(out, "|---|{}---:|---:|", "---:|".repeat(flavors.len()));
    let peer = flavors
        .iter()
        .position(|f| f.prefix == "peer")
        .expect("the peer");
    let ratios = |values: &[Option<f64>]| -> String {
        let ratio = |i: usize| match (values[i], values[peer]) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        format!("{} | {}", ratio(0), ratio(1))
    };
    let timed_rows = [
        (
            "keep-alive, 64 conns: requests per server CPU-second ↑",
            "ka_per_cpu",
            0,
        ),
        ("keep-alive: p99 latency (ms) ↓", "ka_p99", 2),
        (
            "connection per request, 16 clients: requests per server CPU-second ↑",
            "pr_per_cpu",
            0,
        ),
        ("connection per request: p99 latency (ms) ↓", "pr_p99", 2),
        ("failed requests (keep-alive + per request) ↓", "failed", 0),
    ];
    for (label, key, decimals) in timed_rows {
        let series: Vec<Vec<f64>> = timed
            .iter()
            .map(|t| {
                if key == "failed" {
                    let ka = t.get("ka_failed").cloned().unwrap_or_default();
                    let pr = t.get("pr_failed").cloned().unwrap_or_default();
                    ka.iter().zip(&pr).map(|(a, b)| a + b).collect()
                } else {
                    t.get(key).cloned().unwrap_or_default()
                }
            })
            .collect();
        let medians: Vec<Option<f64>> = series.iter().map(|s| median(s)).collect();
        let cells: Vec<String> = series
            .iter()
            .map(|s| {
                let (Some(m), Some(lo), Some(hi)) = (
                    median(s),
                    s.iter().copied().reduce(f64::min),
                    s.iter().copied().reduce(f64::max),
                ) else {
                    return "-".to_owned();
                };
                if s.len() > 1 {
                    format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
                } else {
                    format!("{m:.decimals$}")
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            cells.join(" | "),
            ratios(&medians)
        );
    }
    let counted_rows: [(&str, Pick, usize); 5] = [
        (
            "keep-alive: user-space instructions per request ↓",
            |c| c.instructions,
            0,
        ),
        (
            "connection per request, 16 clients: user-space instructions per connection ↓",
            |c| c.instructions_pr,
            0,
        ),
        (
            "keep-alive: heap allocations per request ↓",
            |c| c.allocations,
            2,
        ),
        (
            "keep-alive: syscalls per request ↓",
            |c| c.syscalls_ka.as_ref()?.get("total").copied(),
            2,
        ),
        (
            "connection per request: syscalls per connection ↓",
            |c| c.syscalls_pr.as_ref()?.get("total").copied(),
            2,
        ),
    ];
    for (label, value, decimals) in counted_rows {
        let values: Vec<Option<f64>> = counted.iter().map(value).collect();
        let cells: Vec<String> = values
            .iter()
            .map(|v| v.map_or("-".to_owned(), |v| format!("{v:.decimals$}")))
            .collect();
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            cells.join(" | "),
            ratios(&values)
        );
    }
    let _ = writeln!(
        out,
        "\n{}",
        floor_line(floor, &counted[0], &counted[1], &counted[peer])
    );
    for (what, pick) in [
        (
            "Syscalls per keep-alive request",
            (|c: &Counts| c.syscalls_ka.as_ref()) as fn(&Counts) -> Option<&BTreeMap<String, f64>>,
        ),
        (
            "Syscalls per connection (one request each)",
            |c: &Counts| c.syscalls_pr.as_ref(),
        ),
    ] {
        let _ = writeln!(out, "\n{what}:\n");
        for (flavor, counts) in flavors.iter().zip(counted) {
            let Some(counts) = pick(counts) else {
                let _ = writeln!(out, "- {}: not counted (no `perf`)", flavor.name);
                continue;
            };
            let mut named: Vec<(&String, &f64)> =
                counts.iter().filter(|(n, _)| *n != "total").collect();
            named.sort_by(|a, b| b.1.total_cmp(a.1));
            let list: Vec<String> = named
                .iter()
                .filter(|(_, v)| **v >= 0.005)
                .map(|(n, v)| format!("{n} {v:.2}"))
                .collect();
            let _ = writeln!(out, "- {}: {}", flavor.name, list.join(", "));
        }
    }
    out
}

/// The http-types floor against the http-types path (`baton`), the lean path and the peer.
fn floor_line(floor: &Floor, baton: &Counts, lean: &Counts, peer: &Counts) -> String {
    let (Some(objects), Some(blocks)) = (floor.instructions, floor.allocations) else {
        return "The http-types floor: not counted (no `valgrind`).".to_owned();
    };
    let mut line = format!(
        "The http-types floor (`fixture http-types-floor`: one keep-alive request's http-types \
         objects and the fixture's handler, no server): {objects:.0} user-space instructions \
         and {blocks:.2} heap allocations per request"
    );
    if let (Some(total), Some(lean), Some(peer)) =
        (baton.instructions, lean.instructions, peer.instructions)
    {
        let _ = write!(
            line,
            "; {:.2}x the peer's whole request. The http-types path beyond it: {:.0} \
             instructions (the lean path in all: {lean:.0}); at best, floor + lean = {:.2}x \
             the peer",
            objects / peer,
            total - objects,
            (objects + lean) / peer
        );
    }
    if let Some(total) = baton.allocations {
        let _ = write!(
            line,
            "; allocations beyond it: {:.2} per request",
            total - blocks
        );
    }
    line.push('.');
    line
}

/// One counted figure of a server.
type Pick = fn(&Counts) -> Option<f64>;

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}
