//! `examples/hyper.rs` (a hyper service on baton, feature `hyper`) across restarts, in a
//! single process and with two workers: HTTP/1 keep-alive clients keep their connections
//! and lose nothing; HTTP/2 clients that retry what a GOAWAY refused (as Go's and hyper's
//! pooled clients do) lose nothing; a request longer than the drain timeout is counted as cut
//! and answered 503 (HTTP/1) or refused (HTTP/2), never closed in silence.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::h2::{connect_h2, get_h2, h2_error};
use common::{Client, DEADLINE, Server, example};
use http_body_util::Empty;

/// Where the service runs: a single process, a supervising process with two workers, or PID 1
/// of a new PID namespace (a supervising process with one worker by default).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Model {
    Single,
    Workers,
    Pid1,
}

/// The example in `model`, and how many workers serve (0: the process itself).
fn start(model: Model) -> (Server, usize) {
    let mut command = Command::new(example("hyper"));
    command.args(["--addr", "127.0.0.1:0"]);
    match model {
        Model::Single => (Server::start(command), 0),
        Model::Workers => {
            command.args(["--workers", "2"]);
            (Server::start(command), 2)
        }
        Model::Pid1 => (Server::start_in_pid_namespace(command), 1),
    }
}

fn hyper_server(args: &[&str]) -> Server {
    let mut command = Command::new(example("hyper"));
    command.args(["--addr", "127.0.0.1:0"]).args(args);
    Server::start(command)
}

/// Waits until `progress` grew by `more` answers.
fn more_answered(server: &Server, progress: &AtomicU64, more: u64) {
    let seen = progress.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + DEADLINE;
    while progress.load(Ordering::Relaxed) < seen + more {
        assert!(std::time::Instant::now() < deadline, "{}", server.dump());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Restarts `server` (a single process, or the supervising process of `workers`) `times`
/// times, each once the clients got 40 more answers, and lets them get 40 more after.
fn restarts(server: &Server, workers: usize, times: u64, progress: &AtomicU64) {
    let mut pid = server.pid;
    if workers > 0 {
        server.workers_ready(1, workers);
    }
    for generation in 2..2 + times {
        more_answered(server, progress, 40);
        match workers {
            0 => pid = server.restart(pid),
            n => {
                server.restart_workers(generation);
                server.workers_ready(generation, n);
            }
        }
    }
    more_answered(server, progress, 40);
}

fn http1_keep_alive_across_restarts(model: Model) {
    let (server, workers) = start(model);
    let (stop, progress) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, progress, addr) = (stop.clone(), progress.clone(), server.addr);
            std::thread::spawn(move || -> Result<(usize, Vec<u32>), String> {
                let mut client = Client::new(addr);
                let mut pids = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.get("/hello").map_err(|e| format!("{e:?}"))?;
                    let pid = reply.pid().ok_or(format!("{reply:?}"))?;
                    if reply.status != 200 || pids.last() != Some(&pid) {
                        pids.push(pid);
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok((client.connects, pids))
            })
        })
        .collect();
    restarts(&server, workers, 5, &progress);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let (connects, pids) = client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("a request failed: {e}\n{}", server.dump()));
        assert_eq!(connects, 1, "the client reconnected: {pids:?}");
        assert!(pids.len() >= 2, "answered only by {pids:?}");
    }
}

#[test]
fn http1_keep_alive_clients_keep_their_connections_across_restarts() {
    http1_keep_alive_across_restarts(Model::Single);
}

#[test]
fn http1_keep_alive_clients_keep_their_connections_across_restarts_of_two_workers() {
    http1_keep_alive_across_restarts(Model::Workers);
}

