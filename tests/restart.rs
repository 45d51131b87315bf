//! Restarts of the real `hello` example under load: nothing refused, reset or dropped.

mod common;

use std::time::Duration;

use common::{
    Client, DEADLINE, Load, Server, Signal, alive, fd_count, signal, wait_gone, zombie_children,
};

/// Restarts `server` `times` times under `load` and checks every generation handed over cleanly.
fn restart_under_load(server: &Server, load: Load, times: usize) -> Vec<u32> {
    let mut generations = vec![server.pid];
    for _ in 0..times {
        let old = *generations.last().unwrap();
        let new = server.restart(old);
        assert_ne!(new, old);
        assert!(
            wait_gone(old, DEADLINE),
            "old process {old} still runs; log:\n{}",
            server.dump()
        );
        let reply = common::get(server.addr, "/hello").expect("hello after restart");
        assert_eq!(reply.pid(), Some(new), "{}", reply.body);
        generations.push(new);
    }
    let stats = load.finish();
    eprintln!(
        "{times} restarts: {} requests ok, {} failed, {} connections, served by {} pids",
        stats.ok,
        stats.failures.len(),
        stats.connects,
        stats.pids.len()
    );
    assert!(
        stats.failures.is_empty(),
        "{} failed requests: {:?}",
        stats.failures.len(),
        stats.failures
    );
    assert!(stats.ok > times, "only {} requests succeeded", stats.ok);
    // Clients were served by several generations, not just the first or the last.
    assert!(
        stats.pids.len() > times / 2,
        "served by {:?} of {generations:?}",
        stats.pids
    );
    for old in &generations[..times] {
        assert!(!alive(*old), "{old} is still alive");
    }
    generations
}

#[test]
fn keep_alive_load_survives_ten_restarts() {
    let server = Server::hello(&[]);
    let load = Load::keep_alive(server.addr, 4);
    let generations = restart_under_load(&server, load, 10);
    assert_eq!(server.count("0 requests cut"), 10, "{}", server.dump());
    let last = *generations.last().unwrap();
    assert!(alive(last));
}

/// The lean handler path keeps the same drain and hand-over rules.
#[test]
fn lean_path_keep_alive_load_survives_ten_restarts() {
    let server = Server::hello(&["--lean"]);
    let load = Load::keep_alive(server.addr, 4);
    restart_under_load(&server, load, 10);
    assert_eq!(server.count("0 requests cut"), 10, "{}", server.dump());
}

#[test]
fn per_request_load_survives_ten_restarts() {
    let server = Server::hello(&[]);
    let load = Load::per_request(server.addr, 4);
    restart_under_load(&server, load, 10);
    assert_eq!(server.count("0 requests cut"), 10, "{}", server.dump());
}

/// Sends `/slow` on a connection the first process has already accepted (a `/hello` on it
/// proves which process holds it), so the request is that process's however signals race.
fn slow_request_on_first_process(server: &Server, ms: u64) -> Client {
    let mut client = Client::new(server.addr);
    let hello = client.get("/hello").expect("hello");
    assert_eq!(hello.pid(), Some(server.pid));
    client
        .send_only(&format!(
            "GET /slow?ms={ms} HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.addr
        ))
        .expect("send /slow");
    // Signals sent from here on find the request in flight, not still in the socket.
    common::wait_until_read(server.addr, client.local_addr().expect("connected"));
    client
}

#[test]
fn slow_request_in_flight_completes_across_sighup() {
    // The closing path: with connections handed over (tests/relay.rs) there is no close.
    let server = Server::hello(&["--no-hand-over"]);
    let mut client = slow_request_on_first_process(&server, 1500);
    let new = server.restart(server.pid);
    // The successor serves new connections while the old process finishes the slow request.
    let reply = common::get(server.addr, "/hello").expect("hello from the successor");
    assert_eq!(reply.pid(), Some(new));
    let slow = client.receive().expect("slow reply from the old process");
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.body,
        format!("Slow hello from {} after 1500 ms\n", server.pid)
    );
    assert!(
        slow.closes(),
        "a draining process must answer Connection: close: {slow:?}"
    );
    assert!(wait_gone(server.pid, DEADLINE));
}

