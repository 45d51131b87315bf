//! Two cores, two ways: baton's supervising process with two workers (`--workers 2`) against
//! the peer on tokio's multi_thread runtime with two threads, neither pinned (the load
//! generator keeps CPU 1 of its own pinning, so both share the cores with it alike).
//!
//! Per flavor and run: keep-alive throughput per server CPU-second (all the server's
//! processes), p99, RSS of all its processes; restarts under keep-alive load (failed requests,
//! reconnects, p99.9 across the restart period); and one serving process SIGKILLed under a
//! connection-per-request load: refused connections in the next second (a worker for baton,
//! the one process for the peer).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::load::{Kind, Mode};
use crate::procs::{self, Flavor, Running};
use crate::{Plan, interleaved, load_for, report};

const RESTARTS: usize = 5;

/// The table rows, as (label, key).
const ROWS: [(&str, &str); 9] = [
    ("keep-alive, 64 conns: req/s ↑", "rps"),
    ("keep-alive: requests per server CPU-second ↑", "per_cpu_s"),
    ("keep-alive: p99 latency (ms) ↓", "p99_ms"),
    ("RSS of all server processes under load (MB) ↓", "rss_mb"),
    (
        "of which the supervising process (MB) ↓",
        "supervisor_rss_mb",
    ),
    (
        "5 restarts under keep-alive load: failed requests ↓",
        "restart_failed",
    ),
    (
        "5 restarts under keep-alive load: reconnects per restart ↓",
        "reconnects",
    ),
    (
        "restarts: p99.9 latency over the restart period (ms) ↓",
        "restart_p999_ms",
    ),
    (
        "a serving process SIGKILLed under load: refused connections ↓",
        "refused",
    ),
];

/// Runs the scenario and returns its section of the report.
pub fn scenarios(baton: &Flavor, peer: &Flavor, plan: &Plan) -> String {
    let flavors = [
        Flavor {
            name: "baton, 2 workers",
            args: vec!["--workers".into(), "2".into()],
            binary: baton.binary.clone(),
            ..*baton
        },
        Flavor {
            name: "tokio peer, 2 threads",
            args: vec!["--threads".into(), "2".into()],
            binary: peer.binary.clone(),
            ..*peer
        },
    ];
    let mut values: Vec<BTreeMap<&str, Vec<f64>>> = vec![BTreeMap::new(), BTreeMap::new()];
    for (run, index) in interleaved(plan.runs, flavors.len()) {
        eprintln!(
            "[bench] two cores, run {}/{}: {}",
            run + 1,
            plan.runs,
            flavors[index].name
        );
        for (key, value) in measure(&flavors[index], plan, index == 0) {
            values[index].entry(key).or_default().push(value);
        }
    }
    let sorted = |v: Option<&Vec<f64>>| {
        let mut v = v.cloned().unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v
    };
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    let cell = |v: &[f64]| match (v.first(), v.last()) {
        (Some(lo), Some(hi)) if v.len() > 1 => format!("{:.2} ({lo:.2}–{hi:.2})", median(v)),
        _ => format!("{:.2}", median(v)),
    };
    let mut out = format!(
        "\n## Two cores: baton --workers 2 vs the peer on a 2-thread runtime\n\n\
         Neither server pinned; medians (and ranges) of {} interleaved run(s).\n\n\
         | figure | baton, 2 workers | tokio peer, 2 threads | baton / peer |\n|---|---:|---:|---:|\n",
        plan.runs
    );
    for (label, key) in ROWS {
        let (a, b) = (sorted(values[0].get(key)), sorted(values[1].get(key)));
        let (ma, mb) = (median(&a), median(&b));
        let ratio = if mb != 0.0 && ma.is_finite() && mb.is_finite() {
            format!("{:.2}", ma / mb)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "| {label} | {} | {} | {ratio} |\n",
            cell(&a),
            cell(&b)
        ));
    }
    out
}