fn http2_across_restarts(model: Model) {
    let (server, workers) = start(model);
    let (stop, progress) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, progress, addr) = (stop.clone(), progress.clone(), server.addr);
            std::thread::spawn(move || -> Result<(u64, u64, usize), String> {
                smol::block_on(async {
                    let (mut answered, mut retried, mut pids) = (0, 0, Vec::new());
                    let mut sender = connect_h2(addr).await?;
                    while !stop.load(Ordering::Relaxed) {
                        let Some((status, body)) = get_h2(&mut sender, addr, "/hello").await?
                        else {
                            retried += 1;
                            sender = connect_h2(addr).await?;
                            continue;
                        };
                        if status != 200 {
                            return Err(format!("{status} {body}"));
                        }
                        let pid = body.trim_end().rsplit(' ').next().unwrap_or_default();
                        if pids.last().map(String::as_str) != Some(pid) {
                            pids.push(pid.to_owned());
                        }
                        answered += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                        async_io::Timer::after(Duration::from_millis(2)).await;
                    }
                    Ok((answered, retried, pids.len()))
                })
            })
        })
        .collect();
    restarts(&server, workers, 5, &progress);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let (answered, retried, pids) = client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("a request failed: {e}\n{}", server.dump()));
        assert!(answered > 10, "{answered} answered");
        assert!(
            pids >= 2,
            "answered by {pids} processes ({retried} retried)"
        );
    }
}

#[test]
fn http2_clients_that_retry_what_a_goaway_refused_lose_nothing_across_restarts() {
    http2_across_restarts(Model::Single);
}

#[test]
fn http2_clients_lose_nothing_across_restarts_of_two_workers() {
    http2_across_restarts(Model::Workers);
}

/// A request slower than the drain timeout: cut, counted, and answered 503 with
/// `Connection: close` over HTTP/1.
#[test]
fn an_http1_request_cut_by_the_drain_timeout_gets_a_503_and_is_counted() {
    let server = hyper_server(&["--drain-timeout", "300ms"]);
    let mut client = Client::new(server.addr);
    client
        .send_only(&format!(
            "GET /slow?ms=10000 HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.addr
        ))
        .unwrap();
    server.wait_in_flight("/slow", 1);
    server.restart(server.pid);
    let reply = client.receive().expect("an answer, not a close");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.closes(), "{reply:?}");
    server.wait_line(&format!(
        "baton[{}]: exiting: 1 requests cut by the drain timeout",
        server.pid
    ));
}

/// The same over HTTP/2: the stream is refused (the client may retry it), and counted.
#[test]
fn an_http2_request_cut_by_the_drain_timeout_is_refused_and_counted() {
    let server = hyper_server(&["--drain-timeout", "300ms"]);
    let addr = server.addr;
    let request = std::thread::spawn(move || {
        smol::block_on(async {
            let mut sender = connect_h2(addr).await?;
            sender.ready().await.map_err(|e| format!("{e}"))?;
            let request = hyper::Request::get(format!("http://{addr}/slow?ms=10000"))
                .body(Empty::new())
                .unwrap();
            match sender.send_request(request).await {
                Ok(response) => Err(format!("answered {}", response.status())),
                Err(error) => Ok(h2_error(&error).and_then(|e| e.reason())),
            }
        })
    });
    server.wait_in_flight("/slow", 1);
    server.restart(server.pid);
    let reason = request.join().unwrap().unwrap();
    assert_eq!(reason, Some(h2::Reason::REFUSED_STREAM));
    server.wait_line(&format!(
        "baton[{}]: exiting: 1 requests cut by the drain timeout",
        server.pid
    ));
}

/// A connection upgraded through hyper's `upgrade::on` is the application's: at a restart it
/// gets the drain notice (the example's line echo says goodbye and closes), and the old
/// process then exits without cutting anything.
fn upgraded_across_a_restart(model: Model) {
    use std::io::{BufRead, BufReader, Write};
    let (server, workers) = start(model);
    let serving = match workers {
        0 => vec![server.pid],
        n => server.workers_ready(1, n),
    };
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let head =
        "GET /upgrade HTTP/1.1\r\nHost: test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
    (&stream).write_all(head.as_bytes()).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line:?}");
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    (&stream).write_all(b"hi\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    let (pid, text) = line.trim_end().split_once(": ").expect("an answer");
    assert_eq!(text, "hi");
    let pid: u32 = pid.parse().unwrap();
    assert!(serving.contains(&pid), "{pid} not among {serving:?}");
    match workers {
        0 => {
            server.restart(pid);
        }
        n => {
            server.restart_workers(2);
            server.workers_ready(2, n);
        }
    }
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("{pid}: goodbye\n"));
    line.clear();
    assert_eq!(reader.read_line(&mut line).unwrap(), 0, "{line:?}");
    server.wait_line(&format!(
        "baton[{pid}]: exiting: 0 requests cut by the drain timeout, 0 connections dropped"
    ));
}

