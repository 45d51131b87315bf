//! A graceful shutdown (SIGTERM with a request in flight), in each process model (one process,
//! a supervising process with workers, behind an init): it stops accepting at once, so a new
//! connection is refused (or, in the instant before, accepted and answered), never accepted
//! and left; what was in flight is answered; a request the drain cuts says the server is
//! shutting down; every process's report says shutdown.

mod common;

use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEADLINE, Failure, Server, Signal, example, signal};

/// What a new connection got during the drain.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Refused,
    /// Accepted, then reset (a connection still in the queue when the socket closed).
    Reset,
    Answered(u16),
    /// Accepted and left: no answer within 2 s, or a close without one.
    Left(String),
}

fn try_once(addr: SocketAddr) -> Outcome {
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(stream) => stream,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) => return Outcome::Left(format!("connect: {e}")),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut writer = &stream;
    let request = format!("GET /hello HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if writer.write_all(request.as_bytes()).is_err() {
        return Outcome::Reset;
    }
    match common::read_reply(&mut BufReader::new(&stream)) {
        Ok(reply) => Outcome::Answered(reply.status),
        Err(Failure::Reset) => Outcome::Reset,
        Err(other) => Outcome::Left(format!("{other:?}")),
    }
}

/// SIGTERM to `server` (whose `/slow` request is in flight), then new connections every 20 ms
/// for half a second: none is left unanswered, and the request in flight is answered.
fn a_shutdown_refuses_or_answers(mut server: Server) {
    let addr = server.addr;
    let slow = std::thread::spawn(move || common::get(addr, "/slow?ms=1500"));
    // The request reaches the handler; then a process logs that it has one to drain, below.
    server.wait_in_flight("/slow", 1);
    signal(server.pid, Signal::TERM);
    server.wait_line("draining 1 connections (1 requests in flight)");
    let mut outcomes = Vec::new();
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        outcomes.push(try_once(addr));
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Left(_)))
        .collect();
    assert!(
        left.is_empty(),
        "accepted and left: {left:?}\n{}",
        server.dump()
    );
    assert!(
        outcomes.contains(&Outcome::Refused),
        "never refused: {outcomes:?}"
    );
    let reply = slow.join().unwrap().expect("the request in flight");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    // Every process that served reports a shutdown, none a retirement.
    assert!(server.count("on_exit: Shutdown { signal: Term }") >= 1);
    assert_eq!(server.count("on_exit: Retired"), 0, "{}", server.dump());
}

#[test]
fn a_single_process_shutdown_refuses_or_answers_and_never_leaves_a_connection() {
    a_shutdown_refuses_or_answers(Server::hello(&[]));
}

#[test]
fn a_supervised_shutdown_refuses_or_answers_and_never_leaves_a_connection() {
    let server = Server::hello(&["--workers", "2"]);
    server.workers_ready(1, 2);
    a_shutdown_refuses_or_answers(server);
}

#[test]
fn behind_an_init_a_shutdown_refuses_or_answers_and_never_leaves_a_connection() {
    let mut command = Command::new(example("fixture"));
    command.args(["--addr", "127.0.0.1:0"]);
    let server = Server::start_behind_init(command);
    server.workers_ready(1, 1);
    a_shutdown_refuses_or_answers(server);
}

/// The supervising process runs `on_exit` too, and its workers report the shutdown, not a
/// retirement: an `on_exit` hook can tell a shutdown from a restart.
#[test]
fn every_process_of_a_supervised_shutdown_reports_it() {
    let mut server = Server::hello(&["--workers", "2"]);
    let workers = server.workers_ready(1, 2);
    signal(server.pid, Signal::TERM);
    assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    for pid in workers.iter().chain([&server.pid]) {
        let line = format!("hello[{pid}]: on_exit: Shutdown {{ signal: Term }}");
        server.wait_line(&line);
    }
    // The supervising process says so too: stopped, not "retired" (as a restart's are).
    for pid in &workers {
        server.wait_line(&format!(
            "worker {pid} exited (exit status: 0), stopped by the shutdown"
        ));
    }
    assert_eq!(server.count("retired"), 0, "{}", server.dump());
}

/// A request the shutdown's drain cuts is answered 503 with the reason: shutting down, not
/// restarting.
#[test]
fn a_request_cut_by_a_shutdown_says_the_server_is_shutting_down() {
    for workers in ["0", "1"] {
        let mut server = Server::hello(&["--workers", workers, "--drain-timeout", "300ms"]);
        let addr = server.addr;
        if workers == "1" {
            server.workers_ready(1, 1);
        }
        let slow = std::thread::spawn(move || common::get(addr, "/slow?ms=10000"));
        server.wait_in_flight("/slow", 1);
        signal(server.pid, Signal::TERM);
        let reply = slow.join().unwrap().expect("a reply");
        assert_eq!(reply.status, 503, "--workers {workers}");
        assert_eq!(reply.body.trim(), "the server is shutting down");
        assert_eq!(server.wait_exit(DEADLINE), Some(1), "{}", server.dump());
    }
}
