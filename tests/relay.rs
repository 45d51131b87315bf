//! Handing live keep-alive connections to the successor (on by default; `hello
//! --no-hand-over` turns it off): the clients keep their TCP connections across restarts and
//! never reconnect.

mod common;

use common::{Client, DEADLINE, Load, Server, wait_gone};

#[test]
fn keep_alive_clients_keep_their_connections_across_ten_restarts() {
    let server = Server::hello(&[]);
    let load = Load::keep_alive(server.addr, 4);
    let mut pid = server.pid;
    for _ in 0..10 {
        let next = server.restart(pid);
        assert!(
            wait_gone(pid, DEADLINE),
            "old process {pid} still runs; log:\n{}",
            server.dump()
        );
        // The moved connections are served by the successor before it is restarted in turn.
        load.wait_served_by(next);
        pid = next;
    }
    let stats = load.finish();
    stats.assert_no_failures();
    assert_eq!(
        stats.connects, 4,
        "clients reconnected: {} connects for 4 clients",
        stats.connects
    );
    assert!(
        stats.pids.len() >= 10,
        "served by {} processes only: {:?}",
        stats.pids.len(),
        stats.pids
    );
    assert!(stats.pids.contains(&pid));
}

#[test]
fn a_connection_moved_mid_stream_is_answered_by_the_successor_on_the_same_socket() {
    let server = Server::hello(&[]);
    let mut client = Client::new(server.addr);
    assert_eq!(client.get("/hello").unwrap().pid(), Some(server.pid));
    let next = server.restart(server.pid);
    assert!(wait_gone(server.pid, DEADLINE));
    // Same connection, no Connection: close, now served by the successor.
    let reply = client.get("/hello").unwrap();
    assert_eq!(reply.pid(), Some(next));
    assert!(!reply.closes());
    assert_eq!(client.connects, 1);
}

