//! The application's state across restarts, in each process model: `hello`'s `/count` goes on
//! counting in every worker, a 4 MiB `/note` survives restarts, a state over the bound is
//! refused with a word on both sides, a worker that dies takes its state with it and says so,
//! and an application without state hooks says "no state".

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{Client, DEADLINE, Scratch, Server, Signal, example, signal, wait_gone};

/// A note of `len` bytes whose every line differs, so that a cut or a shifted copy shows.
fn note(len: usize) -> String {
    let mut text = String::with_capacity(len + 32);
    let mut line = 0u64;
    while text.len() < len {
        text.push_str(&format!("line {line} of the note\n"));
        line += 1;
    }
    text.truncate(len);
    text
}

fn put_note(server: &Server, text: &str) {
    let mut client = Client::new(server.addr);
    let reply = client
        .send(&format!(
            "PUT /note HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        ))
        .expect("PUT /note");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn get_note(server: &Server) -> String {
    let reply = common::get(server.addr, "/note").expect("GET /note");
    assert_eq!(reply.status, 200);
    reply.body
}

/// `count N from PID` of `/count` on a fresh connection.
fn count(server: &Server) -> Option<(u64, u32)> {
    let reply = common::get(server.addr, "/count").ok()?;
    let mut words = reply.body.split_whitespace().skip(1);
    let n = words.next()?.parse().ok()?;
    let pid = words.nth(1)?.parse().ok()?;
    Some((n, pid))
}

fn assert_same_note(got: &str, want: &str, when: &str) {
    // (Not assert_eq: a failure would print megabytes.)
    assert!(
        got == want,
        "{when}: the note came back with {} bytes, not the {} put",
        got.len(),
        want.len()
    );
}

const BIG_BODY: &str = "8388608";

#[test]
fn a_4_mib_note_survives_five_restarts_of_a_single_process() {
    let server = Server::hello(&["--max-body-bytes", BIG_BODY]);
    let text = note(4 << 20);
    put_note(&server, &text);
    let mut pid = server.pid;
    for restart in 1..=5 {
        let next = server.restart(pid);
        assert!(wait_gone(pid, DEADLINE), "{pid} still runs");
        pid = next;
        assert_eq!(common::serving_pid(server.addr), pid);
        assert_same_note(&get_note(&server), &text, &format!("restart {restart}"));
    }
    // Each successor logged the state's size (its JSON text, a little larger than the note).
    let sizes: Vec<usize> = server
        .lines()
        .iter()
        .filter_map(|l| l.split("state from the previous process (").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(sizes.len(), 5, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n > text.len()), "{sizes:?}");
}

#[test]
fn a_4_mib_note_survives_five_restarts_of_a_supervising_process() {
    let scratch = Scratch::new("state-note-workers");
    let path = scratch.install("hello", &std::fs::read(example("fixture")).unwrap());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0", "--workers", "1"]);
    command.args(["--max-body-bytes", BIG_BODY]);
    let server = Server::start(command);
    server.workers_ready(1, 1);
    let text = note(4 << 20);
    put_note(&server, &text);
    for generation in 2..=6 {
        server.restart_workers(generation);
        let [worker] = server.workers_ready(generation, 1)[..] else {
            panic!("one worker")
        };
        common::served_by(server.addr, worker);
        assert_same_note(
            &get_note(&server),
            &text,
            &format!("generation {generation}"),
        );
    }
}

/// With two workers, each counts on its own, and each new worker goes on from the count of the
/// worker whose place it takes: across 10 restarts under a client, no value is answered more
/// than twice (once per worker), and the values keep growing.
#[test]
fn count_goes_on_in_every_worker_across_ten_restarts() {
    let server = Server::hello(&["--workers", "2"]);
    server.workers_ready(1, 2);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut pids = std::collections::HashSet::new();
    let mut ask = |server: &Server, times: usize| {
        for _ in 0..times {
            if let Some((n, pid)) = count(server) {
                *seen.entry(n).or_default() += 1;
                pids.insert(pid);
            }
        }
    };
    ask(&server, 20);
    for generation in 2..=11 {
        server.restart_workers(generation);
        server.workers_ready(generation, 2);
        ask(&server, 20);
    }
    let repeated: Vec<(&u64, &usize)> = seen.iter().filter(|(_, times)| **times > 2).collect();
    assert!(
        repeated.is_empty(),
        "answered more than twice: {repeated:?}"
    );
    let answered: usize = seen.values().sum();
    assert!(answered >= 200, "{answered} answers");
    // Two workers share the 220 calls: the largest count is about half of them, far above
    // what one generation of workers saw (about 10 each).
    let most = seen.keys().max().copied().unwrap_or(0);
    assert!(most >= 80, "the largest count is {most}: counts restarted");
    // At least one worker of each generation answered.
    assert!(pids.len() >= 11, "{} workers answered", pids.len());
}

/// Over `--max-state-bytes`, the old process says the state did not go, and the new one says it
/// has none and why: never a silent empty.
fn a_state_over_the_bound_is_refused_with_a_word(server: Server, restart: impl Fn(&Server)) {
    let text = note(5000);
    put_note(&server, &text);
    restart(&server);
    server.wait_line("the state (");
    server.wait_line("was not handed over: its state (");
    server.wait_line("is over max_state_bytes (1000)");
    server.wait_line("no state from the previous process (the previous process did not send it");
    assert_eq!(get_note(&server), "");
}

#[test]
fn a_state_over_the_bound_is_refused_with_a_word_by_a_single_process() {
    let server = Server::hello(&["--max-state-bytes", "1000"]);
    a_state_over_the_bound_is_refused_with_a_word(server, |server| {
        server.restart(server.pid);
    });
}

#[test]
fn a_state_over_the_bound_is_refused_with_a_word_by_a_worker() {
    let server = Server::hello(&["--workers", "1", "--max-state-bytes", "1000"]);
    server.workers_ready(1, 1);
    a_state_over_the_bound_is_refused_with_a_word(server, |server| server.restart_workers(2));
}

/// A worker that dies has no state to give: its replacement starts without it, and the log
/// says so.
#[test]
fn a_killed_workers_state_is_lost_and_the_log_says_so() {
    let server = Server::hello(&["--workers", "1"]);
    let [worker] = server.workers_ready(1, 1)[..] else {
        panic!("one worker")
    };
    put_note(&server, "kept in the worker");
    signal(worker, Signal::KILL);
    server.wait_line(&format!(
        "worker {worker} exited (signal: 9 (SIGKILL)) unexpectedly; its state is lost"
    ));
    let replacement = server.wait_for("the replacement", |lines| {
        lines
            .iter()
            .filter_map(|l| common::log::parse(l)?.worker_ready())
            .map(|(pid, _)| pid)
            .find(|&pid| pid != worker)
    });
    assert_eq!(common::serving_pid(server.addr), replacement);
    assert_eq!(get_note(&server), "");
}

/// An application without state hooks: the successor says there was none, not "0 bytes".
#[test]
fn without_state_hooks_the_successor_says_there_was_none() {
    let mut command = Command::new(example("router"));
    command.args(["--addr", "127.0.0.1:0"]);
    let server = Server::start(command);
    server.restart(server.pid);
    server.wait_line("no state from the previous process (the previous process had none)");
    assert_eq!(server.count("bytes) after"), 0, "{}", server.dump());
}