/// The server's processes now: the first process and, for baton, its live workers.
fn processes(server: &Running, supervised: bool) -> Vec<u32> {
    let mut pids = vec![server.pid];
    if supervised {
        pids.extend(workers(server).into_iter().filter(|&pid| procs::alive(pid)));
    }
    pids
}

/// Every worker pid the supervising process reported ready.
fn workers(server: &Running) -> Vec<u32> {
    server
        .lines()
        .iter()
        .filter_map(|l| l.split_once(": worker ")?.1.split(' ').next()?.parse().ok())
        .collect()
}

fn measure(flavor: &Flavor, plan: &Plan, supervised: bool) -> Vec<(&'static str, f64)> {
    let mut figures = Vec::new();
    let mut server = Running::start(flavor, None);
    if supervised {
        server.wait_count(": worker ", 2);
    }
    let cpu = |pids: &[u32]| -> f64 { pids.iter().map(|&p| procs::cpu(p).as_secs_f64()).sum() };
    let pids = processes(&server, supervised);
    let before = cpu(&pids);
    let outcome = load_for(
        server.addr,
        None,
        Mode::KeepAlive,
        plan.keep_alive_clients,
        plan.steady,
        |_| {},
    );
    let used = cpu(&pids) - before;
    let mut latencies: Vec<u64> = outcome.samples.iter().map(|s| s.latency_us).collect();
    let requests = latencies.len() as f64;
    figures.push(("rps", requests / outcome.elapsed.as_secs_f64()));
    figures.push(("per_cpu_s", crate::per_cpu_second(requests, used)));
    figures.push(("p99_ms", report::percentile(&mut latencies, 99.0) / 1e3));
    let rss: u64 = pids.iter().map(|&p| procs::status(p, "VmRSS")).sum();
    figures.push(("rss_mb", rss as f64 / 1e6));
    if supervised {
        figures.push((
            "supervisor_rss_mb",
            procs::status(server.pid, "VmRSS") as f64 / 1e6,
        ));
    }

    // Restarts under keep-alive load.
    let started = Instant::now();
    let outcome = load_for(
        server.addr,
        None,
        Mode::KeepAlive,
        plan.keep_alive_clients,
        Duration::ZERO,
        |_| {
            std::thread::sleep(Duration::from_millis(200));
            for generation in 2..2 + RESTARTS {
                if supervised {
                    procs::kill(server.pid, rustix::process::Signal::HUP);
                    server.wait_count(&format!("restarted: generation {generation},"), 1);
                } else {
                    server.restart();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(200));
        },
    );
    let mut latencies: Vec<u64> = outcome.samples.iter().map(|s| s.latency_us).collect();
    figures.push(("restart_failed", outcome.failures.len() as f64));
    let reconnects = outcome
        .connects
        .saturating_sub(plan.keep_alive_clients as u64);
    figures.push(("reconnects", reconnects as f64 / RESTARTS as f64));
    figures.push((
        "restart_p999_ms",
        report::percentile(&mut latencies, 99.9) / 1e3,
    ));
    eprintln!(
        "[bench]   {RESTARTS} restarts in {:.1?}: {} failed",
        started.elapsed(),
        outcome.failures.len()
    );

    // One serving process SIGKILLed under a connection per request: refused in the next second.
    let victim = match supervised {
        true => *workers(&server)
            .iter()
            .rev()
            .find(|&&p| procs::alive(p))
            .expect("a live worker"),
        false => server.pid,
    };
    let outcome = load_for(
        server.addr,
        None,
        Mode::PerRequest,
        plan.per_request_clients,
        Duration::from_millis(1300),
        |_| {
            std::thread::sleep(Duration::from_millis(300));
            procs::kill(victim, rustix::process::Signal::KILL);
        },
    );
    let refused = outcome
        .failures
        .iter()
        .filter(|f| f.kind == Kind::Refused)
        .count();
    figures.push(("refused", refused as f64));
    eprintln!(
        "[bench]   SIGKILL {victim} under load: {refused} refused, {} failed in all",
        outcome.failures.len()
    );
    figures
}
