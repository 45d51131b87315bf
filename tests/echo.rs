//! `examples/echo.rs`, a line echo on baton's core with no HTTP: its connections move to each
//! successor at a line boundary, in a single process and with workers, and run on smol's
//! global executor, not on the core's thread (with `--local`, on the core's thread).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{DEADLINE, Server, example, wait_gone};

fn echo(args: &[&str]) -> Server {
    let mut command = Command::new(example("echo"));
    command.args(["--addr", "127.0.0.1:0"]).args(args);
    Server::start(command)
}

/// One client on one TCP connection, sending `line N` every 20 ms and reading each answer.
struct Client {
    stop: Arc<AtomicBool>,
    /// The pid that answered the latest line.
    latest: Arc<AtomicU32>,
    thread: std::thread::JoinHandle<Result<Vec<(u64, u32)>, String>>,
}

impl Client {
    fn start(addr: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let latest = Arc::new(AtomicU32::new(0));
        let answered = latest.clone();
        let thread = std::thread::spawn(move || {
            let stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut answers = Vec::new();
            let mut n = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                writer
                    .write_all(format!("line {n}\n").as_bytes())
                    .map_err(|e| format!("line {n}: {e}"))?;
                let mut answer = String::new();
                match reader.read_line(&mut answer) {
                    Ok(0) => return Err(format!("line {n}: the connection closed")),
                    Err(e) => return Err(format!("line {n}: {e}")),
                    Ok(_) => {}
                }
                let (pid, text) = answer
                    .trim_end()
                    .split_once(": ")
                    .ok_or_else(|| format!("line {n}: {answer:?}"))?;
                if text != format!("line {n}") {
                    return Err(format!("line {n} answered {answer:?}"));
                }
                let pid = pid.parse().map_err(|_| format!("pid in {answer:?}"))?;
                answered.store(pid, Ordering::Relaxed);
                answers.push((n, pid));
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(answers)
        });
        Client {
            stop,
            latest,
            thread,
        }
    }

    /// Waits until `pid` has answered one of this client's lines (what a test would
    /// otherwise sleep for before the next restart).
    fn answered_by(&self, pid: u32) {
        self.answered_by_one_of(&[pid]);
    }