#[test]
fn slow_request_in_flight_completes_across_sigint() {
    let mut server = Server::hello(&[]);
    let mut client = slow_request_on_first_process(&server, 1000);
    signal(server.pid, Signal::INT);
    server.wait_line("draining 1 connections (1 requests in flight)");
    let slow = client.receive().expect("slow reply");
    assert_eq!(
        slow.body,
        format!("Slow hello from {} after 1000 ms\n", server.pid)
    );
    assert!(slow.closes());
    assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    assert!(
        common::get(server.addr, "/hello").is_err(),
        "nothing should serve after SIGINT"
    );
}

#[test]
fn drain_timeout_cuts_a_long_request_and_exits_on_time() {
    let mut server = Server::hello(&["--drain-timeout", "1s"]);
    let mut client = slow_request_on_first_process(&server, 20_000);
    signal(server.pid, Signal::TERM);
    let started = std::time::Instant::now();
    server.wait_line("draining 1 connections (1 requests in flight)");
    let code = server.wait_exit(Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(1),
        "a drain that cut requests exits 1; log:\n{}",
        server.dump()
    );
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the timeout"
    );
    assert!(
        took < Duration::from_secs(4),
        "exited after {took:?}, long after the 1 s timeout"
    );
    server.wait_line("exiting: 1 requests cut by the drain timeout, 1 connections dropped");
    // The cut request is told so: 503, not an empty reply or a made-up answer.
    let reply = client.receive().expect("a 503 for the cut request");
    assert_eq!(reply.status, 503);
}

#[test]
fn second_sigint_during_a_drain_exits_at_once() {
    let mut server = Server::hello(&["--drain-timeout", "60s"]);
    let _client = slow_request_on_first_process(&server, 30_000);
    signal(server.pid, Signal::INT);
    server.wait_line("draining 1 connections (1 requests in flight)");
    let started = std::time::Instant::now();
    signal(server.pid, Signal::INT);
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)),
        Some(1),
        "{}",
        server.dump()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    server.wait_line("exiting: 1 requests cut");
}

/// `LISTENER` names fds of the process it was given to; a process the handler starts (which
/// might be a baton or Go server itself) must not see it, in the first process or after a restart.
#[test]
fn processes_the_handler_starts_never_see_listener() {
    let mut command = std::process::Command::new(common::example("fixture"));
    command
        .args(["--addr", "127.0.0.1:0"])
        .env("BATON_TEST_MARK", "1");
    let server = Server::start(command);
    let first = common::child_env(server.addr);
    // The route works: the child sees what the server was started with.
    assert!(first.iter().any(|n| n == "BATON_TEST_MARK"), "{first:?}");
    assert!(!first.iter().any(|n| n == "LISTENER"), "{first:?}");
    let next = server.restart(server.pid);
    assert!(wait_gone(server.pid, DEADLINE));
    // The successor was started with LISTENER and took it out before serving.
    let environ = std::fs::read(format!("/proc/{next}/environ")).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v.starts_with(b"LISTENER="))
    );
    common::served_by(server.addr, next);
    let after = common::child_env(server.addr);
    assert!(after.iter().any(|n| n == "BATON_TEST_MARK"), "{after:?}");
    assert!(!after.iter().any(|n| n.starts_with("LISTEN")), "{after:?}");
    assert!(
        !server
            .lines()
            .iter()
            .any(|l| l.contains("stay in the environment"))
    );
}

