//! baton against a tokio + hyper + shellflip peer, side by side in one run.
//!
//! Run with: `cargo bench --bench restart` (`-- --quick` for a short smoke run, `-- --two-cores`
//! for only the supervising-process comparison, `-- --websocket` for only WebSockets across
//! restarts, `-- --layers` for only the layers (baton's two handler paths, the peer and a raw
//! epoll server, with instructions, allocations and syscalls per request), `-- --echo` for only
//! the core's I/O (baton's line echo against tokio's), `-- --hyper` for only hyper on baton
//! against hyper on tokio (feature `hyper`), `-- --soak` for the soak).
//!
//! Builds the servers with the same release profile (baton, which hands keep-alive connections
//! to its successor; baton closing them instead, `--no-hand-over`; baton on async-h1's codec;
//! the tokio peer), then for each of 3 runs and each server (interleaved, so drift hits all):
//! start-up time, idle RSS, steady keep-alive load, steady connection-per-request load, then 50 SIGHUPs under keep-alive load and 50 under
//! connection-per-request load. Servers are pinned to CPU 0 and the load generator to CPU 1
//! when the machine has two. Prints progress, then a table of medians with the ratio
//! baton/peer, also written to `target/bench/report.md`, with an SVG of latency across one
//! restart in `target/bench/restart.svg`.

mod echo;
mod hyper;
mod layers;
mod load;
mod procs;
mod raw;
mod report;
mod soak;
mod tls;
mod websocket;
mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use load::{Kind, Mode, Outcome};
use procs::{Flavor, Running};

struct Plan {
    runs: usize,
    steady: Duration,
    restarts: usize,
    keep_alive_clients: usize,
    per_request_clients: usize,
}

