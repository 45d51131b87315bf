//! The core's I/O path: baton's `examples/echo.rs` (the core alone, reading and writing
//! `baton::Stream`; its connections on smol's global executor, and with `--local` on the
//! core's own thread, `Baton::serve_local`) against the same line echo on tokio
//! `current_thread` (`benches/tokio-peer/src/bin/echo.rs`). 32 connections ping-pong one line
//! at a time. Per round and server: lines per second of server CPU (200,000 lines), and, when
//! `perf` is installed, syscalls per echoed line besides epoll waits (20,000 lines, counted with
//! `perf stat -e raw_syscalls:sys_enter`, which does not slow the server). Rounds interleave
//! the two servers; the table gives medians and ranges.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::procs::{self, Flavor, Running};

const CONNECTIONS: usize = 32;
const CPU_LINES: usize = 200_000;
const SYSCALL_LINES: usize = 20_000;

/// The servers: baton's echo (the core alone) both ways, and tokio's (last).
pub fn flavors(root: &Path) -> [Flavor; 3] {
    crate::release_build(
        root,
        &["--no-default-features", "--example", "echo"],
        None,
        "the echo example",
    );
    crate::release_build(
        root,
        &[
            "--manifest-path",
            "benches/tokio-peer/Cargo.toml",
            "--bin",
            "echo",
        ],
        None,
        "the tokio echo",
    );
    let baton = |name, args: &[&str]| Flavor {
        name,
        binary: root.join("target/release/examples/echo"),
        prefix: "baton",
        args: args.iter().map(|a| a.to_string()).collect(),
        addr: "127.0.0.1:0",
        features: "",
    };
    [
        baton("baton echo", &[]),
        baton("baton echo --local", &["--local"]),
        Flavor {
            name: "tokio echo",
            binary: root.join("benches/tokio-peer/target/release/echo"),
            prefix: "peer",
            args: Vec::new(),
            addr: "127.0.0.1:0",
            features: "",
        },
    ]
}

/// `lines` lines over `CONNECTIONS` connections, each waiting for its answer before the next;
/// panics on a wrong answer.
fn ping_pong(addr: SocketAddr, lines: usize) {
    let each = lines / CONNECTIONS;
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                let mut answer = String::new();
                for n in 0..each {
                    writer
                        .write_all(format!("line {n}\n").as_bytes())
                        .expect("write");
                    answer.clear();
                    reader.read_line(&mut answer).expect("read");
                    assert!(
                        answer.ends_with(&format!(": line {n}\n")),
                        "line {n} answered {answer:?}"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a client thread");
    }
}

/// Syscalls of `pid` while `lines` are echoed, and how many of them were epoll waits; `None`
/// without a working `perf`.
fn syscalls(pid: u32, addr: SocketAddr, lines: usize) -> Option<(f64, f64)> {
    let events = "raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,\
                  syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_pwait2";
    let perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", events, "-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    // perf attaches asynchronously: give it a moment (it counts nothing before).
    std::thread::sleep(std::time::Duration::from_millis(300));
    ping_pong(addr, lines);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(perf.id() as i32)?,
        rustix::process::Signal::INT,
    );
    let output = perf.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&output.stderr);
    let count = |event: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.contains(event))
            .and_then(|l| l.split(',').next()?.trim().parse().ok())
    };
    let all = count("raw_syscalls:sys_enter")?;
    let waits = ["epoll_wait,", "epoll_pwait,", "epoll_pwait2,"]
        .iter()
        .filter_map(|e| count(&format!("sys_enter_{e}")))
        .sum::<f64>();
    Some((all, waits))
}

/// One round of one server: (lines per CPU-second, syscalls per line besides epoll waits).
fn round(flavor: &Flavor, cpu: Option<usize>) -> (f64, Option<f64>) {
    let server = Running::start(flavor, cpu);
    // Warm: connections, allocator, page cache.
    ping_pong(server.addr, 3_200);
    let before = procs::cpu(server.pid);
    let started = Instant::now();
    ping_pong(server.addr, CPU_LINES);
    let wall = started.elapsed();
    let used = procs::cpu(server.pid).saturating_sub(before);
    let per_cpu = crate::per_cpu_second(CPU_LINES as f64, used.as_secs_f64());
    eprintln!(
        "[bench] {}: {CPU_LINES} lines in {wall:.2?}, server CPU {used:.2?}",
        flavor.name
    );
    let per_line = syscalls(server.pid, server.addr, SYSCALL_LINES)
        .map(|(all, waits)| (all - waits) / SYSCALL_LINES as f64);
    (per_cpu, per_line)
}

fn median_range(values: &[f64]) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    format!(
        "{median:.2} ({:.2}-{:.2})",
        sorted[0],
        sorted[sorted.len() - 1]
    )
}

/// The section, as Markdown.
pub fn scenarios(root: &Path, runs: usize, cpu: Option<usize>) -> String {
    let flavors = flavors(root);
    let mut per_cpu: [Vec<f64>; 3] = Default::default();
    let mut per_line: [Vec<f64>; 3] = Default::default();
    for (run, index) in crate::interleaved(runs, flavors.len()) {
        eprintln!(
            "[bench] echo run {}/{runs}: {}",
            run + 1,
            flavors[index].name
        );
        let (cpu_rate, syscalls) = round(&flavors[index], cpu);
        per_cpu[index].push(cpu_rate);
        per_line[index].extend(syscalls);
    }
    let ratios = |baton: &[f64]| -> Vec<f64> {
        baton
            .iter()
            .zip(&per_cpu[2])
            .map(|(baton, peer)| if *peer > 0.0 { baton / peer } else { 0.0 })
            .collect()
    };
    let mut out = String::from(
        "\n## The core's I/O: line echo, 32 ping-pong connections\n\n\
         | | lines per server CPU-second (thousands) | ratio to tokio (per round) | syscalls per line besides epoll waits |\n\
         |---|---|---|---|\n",
    );
    let thousands = |v: &[f64]| median_range(&v.iter().map(|x| x / 1000.0).collect::<Vec<_>>());
    let rows = [
        "baton echo (core alone, smol's global executor)",
        "baton echo --local (core alone, tasks on the core's thread)",
    ];
    for (index, row) in rows.iter().enumerate() {
        out.push_str(&format!(
            "| {row} | {} | {} | {} |\n",
            thousands(&per_cpu[index]),
            median_range(&ratios(&per_cpu[index])),
            median_range(&per_line[index])
        ));
    }
    out.push_str(&format!(
        "| tokio echo (current_thread) | {} | 1.00 | {} |\n",
        thousands(&per_cpu[2]),
        median_range(&per_line[2])
    ));
    out.push_str(&format!(
        "\n{runs} interleaved rounds; medians (ranges). Syscalls need `perf` (Debian's linux-perf); \
         n/a without it.\n"
    ));
    out
}
