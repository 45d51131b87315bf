//! The drain notice anywhere: a thread the server does not run sees it, and a stream produced
//! on another executor's thread ends at the drain, in a single process and in a worker.

mod common;

use std::time::{Duration, Instant};

use common::{DEADLINE, Server, Signal, signal, wait_gone};

/// Restarts `server` the way its model does (`serving`: the single process to restart).
fn restart(server: &Server, serving: u32, workers: bool) {
    if workers {
        server.restart_workers(2);
    } else {
        server.restart(serving);
    }
}

fn a_thread_the_server_does_not_run_sees_the_drain(server: Server, workers: bool) {
    let serving = common::serving_pid(server.addr);
    let addr = server.addr;
    let asked = std::thread::spawn(move || {
        let reply = common::get(addr, "/draining-elsewhere?ms=8000");
        (reply, Instant::now())
    });
    server.wait_in_flight("/draining-elsewhere", 1);
    let restarted = Instant::now();
    restart(&server, serving, workers);
    let (reply, answered) = asked.join().unwrap();
    let reply = reply.expect("the request in flight is answered");
    assert_eq!(reply.body.trim(), "notice true, is_draining true");
    // At the drain, not when the thread gave up (8 s) or the drain timeout (10 s).
    assert!(
        answered - restarted < Duration::from_secs(3),
        "answered {:?} after the restart",
        answered - restarted
    );
    assert!(wait_gone(serving, DEADLINE), "{}", server.dump());
}

#[test]
fn a_thread_the_server_does_not_run_sees_the_drain_of_a_single_process() {
    let server = Server::hello(&["--drain-timeout", "10s"]);
    a_thread_the_server_does_not_run_sees_the_drain(server, false);
}

#[test]
fn a_thread_the_server_does_not_run_sees_the_drain_of_a_worker() {
    let server = Server::hello(&["--workers", "1", "--drain-timeout", "10s"]);
    server.workers_ready(1, 1);
    a_thread_the_server_does_not_run_sees_the_drain(server, true);
}

fn a_stream_made_on_another_thread_ends_at_the_drain(server: Server, workers: bool) {
    let serving = common::serving_pid(server.addr);
    let addr = server.addr;
    let seen = common::Seen::default();
    let seen_there = seen.clone();
    let reader = std::thread::spawn(move || {
        let ids = common::event_stream_seen(addr, "/events-elsewhere", None, &seen_there);
        (ids, Instant::now())
    });
    seen.wait_more(3);
    let restarted = Instant::now();
    restart(&server, serving, workers);
    let (ids, ended) = reader.join().unwrap();
    assert!(ids.len() >= 3, "{ids:?}");
    assert!(
        ended - restarted < Duration::from_secs(3),
        "the stream ended {:?} after the restart (the drain timeout is 10 s)",
        ended - restarted
    );
    // The old process had nothing else to wait for.
    assert!(
        wait_gone(serving, Duration::from_secs(5)),
        "{}",
        server.dump()
    );
    assert_eq!(server.count("requests cut"), server.count("0 requests cut"));
}

#[test]
fn a_stream_made_on_another_thread_ends_at_the_drain_of_a_single_process() {
    let server = Server::hello(&["--drain-timeout", "10s"]);
    a_stream_made_on_another_thread_ends_at_the_drain(server, false);
}

#[test]
fn a_stream_made_on_another_thread_ends_at_the_drain_of_a_worker() {
    let server = Server::hello(&["--workers", "1", "--drain-timeout", "10s"]);
    server.workers_ready(1, 1);
    a_stream_made_on_another_thread_ends_at_the_drain(server, true);
}

/// A shutdown fires the notice too.
#[test]
fn a_shutdown_fires_the_notice_on_other_threads() {
    let mut server = Server::hello(&["--drain-timeout", "10s"]);
    let addr = server.addr;
    let asked = std::thread::spawn(move || common::get(addr, "/draining-elsewhere?ms=8000"));
    server.wait_in_flight("/draining-elsewhere", 1);
    signal(server.pid, Signal::TERM);
    let reply = asked.join().unwrap().expect("answered");
    assert_eq!(reply.body.trim(), "notice true, is_draining true");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(0));
}