/// Figures of one server in one run.
#[derive(Debug, Default, Clone)]
pub struct RunFigures {
    pub values: BTreeMap<String, f64>,
    pub failures: BTreeMap<(&'static str, Kind), usize>,
    /// Failure offsets after the latest SIGHUP, ms.
    pub failure_offsets_ms: Vec<f64>,
    pub trace: Option<report::Trace>,
}

impl RunFigures {
    fn set(&mut self, key: impl Into<String>, value: f64) {
        self.values.insert(key.into(), value);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--raw-epoll-server") {
        raw::serve();
    }
    if let Some(at) = std::env::args().position(|a| a == "--load-only") {
        // Only the load generator, for profiling a server started by hand:
        // `--load-only 127.0.0.1:8080 keep-alive|per-request SECONDS`.
        let args: Vec<String> = std::env::args().skip(at + 1).collect();
        let addr = args
            .first()
            .and_then(|a| a.parse().ok())
            .expect("an address");
        let mode = match args.get(1).map(String::as_str) {
            Some("per-request") => Mode::PerRequest,
            _ => Mode::KeepAlive,
        };
        let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
        let clients = if mode == Mode::KeepAlive { 64 } else { 16 };
        let _ = procs::pin_self(1);
        let outcome = load_for(
            addr,
            None,
            mode,
            clients,
            Duration::from_secs(seconds),
            |_| {},
        );
        println!(
            "{} requests in {:.1?}, {} failed",
            outcome.samples.len(),
            outcome.elapsed,
            outcome.failures.len()
        );
        return;
    }
    if std::env::args().any(|a| a == "--soak") {
        return soak::soak();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            runs: 1,
            steady: Duration::from_secs(2),
            restarts: 10,
            keep_alive_clients: 64,
            per_request_clients: 16,
        }
    } else {
        Plan {
            runs: 3,
            steady: Duration::from_secs(4),
            restarts: 50,
            keep_alive_clients: 64,
            per_request_clients: 16,
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if std::env::args().any(|a| a == "--echo") {
        // Only the core's I/O: baton's echo against tokio's.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pinned = cores >= 2 && procs::pin_self(1);
        let echo = echo::scenarios(&root, plan.runs.max(3), pinned.then_some(0));
        println!("Machine: {}.\n{echo}", machine());
        return;
    }
    if std::env::args().any(|a| a == "--hyper") {
        // Only hyper on baton against hyper on tokio.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pinned = cores >= 2 && procs::pin_self(1);
        let section = hyper::scenarios(&root, &plan, pinned.then_some(0));
        println!("Machine: {}.\n{section}", machine());
        return;
    }
    let flavors = build(&root);
    if std::env::args().any(|a| a == "--websocket") {
        // Only WebSockets across restarts.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _ = cores >= 2 && procs::pin_self(1);
        println!("{}", websocket::scenarios(&root, &plan));
        return;
    }
    if std::env::args().any(|a| a == "--layers") {
        // Only the layers: handler paths, the peer, the raw epoll limit.
        let machine = machine();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pinned = cores >= 2 && procs::pin_self(1);
        let layers = layers::scenarios(&layers::flavors(&flavors), &plan, pinned.then_some(0));
        println!("Machine: {machine}.\n{layers}");
        let out = root.join("target/bench");
        std::fs::create_dir_all(&out).expect("create target/bench");
        std::fs::write(out.join("layers.md"), &layers).expect("write layers.md");
        return;
    }
    if std::env::args().any(|a| a == "--two-cores") {
        // Only the two-core comparison (supervising process with workers vs a 2-thread peer).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _ = cores >= 2 && procs::pin_self(1);
        let two_cores = workers::scenarios(&flavors[0], &flavors[flavors.len() - 1], &plan);
        println!("{two_cores}");
        return;
    }
    // Read before pinning: afterwards this thread sees only its own CPU.
    let machine = machine();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2 && procs::pin_self(1);
    let server_cpu = pinned.then_some(0);
    eprintln!(
        "[bench] {} run(s); {}",
        plan.runs,
        if pinned {
            "servers pinned to CPU 0, load generator to CPU 1"
        } else {
            "no CPU pinning"
        }
    );
    let started = Instant::now();
    let mut results: Vec<Vec<RunFigures>> = vec![Vec::new(); flavors.len()];
    for (run, index) in interleaved(plan.runs, flavors.len()) {
        let flavor = &flavors[index];
        eprintln!("[bench] run {}/{}: {}", run + 1, plan.runs, flavor.name);
        results[index].push(measure(flavor, &plan, server_cpu, run == 0));
    }
    let statics: Vec<BTreeMap<&'static str, f64>> =
        flavors.iter().map(|f| static_figures(f, &root)).collect();
    let table = report::table(&flavors, &results, &statics, &machine, pinned, plan.runs);
    println!("{table}");
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).expect("create target/bench");
    std::fs::write(out.join("report.md"), &table).expect("write report.md");
    let traces: Vec<(&str, &report::Trace)> = flavors
        .iter()
        .zip(&results)
        .filter_map(|(f, runs)| Some((f.name, runs.first()?.trace.as_ref()?)))
        .collect();
    std::fs::write(out.join("restart.svg"), report::svg(&traces)).expect("write restart.svg");
    let layers = layers::scenarios(&layers::flavors(&flavors), &plan, server_cpu);
    println!("{layers}");
    let two_cores = workers::scenarios(&flavors[0], &flavors[flavors.len() - 1], &plan);
    println!("{two_cores}");
    let websockets = websocket::scenarios(&root, &plan);
    println!("{websockets}");
    let tls = tls::tls_scenarios(&root, &plan, server_cpu);
    println!("{tls}");
    let echo = echo::scenarios(&root, plan.runs.max(3), server_cpu);
    println!("{echo}");
    let hyper = hyper::scenarios(&root, &plan, server_cpu);
    println!("{hyper}");
    let mut full = table.clone();
    full.push_str(&layers);
    full.push_str(&two_cores);
    full.push_str(&websockets);
    full.push_str(&tls);
    full.push_str(&echo);
    full.push_str(&hyper);
    std::fs::write(out.join("report.md"), &full).expect("write report.md");
    eprintln!(
        "[bench] done in {:.0?}; wrote {}",
        started.elapsed(),
        out.join("report.md").display()
    );
}

/// `cargo build --release` with `args` (into `target` if given), from the repository root.
fn release_build(root: &Path, args: &[&str], target: Option<&Path>, what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release"])
        .args(args)
        .current_dir(root);
    if let Some(target) = target {
        command.arg("--target-dir").arg(target);
    }
    let status = command.status().expect("run cargo");
    assert!(status.success(), "building {what} failed");
}

/// `--soak`: 200 restarts of baton under mixed load (keep-alive, a connection per request,
/// baton (the test fixture, release build) as the bench runs it by default.
fn baton_flavor(root: &Path) -> Flavor {
    Flavor {
        name: "baton",
        binary: root.join("target/release/examples/fixture"),
        prefix: "baton",
        args: Vec::new(),
        addr: "127.0.0.1:0",
        features: "",
    }
}

/// Builds the example and the peer with the same release profile.
fn build(root: &Path) -> Vec<Flavor> {
    eprintln!(
        "[bench] building baton's test fixture (hello with the tests' routes) and the tokio peer (release)"
    );
    release_build(root, &["--example", "fixture"], None, "the example");
    let peer = root.join("benches/tokio-peer");
    let manifest = peer.join("Cargo.toml");
    release_build(
        root,
        &["--manifest-path", manifest.to_str().expect("a UTF-8 path")],
        None,
        "the tokio peer",
    );
    // The same example with async-h1's codec, built into its own target directory.
    let h1_target = root.join("target/bench-async-h1");
    release_build(
        root,
        &["--example", "fixture", "--features", "async-h1"],
        Some(&h1_target),
        "the example with async-h1",
    );
    vec![
        baton_flavor(root),
        Flavor {
            name: "baton, closing",
            binary: root.join("target/release/examples/fixture"),
            prefix: "baton",
            args: vec!["--no-hand-over".into()],
            addr: "127.0.0.1:0",
            features: "",
        },
        Flavor {
            name: "baton on async-h1",
            binary: h1_target.join("release/examples/fixture"),
            prefix: "baton",
            args: vec!["--codec".into(), "async-h1".into()],
            addr: "127.0.0.1:0",
            features: "async-h1",
        },
        Flavor {
            name: "baton lean",
            binary: root.join("target/release/examples/fixture"),
            prefix: "baton",
            args: vec!["--lean".into()],
            addr: "127.0.0.1:0",
            features: "",
        },
        Flavor {
            name: "tokio peer",
            binary: peer.join("target/release/tokio-peer"),
            prefix: "peer",
            args: Vec::new(),
            addr: "127.0.0.1:0",
            features: "",
        },
    ]
}

/// (run, flavor index) for `runs` runs of `n` flavors: A B C, then C B A, so that drift over
/// the run hits all.
fn interleaved(runs: usize, n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..runs)
        .flat_map(move |run| (0..n).map(move |i| (run, if run % 2 == 1 { n - 1 - i } else { i })))
}