/// A SIGHUP sent straight to a successor before it installed its handlers (here: while it
/// loads its configuration for 500 ms) is held until they are, instead of killing it; the
/// successor then acts on it once it serves.
#[test]
fn a_sighup_to_a_successor_still_starting_is_held_not_fatal() {
    let server = Server::hello(&["--startup-delay", "500ms"]);
    let first = server.pid;
    signal(first, Signal::HUP);
    let spawned = server.wait_line(&format!("baton[{first}]: spawned child "));
    let child = common::child_pid(&spawned);
    signal(child, Signal::HUP);
    let outcome = server.wait_line(&format!("baton[{first}]: child {child} "));
    assert!(outcome.ends_with(" ready"), "{outcome}\n{}", server.dump());
    // The held SIGHUP: the successor restarts in turn.
    let spawned = server.wait_line(&format!("baton[{child}]: spawned child "));
    let grandchild = common::child_pid(&spawned);
    let outcome = server.wait_line(&format!("baton[{child}]: child {grandchild} "));
    assert!(outcome.ends_with(" ready"), "{outcome}\n{}", server.dump());
    assert!(wait_gone(first, DEADLINE) && wait_gone(child, DEADLINE));
    assert_eq!(common::serving_pid(server.addr), grandchild);
}

#[test]
fn sigusr2_child_keeps_serving_after_the_parent_stops() {
    let mut server = Server::hello(&[]);
    signal(server.pid, Signal::USR2);
    let line = server.wait_line(&format!("baton[{}]: child ", server.pid));
    assert!(line.ends_with(" ready"), "{line}\n{}", server.dump());
    let child = common::child_pid(&line);
    // Both processes accept on the same socket until the parent is told to stop.
    assert!(alive(server.pid) && alive(child));
    signal(server.pid, Signal::INT);
    assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    for _ in 0..20 {
        let reply = common::get(server.addr, "/hello").expect("the SIGUSR2 child still serves");
        assert_eq!(reply.pid(), Some(child));
    }
}

#[test]
fn sigusr2_child_that_exits_is_reaped() {
    let server = Server::hello(&[]);
    signal(server.pid, Signal::USR2);
    let line = server.wait_line(&format!("baton[{}]: child ", server.pid));
    let child = common::child_pid(&line);
    signal(child, Signal::TERM);
    server.wait_line(&format!("child {child} exited"));
    assert!(
        zombie_children(server.pid).is_empty(),
        "zombies: {:?}",
        zombie_children(server.pid)
    );
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(server.pid)
    );
}