    /// Waits until one of `pids` has answered the latest of this client's lines.
    fn answered_by_one_of(&self, pids: &[u32]) {
        let deadline = std::time::Instant::now() + DEADLINE;
        while !pids.contains(&self.latest.load(Ordering::Relaxed)) {
            assert!(
                std::time::Instant::now() < deadline && !self.thread.is_finished(),
                "none of {pids:?} answered a line"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> Vec<(u64, u32)> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join().unwrap() {
            Ok(answers) => answers,
            Err(error) => panic!("the client failed: {error}"),
        }
    }
}

/// Every line answered once, in order, on the one connection; the answering pid moves along
/// the restarts and never back.
fn assert_lines_moved(answers: &[(u64, u32)], order: &[u32]) {
    for (i, (n, _)) in answers.iter().enumerate() {
        assert_eq!(*n, i as u64, "a line was lost or repeated");
    }
    let mut at = 0;
    for (n, pid) in answers {
        let place = order.iter().position(|p| p == pid);
        let place = place.unwrap_or_else(|| panic!("line {n} answered by {pid}, not a server"));
        assert!(
            place >= at,
            "line {n} answered by {pid}, an earlier process"
        );
        at = place;
    }
    let answered: std::collections::HashSet<u32> = answers.iter().map(|a| a.1).collect();
    assert_eq!(
        answered.len(),
        order.len(),
        "answered by {answered:?} of {order:?}"
    );
    assert_eq!(answers.last().map(|a| a.1), order.last().copied());
}

#[test]
fn a_connection_keeps_every_line_across_ten_restarts_of_a_single_process() {
    single_process_restarts(&[]);
}

/// `--local`: connections as tasks on the core's thread (`Baton::serve_local`).
#[test]
fn a_local_connection_keeps_every_line_across_ten_restarts_of_a_single_process() {
    single_process_restarts(&["--local"]);
}

fn single_process_restarts(args: &[&str]) {
    let server = echo(args);
    let client = Client::start(server.addr);
    let mut order = vec![server.pid];
    let mut pid = server.pid;
    for _ in 0..10 {
        client.answered_by(pid);
        let next = server.restart(pid);
        assert!(wait_gone(pid, DEADLINE), "{}", server.dump());
        order.push(next);
        pid = next;
    }
    client.answered_by(pid);
    let answers = client.finish();
    assert_lines_moved(&answers, &order);
}

#[test]
fn a_connection_keeps_every_line_across_ten_restarts_of_a_supervising_process() {
    supervised_restarts(&[]);
}

#[test]
fn a_local_connection_keeps_every_line_across_ten_restarts_of_a_supervising_process() {
    supervised_restarts(&["--local"]);
}

fn supervised_restarts(args: &[&str]) {
    let server = echo(&[&["--workers", "1"], args].concat());
    let mut order = server.workers_ready(1, 1);
    let client = Client::start(server.addr);
    for generation in 2..=11 {
        client.answered_by(*order.last().unwrap());
        server.restart_workers(generation);
        let [worker] = server.workers_ready(generation, 1)[..] else {
            panic!("one worker")
        };
        assert!(wait_gone(*order.last().unwrap(), DEADLINE));
        order.push(worker);
    }
    client.answered_by(*order.last().unwrap());
    let answers = client.finish();
    assert_lines_moved(&answers, &order);
}

/// With two workers, each connection moves to the new worker in its old worker's place.
#[test]
fn connections_of_two_workers_keep_every_line_across_restarts() {
    let server = echo(&["--workers", "2"]);
    let mut generations = vec![server.workers_ready(1, 2)];
    let clients: Vec<Client> = (0..4).map(|_| Client::start(server.addr)).collect();
    for generation in 2..=6 {
        // Each connection answered by this generation before it retires.
        let current = generations.last().unwrap();
        clients.iter().for_each(|c| c.answered_by_one_of(current));
        server.restart_workers(generation);
        generations.push(server.workers_ready(generation, 2));
    }
    let last = generations.last().unwrap();
    clients.iter().for_each(|c| c.answered_by_one_of(last));
    let all: Vec<u32> = generations.concat();
    for client in clients {
        let answers = client.finish();
        for (i, (n, pid)) in answers.iter().enumerate() {
            assert_eq!(*n, i as u64, "a line was lost or repeated");
            assert!(all.contains(pid), "line {n} answered by {pid}");
        }
        // The connection moved through every generation.
        for generation in &generations {
            assert!(
                answers.iter().any(|(_, pid)| generation.contains(pid)),
                "no line answered by {generation:?}: {answers:?}"
            );
        }
    }
}

#[test]
fn connections_run_on_the_global_executors_threads() {
    let server = echo(&[]);
    let thread = serving_thread(&server);
    // The core runs on the main thread; the connection on one of smol's.
    assert!(!thread.is_empty() && thread != "main", "{thread:?}");
    let threads = common::status_field(server.pid, "Threads");
    assert!(threads >= 2, "{threads} threads");
}

#[test]
fn local_connections_run_on_the_cores_thread() {
    let server = echo(&["--local"]);
    assert_eq!(serving_thread(&server), "main");
}

/// The name of the thread that answers a new connection's `?thread`.
fn serving_thread(server: &Server) -> String {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream).write_all(b"?thread\n").unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    let thread = answer.trim_end().split("thread ").nth(1);
    thread.unwrap_or_default().to_owned()
}

#[test]
fn without_hand_over_a_restart_says_goodbye_and_closes_cleanly() {
    let server = echo(&["--no-hand-over"]);
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream).write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("{}: hello\n", server.pid));
    let next = server.restart(server.pid);
    answer.clear();
    reader.read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("{}: goodbye\n", server.pid));
    answer.clear();
    assert_eq!(reader.read_line(&mut answer).unwrap(), 0, "{answer:?}");
    assert!(wait_gone(server.pid, DEADLINE));
    // The successor serves new connections.
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    (&stream).write_all(b"again\n").unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    assert_eq!(answer, format!("{next}: again\n"));
}