/// `requests` per second of server CPU (0 when none was measured).
fn per_cpu_second(requests: f64, server_cpu: f64) -> f64 {
    if server_cpu > 0.0 {
        requests / server_cpu
    } else {
        0.0
    }
}

fn measure(flavor: &Flavor, plan: &Plan, cpu: Option<usize>, keep_trace: bool) -> RunFigures {
    let mut figures = RunFigures::default();
    let spawned = Instant::now();
    let mut server = Running::start(flavor, cpu);
    figures.set(
        "startup_ms",
        first_response(server.addr, spawned).as_secs_f64() * 1e3,
    );
    figures.set(
        "idle_rss_mb",
        procs::status(server.pid, "VmRSS") as f64 / 1e6,
    );

    // Steady keep-alive.
    let cpu_before = procs::cpu(server.pid);
    let outcome = load_for(
        server.addr,
        None,
        Mode::KeepAlive,
        plan.keep_alive_clients,
        plan.steady,
        |_| {},
    );
    let server_cpu = procs::cpu(server.pid)
        .saturating_sub(cpu_before)
        .as_secs_f64();
    let mut latencies: Vec<u64> = outcome.samples.iter().map(|s| s.latency_us).collect();
    let requests = latencies.len() as f64;
    figures.set("ka_rps", requests / outcome.elapsed.as_secs_f64());
    figures.set("ka_per_cpu_s", per_cpu_second(requests, server_cpu));
    figures.set("ka_server_cpu", server_cpu / outcome.elapsed.as_secs_f64());
    figures.set("ka_p50_ms", report::percentile(&mut latencies, 50.0) / 1e3);
    figures.set("ka_p99_ms", report::percentile(&mut latencies, 99.0) / 1e3);
    figures.set("ka_max_ms", report::percentile(&mut latencies, 100.0) / 1e3);
    figures.set(
        "ka_loadgen_cpu",
        outcome.cpu.as_secs_f64() / outcome.elapsed.as_secs_f64(),
    );
    figures.set("ka_failed", outcome.failures.len() as f64);
    figures.set(
        "load_rss_mb",
        procs::status(server.pid, "VmHWM") as f64 / 1e6,
    );
    figures.set("threads", procs::status(server.pid, "Threads") as f64);
    eprintln!(
        "[bench]   keep-alive: {:.0} req/s",
        figures.values["ka_rps"]
    );

    // Steady connection per request.
    let cpu_before = procs::cpu(server.pid);
    let outcome = load_for(
        server.addr,
        None,
        Mode::PerRequest,
        plan.per_request_clients,
        plan.steady,
        |_| {},
    );
    let server_cpu = procs::cpu(server.pid)
        .saturating_sub(cpu_before)
        .as_secs_f64();
    let mut latencies: Vec<u64> = outcome.samples.iter().map(|s| s.latency_us).collect();
    let requests = latencies.len() as f64;
    figures.set("pr_rps", requests / outcome.elapsed.as_secs_f64());
    figures.set("pr_per_cpu_s", per_cpu_second(requests, server_cpu));
    figures.set("pr_server_cpu", server_cpu / outcome.elapsed.as_secs_f64());
    figures.set("pr_p99_ms", report::percentile(&mut latencies, 99.0) / 1e3);
    figures.set(
        "pr_loadgen_cpu",
        outcome.cpu.as_secs_f64() / outcome.elapsed.as_secs_f64(),
    );
    figures.set("pr_failed", outcome.failures.len() as f64);
    // The process's peak so far: after the keep-alive load, and now the churn (each
    // connection's idle deadlines, buffers and registrations come and go).
    figures.set("pr_rss_mb", procs::status(server.pid, "VmHWM") as f64 / 1e6);
    eprintln!(
        "[bench]   per-request: {:.0} req/s, peak RSS {:.2} MB",
        figures.values["pr_rps"], figures.values["pr_rss_mb"]
    );

    // The mechanism alone: restarts with no load, observed from an idle CPU.
    let mut idle: Vec<u64> = (0..10)
        .map(|_| {
            let restart = server.restart();
            (restart.listening_at - restart.signal_at).as_micros() as u64
        })
        .collect();
    figures.set("idle_handoff_ms", report::percentile(&mut idle, 50.0) / 1e3);

    for (mode, clients, tag) in [
        (Mode::KeepAlive, plan.keep_alive_clients, "rka"),
        (Mode::PerRequest, plan.per_request_clients, "rpr"),
    ] {
        restart_scenario(
            &mut server,
            &mut figures,
            mode,
            clients,
            tag,
            plan.restarts,
            keep_trace,
        );
    }
    figures
}