#[test]
fn a_pipelined_half_request_travels_with_its_connection() {
    let server = Server::hello(&["--drain-timeout", "10s"]);
    let mut client = Client::new(server.addr);
    assert_eq!(client.get("/hello").unwrap().pid(), Some(server.pid));
    // A slow request in flight, and the first half of the next one behind it.
    client
        .send_only(&format!(
            "GET /slow?ms=600 HTTP/1.1\r\nHost: {0}\r\n\r\nGET /hel",
            server.addr
        ))
        .unwrap();
    common::wait_until_read(server.addr, client.local_addr().unwrap());
    let next = server.restart(server.pid);
    let slow = client.receive().unwrap();
    assert_eq!(slow.pid(), Some(server.pid));
    assert!(
        !slow.closes(),
        "a handed-over connection is not closed: {slow:?}"
    );
    // The rest of the second request reaches the successor, which has the first half.
    client.send_only("lo HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(client.receive().unwrap().pid(), Some(next));
    assert_eq!(client.connects, 1);
}

#[test]
fn application_state_reaches_the_successor_before_it_serves() {
    let server = Server::hello(&[]);
    for n in 1..=3 {
        assert_eq!(
            common::get(server.addr, "/count").unwrap().body,
            format!("count {n} from {}\n", server.pid)
        );
    }
    let next = server.restart(server.pid);
    assert!(wait_gone(server.pid, DEADLINE));
    // The successor starts from the handed-over count, not from zero.
    assert_eq!(
        common::get(server.addr, "/count").unwrap().body,
        format!("count 4 from {next}\n")
    );
    // Without hand-over there is no relay, and no state: a successor starts cold.
    let cold = Server::hello(&["--no-hand-over"]);
    assert_eq!(
        common::get(cold.addr, "/count").unwrap().body,
        format!("count 1 from {}\n", cold.pid)
    );
    let fresh = cold.restart(cold.pid);
    assert!(wait_gone(cold.pid, DEADLINE));
    assert_eq!(
        common::get(cold.addr, "/count").unwrap().body,
        format!("count 1 from {fresh}\n")
    );
}

/// A restart storm does not pile up generations: a process that drains forwards its
/// predecessor's relay to its successor, so a generation with nothing left to drain exits
/// at once, however long an older one is still busy.
#[test]
fn idle_generations_exit_at_once_while_an_older_one_still_drains() {
    let server = common::Server::hello(&["--drain-timeout", "10s"]);
    let addr = server.addr;
    let slow = std::thread::spawn(move || common::get(addr, "/slow?ms=4000"));
    server.wait_in_flight("/slow", 1);
    let mut generations = vec![server.pid];
    for _ in 0..4 {
        let next = server.restart(*generations.last().unwrap());
        generations.push(next);
    }
    // The middle generations had nothing to drain: gone at once, though the first one is
    // still answering its slow request.
    for &pid in &generations[1..4] {
        assert!(
            common::wait_gone(pid, std::time::Duration::from_secs(2)),
            "generation {pid} is still alive; log:\n{}",
            server.dump()
        );
    }
    assert!(
        common::alive(generations[0]),
        "the first generation left early"
    );
    let reply = slow.join().unwrap().expect("the slow request is answered");
    assert_eq!(reply.pid(), Some(generations[0]));
    assert!(common::wait_gone(generations[0], common::DEADLINE));
    assert_eq!(common::serving_pid(addr), generations[4]);
}

/// State hand-over is exact: the old process stops serving, finishes its requests, then
/// sends its state, and the successor serves only once it has it. `/count` across 50 fast
/// restarts under load never repeats or skips a number (it used to repeat: the state was
/// taken before the fork while the old process went on counting).
#[test]
fn the_count_never_repeats_or_skips_across_fifty_fast_restarts() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = common::Server::hello(&[]);
    let addr = server.addr;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let client = std::thread::spawn(move || {
        let mut client = common::Client::new(addr);
        let mut counts = Vec::new();
        while !stopping.load(Ordering::Relaxed) {
            let reply = client.get("/count").expect("a /count reply");
            let count: u64 = reply
                .body
                .strip_prefix("count ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .expect("count N from PID");
            counts.push(count);
        }
        counts
    });
    let mut pid = server.pid;
    for _ in 0..50 {
        pid = server.restart(pid);
    }
    common::served_by(addr, pid);
    stop.store(true, Ordering::Relaxed);
    let counts = client.join().unwrap();
    let wrong: Vec<(usize, u64)> = counts
        .iter()
        .enumerate()
        .filter(|&(i, &n)| n != i as u64 + 1)
        .map(|(i, &n)| (i, n))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "counts repeated or skipped at (index, count) {wrong:?}"
    );
    assert!(counts.len() > 50, "only {} requests", counts.len());
}

/// At most `--max-generations` processes are alive: a restart that would exceed it ends the
/// oldest generation still draining first (its slow request is cut, with a 503).
#[test]
fn a_restart_beyond_max_generations_ends_the_oldest_draining_one() {
    let server = common::Server::hello(&["--drain-timeout", "20s", "--max-generations", "3"]);
    let addr = server.addr;
    // A slow request to whichever generation serves now; answered by that one.
    let mut started = 0;
    let mut slow = || {
        let handle = std::thread::spawn(move || common::get(addr, "/slow?ms=8000"));
        started += 1;
        server.wait_in_flight("/slow", started);
        handle
    };
    let first = server.pid;
    let first_slow = slow();
    let second = server.restart(first);
    let second_slow = slow();
    let third = server.restart(second);
    // First, second (draining) and third (serving): three. One more restart would make four.
    assert!(common::alive(first) && common::alive(second));
    let fourth = server.restart(third);
    server.wait_line(&format!(
        "baton[{third}]: ended generation {first}, still draining"
    ));
    let cut = first_slow
        .join()
        .unwrap()
        .expect("a reply for the cut request");
    assert_eq!(cut.status, 503);
    assert!(common::wait_gone(first, common::DEADLINE));
    assert!(common::alive(second), "the second generation was ended too");
    assert_eq!(common::serving_pid(addr), fourth);
    let _ = second_slow;
}