#[test]
fn an_upgraded_connection_gets_the_drain_notice_at_a_restart() {
    upgraded_across_a_restart(Model::Single);
}

#[test]
fn an_upgraded_connection_gets_the_drain_notice_at_a_restart_of_two_workers() {
    upgraded_across_a_restart(Model::Workers);
}

#[test]
fn http1_keep_alive_http2_and_upgrades_across_restarts_as_pid_1() {
    http1_keep_alive_across_restarts(Model::Pid1);
    http2_across_restarts(Model::Pid1);
    upgraded_across_a_restart(Model::Pid1);
}

/// SIGTERM while connections wait in the listen queue (each serving process at its connection
/// limit, holding an idle keep-alive connection): each queued request is answered, whether
/// its bytes came before the signal or after it (when the shutdown had accepted its
/// connection already), the idle connection closed, nothing reset; the process then exits
/// clean and what comes after is refused.
fn a_shutdown_answers_what_waits_in_the_queue(model: Model) {
    use std::io::Write;
    let workers = match model {
        Model::Workers => 2,
        _ => 0,
    };
    let mut command = Command::new(example("hyper"));
    command.args(["--addr", "127.0.0.1:0", "--max-connections", "1"]);
    if workers > 0 {
        command.args(["--workers", "2"]);
    }
    let mut server = Server::start(command);
    if workers > 0 {
        server.workers_ready(1, workers);
    }
    let mut idle = Vec::new();
    let mut full = std::collections::HashSet::new();
    while full.len() < workers.max(1) {
        let mut client = Client::new(server.addr);
        full.insert(client.get("/hello").unwrap().pid().unwrap());
        idle.push(client);
    }
    let request = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut queued: Vec<TcpStream> = (0..10)
        .map(|n| {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            if n % 2 == 0 {
                stream.write_all(request).unwrap();
            }
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            stream
        })
        .collect();
    common::signal(server.pid, common::Signal::TERM);
    // (Sent once the shutdown's drain has started.)
    server.wait_line("draining");
    for stream in queued.iter_mut().skip(1).step_by(2) {
        stream.write_all(request).unwrap();
    }
    for stream in &mut queued {
        let reply = common::read_reply(&mut std::io::BufReader::new(stream));
        assert!(
            matches!(&reply, Ok(r) if r.status == 200),
            "{model:?}: a queued connection got {reply:?}\n{}",
            server.dump()
        );
    }
    // The idle keep-alive connections were closed, not kept until the drain timeout.
    assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    drop(idle);
    assert_eq!(
        common::get(server.addr, "/hello").map(|r| r.status),
        Err(common::Failure::Refused)
    );
}

#[test]
fn a_shutdown_answers_what_waits_in_the_queue_in_the_single_process() {
    a_shutdown_answers_what_waits_in_the_queue(Model::Single);
}

#[test]
fn a_shutdown_answers_what_waits_in_the_queue_with_workers() {
    a_shutdown_answers_what_waits_in_the_queue(Model::Workers);
}

/// SIGTERM while HTTP/2 connections wait in the listen queue: each connection's first
/// request is answered (its stream was opened before the GOAWAY's last id), none refused.
#[test]
fn a_shutdown_answers_http2_connections_that_wait_in_the_queue() {
    let mut command = Command::new(example("hyper"));
    command.args(["--addr", "127.0.0.1:0", "--max-connections", "1"]);
    let server = Server::start(command);
    let mut idle = Client::new(server.addr);
    assert_eq!(idle.get("/hello").unwrap().status, 200);
    let addr = server.addr;
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let socket = TcpStream::connect(addr).unwrap();
            std::thread::spawn(move || {
                smol::block_on(async {
                    let socket = smol::Async::new(socket).map_err(|e| e.to_string())?;
                    let mut sender = common::h2::handshake_h2(socket).await?;
                    get_h2(&mut sender, addr, "/hello").await
                })
            })
        })
        .collect();
    common::signal(server.pid, common::Signal::TERM);
    for thread in queued {
        let answer = thread.join().unwrap();
        assert!(
            matches!(&answer, Ok(Some((200, _)))),
            "a queued HTTP/2 connection got {answer:?}\n{}",
            server.dump()
        );
    }
    drop(idle);
}