/// Polls until the server answers; the time since it was spawned.
fn first_response(addr: SocketAddr, spawned: Instant) -> Duration {
    use std::io::{Read, Write};
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ =
                stream.write_all(b"GET /hello HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
            let mut reply = Vec::new();
            let _ = stream.read_to_end(&mut reply);
            if reply.starts_with(b"HTTP/1.1 200") {
                return spawned.elapsed();
            }
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(10),
            "no response from {addr}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs load on its own thread while `during` runs on this one, for at least `duration`.
fn load_for(
    addr: SocketAddr,
    tls: Option<Arc<futures_rustls::rustls::ClientConfig>>,
    mode: Mode,
    clients: usize,
    duration: Duration,
    during: impl FnOnce(Instant),
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || load::run(addr, tls, mode, clients, start, flag));
    during(start);
    let left = duration.saturating_sub(start.elapsed());
    std::thread::sleep(left);
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("load generator panicked")
}

fn restart_scenario(
    server: &mut Running,
    figures: &mut RunFigures,
    mode: Mode,
    clients: usize,
    tag: &'static str,
    restarts: usize,
    keep_trace: bool,
) {
    let mut timeline: Vec<procs::Restart> = Vec::new();
    let mut start_at = None;
    let outcome = load_for(server.addr, None, mode, clients, Duration::ZERO, |start| {
        start_at = Some(start);
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..restarts {
            timeline.push(server.restart());
            std::thread::sleep(Duration::from_millis(40));
        }
        std::thread::sleep(Duration::from_millis(200));
    });
    let start = start_at.expect("load started");
    let us = |t: Instant| t.duration_since(start).as_micros() as u64;
    let windows: Vec<(u64, u64)> = timeline
        .iter()
        .map(|r| (us(r.signal_at), us(r.gone_at) + 10_000))
        .collect();
    let in_window = |t: u64| windows.iter().any(|&(a, b)| t >= a && t <= b);
    let (mut inside, mut outside): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
    for sample in &outcome.samples {
        if in_window(sample.start_us) {
            &mut inside
        } else {
            &mut outside
        }
        .push(sample.latency_us);
    }
    let since_signal = |at: fn(&procs::Restart) -> Instant| -> Vec<u64> {
        timeline
            .iter()
            .map(|r| (at(r) - r.signal_at).as_micros() as u64)
            .collect()
    };
    let mut ready = since_signal(|r| r.ready_at);
    let mut listening = since_signal(|r| r.listening_at);
    let mut exit = since_signal(|r| r.gone_at);
    figures.set(key(tag, "failed"), outcome.failures.len() as f64);
    figures.set(key(tag, "requests"), outcome.samples.len() as f64);
    let figures_ms: [(&str, &mut Vec<u64>, f64); 5] = [
        ("ready_ms", &mut ready, 50.0),
        ("handoff_ms", &mut listening, 50.0),
        ("exit_ms", &mut exit, 50.0),
        ("win_p999_ms", &mut inside, 99.9),
        ("steady_p999_ms", &mut outside, 99.9),
    ];
    for (name, values, p) in figures_ms {
        figures.set(key(tag, name), report::percentile(values, p) / 1e3);
    }
    // The maxima of the windows, sorted by `percentile` above.
    figures.set(
        key(tag, "win_max_ms"),
        inside.last().copied().unwrap_or(0) as f64 / 1e3,
    );
    figures.set(
        key(tag, "steady_max_ms"),
        outside.last().copied().unwrap_or(0) as f64 / 1e3,
    );
    // Every client's first connect is not a reconnect.
    let reconnects = outcome.connects.saturating_sub(clients as u64);
    figures.set(
        key(tag, "reconnects_per_restart"),
        reconnects as f64 / restarts.max(1) as f64,
    );
    for failure in &outcome.failures {
        *figures.failures.entry((tag, failure.kind)).or_default() += 1;
        if let Some(signal) = windows.iter().rev().find(|w| w.0 <= failure.at_us) {
            figures
                .failure_offsets_ms
                .push((failure.at_us - signal.0) as f64 / 1e3);
        }
    }
    eprintln!(
        "[bench]   {restarts} restarts ({}): {} failed of {} requests, handoff median {:.2} ms",
        if mode == Mode::KeepAlive {
            "keep-alive"
        } else {
            "per-request"
        },
        outcome.failures.len(),
        outcome.samples.len() + outcome.failures.len(),
        figures.values[&key(tag, "handoff_ms")]
    );
    if keep_trace && mode == Mode::KeepAlive {
        if let Some(chosen) = timeline.get(timeline.len() / 2) {
            figures.trace = Some(report::Trace::around(
                &outcome,
                us(chosen.signal_at),
                us(chosen.ready_at),
                us(chosen.gone_at),
            ));
        }
    }
}

/// The key of a per-scenario figure.
fn key(tag: &str, name: &str) -> String {
    format!("{tag}_{name}")
}

/// Binary size and crate count.
fn static_figures(flavor: &Flavor, root: &Path) -> BTreeMap<&'static str, f64> {
    let mut values = BTreeMap::new();
    let size = std::fs::metadata(&flavor.binary)
        .map(|m| m.len())
        .unwrap_or(0);
    values.insert("binary_kb", size as f64 / 1024.0);
    let manifest = if flavor.prefix == "peer" {
        root.join("benches/tokio-peer/Cargo.toml")
    } else {
        root.join("Cargo.toml")
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = Command::new(cargo)
        .args([
            "tree",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(manifest)
        .args(["--features", flavor.features])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split(' ').next())
        .filter(|l| !l.is_empty())
        .collect();
    crates.sort_unstable();
    crates.dedup();
    values.insert("crates", crates.len() as f64);
    values
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, Linux {}", kernel.trim())
}
