//! Taking over from, and handing over to, servers that are not baton: the Go original (and any
//! Go server doing as it does: re-execute its own path with no arguments, `LISTENER` for
//! `:port`, fd 3, drain at once) and endless (`ENDLESS_CONTINUE`, `ENDLESS_SOCKET_ORDER`, fds
//! from 3, the parent waiting for the child's SIGTERM).
//!
//! No Go toolchain is needed: this test binary is its own stand-in for those programs
//! (`harness = false`). With `STANDIN=go` or `STANDIN=endless`, or started by baton with a
//! `LISTENER` (as a Go successor would be), it behaves like one: a tiny HTTP server answering
//! `Hello from <pid>!` on every path, restarting as that program does on SIGHUP. Otherwise it
//! runs the tests below, each against the real `hello` example.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{DEADLINE, Load, Scratch, Server, Signal, example, signal, wait_gone};

static HUP: AtomicBool = AtomicBool::new(false);
static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: libc::c_int) {
    HUP.store(true, Ordering::SeqCst);
}

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

fn main() {
    let standin = std::env::var("STANDIN").ok();
    if standin.as_deref() == Some("endless") {
        return endless_standin();
    }
    if standin.as_deref() == Some("go") || std::env::var_os("LISTENER").is_some() {
        return go_standin();
    }
    let tests: [(&str, fn()); 3] = [
        (
            "the_go_original_hands_over_to_hello_without_a_failed_request",
            the_go_original_hands_over_to_hello_without_a_failed_request,
        ),
        (
            "endless_hands_over_to_hello_which_tells_its_parent",
            endless_hands_over_to_hello_which_tells_its_parent,
        ),
        (
            "hello_hands_over_to_a_go_successor_that_cannot_report_ready",
            hello_hands_over_to_a_go_successor_that_cannot_report_ready,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let outcome = std::panic::catch_unwind(test);
        println!(
            "test {name} ... {}",
            if outcome.is_ok() { "ok" } else { "FAILED" }
        );
        failed += usize::from(outcome.is_err());
    }
    println!(
        "test result: {}. {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    std::process::exit(i32::from(failed > 0));
}

/// Serves `Hello from <pid>!` on `listener` until `stop`, counting requests in flight.
fn serve(listener: TcpListener, stop: Arc<AtomicBool>, in_flight: Arc<AtomicUsize>) {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let pid = std::process::id();
        while !stop.load(Ordering::SeqCst) {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            in_flight.fetch_add(1, Ordering::SeqCst);
            let in_flight = in_flight.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, pid);
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

fn answer(stream: TcpStream, pid: u32) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let body = format!("Hello from {pid}!\n");
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    (&stream).write_all(reply.as_bytes())
}

/// One line on stderr in one write: processes share it, and lines must not interleave.
fn log(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Signals the stand-ins act on.
fn handle_signals() {
    // SAFETY: installs handlers that only store to atomics (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGHUP, on_hup as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
    }
}

/// Logs that the stand-in listens (in baton's format: the test's process helper waits for
/// that line) and serves on a copy of `listener`; returns its stop flag and in-flight count.
fn start_serving(
    listener: &TcpListener,
    shown: &str,
    what: &str,
) -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
    let pid = std::process::id();
    log(&format!(
        "baton[{pid}]: listening on {shown} (fd {}, {what} stand-in)",
        listener.as_raw_fd()
    ));
    let (stop, in_flight) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    serve(
        listener.try_clone().unwrap(),
        stop.clone(),
        in_flight.clone(),
    );
    (stop, in_flight)
}

/// Waits for SIGHUP or SIGTERM; a stand-in that hears neither within a minute exits, so that
/// none outlives its test even if the test's guard missed it.
fn wait_for_a_signal() {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !HUP.load(Ordering::SeqCst) && !TERM.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until nothing is in flight, as a server draining "at once" does.
fn drain(stop: &AtomicBool, in_flight: &AtomicUsize) {
    stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(2);
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `path` with `listener` as fd 3 (no CLOEXEC), `args` and `env`.
fn exec_with_fd3(path: &str, args: &[String], env: &[(&str, String)], listener: &TcpListener) {
    let fd = listener.as_raw_fd();
    let mut command = Command::new(path);
    command.args(args).env_remove("STANDIN");
    for (name, value) in env {
        command.env(name, value);
    }
    // SAFETY: dup2 and fcntl only, between fork and exec. dup2 clears CLOEXEC on fd 3, but
    // dup2(3, 3) does nothing, so then CLOEXEC is cleared by hand.
    unsafe {
        command.pre_exec(move || {
            let placed = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if placed == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Not waited for: the stand-in exits once it has drained, and its child (the successor)
    // is reparented, as with the real programs.
    #[allow(clippy::zombie_processes)]
    let _successor = command.spawn().expect("start the successor");
}

/// The Go original: listens on `:port` (or takes `LISTENER`'s fd), and on SIGHUP
/// re-executes its own path with no arguments and `LISTENER`, then drains at once.
fn go_standin() {
    handle_signals();
    let listener = match std::env::var("LISTENER") {
        Ok(value) => {
            let fd: i32 = value
                .split("\"fd\":")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .expect("an fd in LISTENER");
            // SAFETY: the parent passed this fd as LISTENER says, for this process to take.
            unsafe { TcpListener::from_raw_fd(fd) }
        }
        Err(_) => TcpListener::bind("0.0.0.0:0").unwrap(),
    };
    let port = listener.local_addr().unwrap().port();
    let (stop, in_flight) = start_serving(&listener, &format!("127.0.0.1:{port}"), "go");
    wait_for_a_signal();
    if HUP.load(Ordering::SeqCst) {
        let path = std::env::args().next().unwrap();
        let description = format!(r#"{{"addr":":{port}","fd":3,"filename":"tcp:[::]:{port}->"}}"#);
        exec_with_fd3(&path, &[], &[("LISTENER", description)], &listener);
    }
    drain(&stop, &in_flight);
}

/// endless: on SIGHUP starts its own path with the same arguments, `ENDLESS_CONTINUE=1`,
/// `ENDLESS_SOCKET_ORDER` and the socket as fd 3, and serves on until the child's SIGTERM.
fn endless_standin() {
    handle_signals();
    let pid = std::process::id();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .iter()
        .skip_while(|a| *a != "--addr")
        .nth(1)
        .cloned()
        .expect("--addr");
    let listener = TcpListener::bind(&addr).unwrap();
    let local = listener.local_addr().unwrap().to_string();
    let (stop, in_flight) = start_serving(&listener, &local, "endless");
    wait_for_a_signal();
    if HUP.load(Ordering::SeqCst) && !TERM.load(Ordering::SeqCst) {
        let path = std::env::args().next().unwrap();
        let env = [
            ("ENDLESS_CONTINUE", "1".to_owned()),
            ("ENDLESS_SOCKET_ORDER", addr.clone()),
        ];
        exec_with_fd3(&path, &args, &env, &listener);
        // endless serves on until the child says it serves.
        let deadline = Instant::now() + DEADLINE;
        while !TERM.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        log(&format!(
            "endless stand-in {pid}: got SIGTERM from the child"
        ));
    }
    drain(&stop, &in_flight);
}

fn binary(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("a binary")
}

/// Waits for a `listening on` line of a process other than `first`, and returns its pid.
fn successor_listening(server: &Server, first: u32) -> u32 {
    server.wait_for("the successor's listening line", |lines| {
        lines
            .iter()
            .filter_map(|l| common::log::parse(l))
            .filter(|l| l.pid != first && l.listening().is_some())
            .map(|l| l.pid)
            .next()
    })
}

fn the_go_original_hands_over_to_hello_without_a_failed_request() {
    let scratch = Scratch::new("interop-go");
    let me = std::env::current_exe().unwrap();
    let path = scratch.install("server", &binary(&me));
    let mut command = Command::new(&path);
    command.env("STANDIN", "go");
    let server = Server::start(command);
    let load = Load::per_request(server.addr, 2);
    load.wait_served_by(server.pid);
    // The deploy: hello in place of the Go binary, then the Go program's own SIGHUP restart.
    scratch.install("server", &binary(&example("fixture")));
    signal(server.pid, Signal::HUP);
    let hello = successor_listening(&server, server.pid);
    let line = server.wait_line(&format!("baton[{hello}]: listening on "));
    assert!(line.contains("inherited"), "{line}");
    assert!(
        wait_gone(server.pid, DEADLINE),
        "the Go stand-in still runs"
    );
    load.wait_served_by(hello);
    let stats = load.finish();
    stats.assert_no_failures();
    assert!(
        stats.pids.contains(&server.pid) && stats.pids.contains(&hello),
        "{:?}",
        stats.pids
    );
}

fn endless_hands_over_to_hello_which_tells_its_parent() {
    let scratch = Scratch::new("interop-endless");
    let me = std::env::current_exe().unwrap();
    let path = scratch.install("server", &binary(&me));
    let mut command = Command::new(&path);
    command
        .env("STANDIN", "endless")
        .args(["--addr", "127.0.0.1:0"]);
    let server = Server::start(command);
    let load = Load::per_request(server.addr, 2);
    load.wait_served_by(server.pid);
    scratch.install("server", &binary(&example("fixture")));
    signal(server.pid, Signal::HUP);
    let hello = successor_listening(&server, server.pid);
    server.wait_line(&format!(
        "baton[{hello}]: serving endless's sockets: sent SIGTERM to its process {}",
        server.pid
    ));
    server.wait_line("got SIGTERM from the child");
    assert!(
        wait_gone(server.pid, DEADLINE),
        "the endless stand-in still runs"
    );
    load.wait_served_by(hello);
    let stats = load.finish();
    stats.assert_no_failures();
    assert!(stats.pids.contains(&hello), "{:?}", stats.pids);
}

fn hello_hands_over_to_a_go_successor_that_cannot_report_ready() {
    let scratch = Scratch::new("interop-go-successor");
    let path = scratch.install("server", &binary(&example("fixture")));
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0", "--ready-after", "300ms"]);
    let server = Server::start(command);
    let load = Load::per_request(server.addr, 2);
    load.wait_served_by(server.pid);
    let me = std::env::current_exe().unwrap();
    scratch.install("server", &binary(&me));
    let started = Instant::now();
    signal(server.pid, Signal::HUP);
    let go = successor_listening(&server, server.pid);
    server.wait_line(&format!("baton[{}]: child {go} ready", server.pid));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "taken for ready before the settle time"
    );
    assert!(wait_gone(server.pid, DEADLINE), "hello still runs");
    load.wait_served_by(go);
    let stats = load.finish();
    stats.assert_no_failures();
    assert!(stats.pids.contains(&go), "{:?}", stats.pids);
}