/// The fd count once the last request's connection and the readiness pipe are closed (both
/// close asynchronously): polls until five reads 10 ms apart agree, within a deadline.
fn settled_fd_count(pid: u32) -> usize {
    let deadline = std::time::Instant::now() + DEADLINE;
    let (mut last, mut same) = (fd_count(pid), 0);
    while same < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let now = fd_count(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

#[test]
fn fd_count_is_flat_and_no_zombies_after_ten_restarts() {
    let server = Server::hello(&[]);
    let mut pid = server.restart(server.pid);
    // The first successor is the baseline: it and every later one were started the same way.
    assert_eq!(common::get(server.addr, "/hello").unwrap().pid(), Some(pid));
    let baseline = settled_fd_count(pid);
    for _ in 0..9 {
        let next = server.restart(pid);
        assert!(wait_gone(pid, DEADLINE));
        pid = next;
        assert!(common::get(server.addr, "/hello").unwrap().pid() == Some(pid));
    }
    assert_eq!(
        settled_fd_count(pid),
        baseline,
        "fds of {pid} after 10 restarts"
    );
    assert!(
        zombie_children(pid).is_empty(),
        "zombies of {pid}: {:?}",
        zombie_children(pid)
    );
}

#[test]
fn a_successor_that_dies_during_the_drain_hands_serving_back() {
    let server = Server::hello(&["--drain-timeout", "10s"]);
    // A slow request keeps the old process draining long enough to notice.
    let mut client = slow_request_on_first_process(&server, 3000);
    let successor = server.restart(server.pid);
    signal(successor, Signal::KILL);
    server.wait_line(&format!(
        "successor {successor} exited (signal: 9 (SIGKILL)) during the drain; serving again"
    ));
    // The old process serves again, new connections included, and finishes its slow request.
    for _ in 0..10 {
        assert_eq!(
            common::get(server.addr, "/hello").unwrap().pid(),
            Some(server.pid)
        );
    }
    let slow = client.receive().expect("the slow request still completes");
    assert_eq!(
        slow.body,
        format!("Slow hello from {} after 3000 ms\n", server.pid)
    );
    // And it can restart again, for real this time: promptly, with nothing held in flight
    // by the idle keep-alive connection (a stale readiness once counted it as a request that
    // never came, and the drain waited for it until its 10 s timeout).
    let next = server.restart(server.pid);
    assert!(wait_gone(server.pid, Duration::from_secs(5)));
    server.wait_line(&format!(
        "baton[{}]: exiting: 0 requests cut by the drain timeout",
        server.pid
    ));
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(next)
    );
}

#[test]
fn sighup_storm_ends_with_one_serving_process_and_no_failures() {
    let server = Server::hello(&[]);
    let load = Load::keep_alive(server.addr, 4);
    // 50 SIGHUPs within about 100 ms, to whichever process serves at the time.
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let serving = common::serving_pid(server.addr);
        let _ = common::kill(serving, Signal::HUP);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // Let every upgrade in flight settle: one process serves, the rest are gone.
    let deadline = std::time::Instant::now() + DEADLINE;
    // Settled: the same single process alive over three polls 100 ms apart (an upgrade takes
    // a few ms, so one still under way shows up as a second process).
    let mut settled = (0, 0);
    let survivor = loop {
        let alive: Vec<u32> = server.pids().into_iter().filter(|&p| alive(p)).collect();
        if alive.len() == 1 {
            settled = if settled.0 == alive[0] {
                (alive[0], settled.1 + 1)
            } else {
                (alive[0], 1)
            };
            if settled.1 == 3 {
                break alive[0];
            }
        } else {
            settled = (0, 0);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still alive: {alive:?}\n{}",
            server.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stats = load.finish();
    stats.assert_no_failures();
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(survivor)
    );
    let ignored = server.count("ignored SIGHUP");
    eprintln!(
        "storm: {} restarts, {ignored} SIGHUPs ignored, survivor {survivor}",
        server.pids().len() - 1
    );
}

#[test]
fn parent_killed_mid_drain_loses_only_its_own_in_flight_request() {
    let server = Server::hello(&["--drain-timeout", "10s"]);
    let mut client = slow_request_on_first_process(&server, 3000);
    let successor = server.restart(server.pid);
    server.wait_line(&format!("baton[{}]: draining", server.pid));
    // From here on the old process accepts nothing: its one in-flight request is the slow one.
    let load = Load::keep_alive(server.addr, 2);
    signal(server.pid, Signal::KILL);
    assert!(wait_gone(server.pid, DEADLINE));
    // Exactly the killed process's in-flight request fails...
    assert!(
        client.receive().is_err(),
        "the killed process's request cannot complete"
    );
    // ...while the successor serves everything else.
    for _ in 0..10 {
        assert_eq!(
            common::get(server.addr, "/hello").unwrap().pid(),
            Some(successor)
        );
    }
    let stats = load.finish();
    stats.assert_no_failures();
}

/// An SSE client that reconnects with Last-Event-ID sees every id exactly once across
/// restarts: each draining process ends its streams cleanly, the successor continues.
#[test]
fn server_sent_events_continue_across_five_restarts_without_a_gap_or_a_repeat() {
    let server = Server::hello(&[]);
    let addr = server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let seen = common::Seen::default();
    let arriving = seen.clone();
    let client = std::thread::spawn(move || {
        let (mut ids, mut streams) = (Vec::new(), 0);
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let last = ids.last().copied();
            ids.extend(common::event_stream_seen(addr, "/events", last, &arriving));
            streams += 1;
        }
        (ids, streams)
    });
    let mut pid = server.pid;
    // Each process sends a few events before it is replaced.
    for _ in 0..5 {
        seen.wait_more(3);
        let next = server.restart(pid);
        assert!(wait_gone(pid, DEADLINE));
        pid = next;
    }
    seen.wait_more(3);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // The last stream ends with one more restart.
    server.restart(pid);
    let (ids, streams) = client.join().unwrap();
    assert!(streams >= 6, "{streams} streams");
    let expected: Vec<u64> = (0..ids.len() as u64).collect();
    assert_eq!(ids, expected, "ids missed or repeated");
    assert!(ids.len() >= 15, "only {} events", ids.len());
}
