//! What holds alike for the single process and a supervising process with workers: a
//! storm of SIGHUPs keeps the generations alive bounded, and a shutdown answers what waits in
//! the listen queue.

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use common::{DEADLINE, Failure, Scratch, Server, Signal, signal};

/// 40 SIGHUPs within about 100 ms while slow requests keep every generation draining: the
/// generations alive stay bounded by `--max-generations` (a generation still starting
/// aside), in the single process and with two workers alike, every slow request gets an
/// answer (200, or 503 where the limit ended its generation), and the service serves after.
fn a_sighup_storm_keeps_the_generations_bounded(workers: usize) {
    let scratch = Scratch::new(&format!("storm-{workers}"));
    let pid_file = scratch.0.join("hello.pid");
    let server = Server::hello(&[
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--workers",
        &workers.to_string(),
        "--max-generations",
        "3",
        "--drain-timeout",
        "20s",
    ]);
    if workers > 0 {
        server.workers_ready(1, workers);
    }
    let addr = server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    answers.push(common::get(addr, "/slow?ms=1500").map(|r| r.status));
                }
                answers
            })
        })
        .collect();
    let bound = 1 + 4 * workers.max(1);
    let mut most = 0;
    let mut sample = || {
        let alive = server
            .pids()
            .into_iter()
            .filter(|&p| common::alive(p))
            .count();
        most = most.max(alive);
    };
    // As an operator's script would: to whatever the PID file names.
    for _ in 0..40 {
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        signal(pid.trim().parse().unwrap(), Signal::HUP);
        sample();
        std::thread::sleep(Duration::from_millis(2));
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(3) {
        sample();
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        most <= bound,
        "workers {workers}: {most} processes alive at once (at most {bound})\n{}",
        server.dump()
    );
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok(200 | 503)))
        .collect();
    assert!(
        failed.is_empty(),
        "workers {workers}: {failed:?}\n{}",
        server.dump()
    );
    assert_eq!(common::get(addr, "/hello").unwrap().status, 200);
    // What the limit ended says so; nothing waited out the 20 s drain timeout.
    let lines = server.lines();
    let ended = lines
        .iter()
        .filter(|l| l.contains("ended generation"))
        .count();
    // (A worker hears it from its supervising process; a single process gets SIGTERM from
    // its successor.)
    let by = match workers {
        0 => "cut by a shutdown signal",
        _ => "cut by the generation limit (at most 3 alive)",
    };
    let by_limit = lines.iter().filter(|l| l.contains(by)).count();
    assert!(
        by_limit >= ended.min(1),
        "workers {workers}\n{}",
        server.dump()
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("by the drain timeout") && !l.contains(": 0 requests")),
        "{}",
        server.dump()
    );
}

#[test]
fn a_sighup_storm_keeps_the_generations_bounded_in_the_single_process() {
    a_sighup_storm_keeps_the_generations_bounded(0);
}

#[test]
fn a_sighup_storm_keeps_the_generations_bounded_with_workers() {
    a_sighup_storm_keeps_the_generations_bounded(2);
}

/// SIGTERM while connections wait in the listen queue (each process is at its connection
/// limit, holding an idle keep-alive connection): a shutdown answers each of them, never
/// lets the close of the socket reset them after their clients saw them accepted; what
/// comes after is refused. In the single process and with two workers.
fn a_shutdown_answers_what_waits_in_the_queue(workers: usize) {
    let server = Server::hello(&["--workers", &workers.to_string(), "--max-connections", "1"]);
    if workers > 0 {
        server.workers_ready(1, workers);
    }
    // One idle connection per serving process: each is at its limit, and accepts no more.
    let mut idle = Vec::new();
    let mut full = HashSet::new();
    while full.len() < workers.max(1) {
        let mut client = common::Client::new(server.addr);
        full.insert(client.get("/hello").unwrap().pid().unwrap());
        idle.push(client);
    }
    let mut queued: Vec<std::net::TcpStream> = (0..5)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
            stream
                .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            stream
        })
        .collect();
    signal(server.pid, Signal::TERM);
    for stream in &mut queued {
        let reply = common::read_reply(&mut std::io::BufReader::new(stream));
        assert!(
            matches!(&reply, Ok(r) if r.status == 200),
            "workers {workers}: a queued connection got {reply:?}\n{}",
            server.dump()
        );
    }
    drop(idle);
    assert!(common::wait_gone(server.pid, DEADLINE), "{}", server.dump());
    assert_eq!(
        common::get(server.addr, "/hello").map(|r| r.status),
        Err(Failure::Refused)
    );
}

#[test]
fn a_shutdown_answers_what_waits_in_the_queue_in_the_single_process() {
    a_shutdown_answers_what_waits_in_the_queue(0);
}

#[test]
fn a_shutdown_answers_what_waits_in_the_queue_with_workers() {
    a_shutdown_answers_what_waits_in_the_queue(2);
}
