//! Limits that keep a misbehaving client (or too many) from hurting the others.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEADLINE, Server, example, read_reply};

fn hello_on(stream: &mut TcpStream) -> common::Reply {
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    read_reply(&mut BufReader::new(&*stream)).unwrap()
}

#[test]
fn at_max_connections_new_ones_wait_until_one_closes() {
    let server = Server::hello(&["--max-connections", "2"]);
    let mut first = TcpStream::connect(server.addr).unwrap();
    let mut second = TcpStream::connect(server.addr).unwrap();
    assert_eq!(hello_on(&mut first).status, 200);
    assert_eq!(hello_on(&mut second).status, 200);
    // The third is accepted by the kernel but not served while two are open.
    let mut third = TcpStream::connect(server.addr).unwrap();
    third
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = third.read(&mut byte);
    assert!(early.is_err(), "served beyond the limit: {early:?}");
    // One closes; the waiting one is served.
    drop(first);
    third.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = BufReader::new(&third);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    assert_eq!(hello_on(&mut second).status, 200);
}

/// The server-side socket of the connection from `client` is gone from `/proc/net/tcp`.
fn server_side_closed(server: std::net::SocketAddr, client: std::net::SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let hex = |port: u16| format!(":{port:04X}");
    !table.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.len() > 2
            && fields[1].ends_with(&hex(server.port()))
            && fields[2].ends_with(&hex(client.port()))
    })
}

#[test]
fn a_client_that_stops_reading_is_cut_at_the_write_timeout() {
    // The write timeout bounds a stalled write to its setting (it used to take about twice
    // as long: a write that only retried when its timer fired found a little room each time).
    let server = Server::hello(&["--write-timeout", "2s", "--max-body-bytes", "33554432"]);
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    let client = stalled.local_addr().unwrap();
    // An echo larger than the socket buffers on both sides, never read.
    let body = vec![b'x'; 24 << 20];
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&body).unwrap();
    // The response has started (the server is done reading the upload): from here on the
    // client reads nothing, and the server's buffers fill within milliseconds on loopback.
    let mut first = [0u8; 1];
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(stalled.read(&mut first).unwrap(), 1);
    let started = Instant::now();
    while !server_side_closed(server.addr, client) {
        assert!(
            started.elapsed() < DEADLINE,
            "the stalled connection was never closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Within 20% of the setting. (The kernel may still take a little of the response for a
    // while after the client stopped reading, as its receive buffer grows: ~0.2 s here.)
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1600) && took <= Duration::from_millis(2400),
        "cut after {took:?} for a 2 s write timeout"
    );
    // Meanwhile and afterwards, others are served.
    assert_eq!(common::get(server.addr, "/hello").unwrap().status, 200);
}

#[test]
fn out_of_fds_the_server_backs_off_and_recovers() {
    let mut command = Command::new(example("fixture"));
    command.args(["--addr", "127.0.0.1:0"]);
    // SAFETY: setrlimit is a plain syscall on the forked child before exec.
    unsafe {
        command.pre_exec(|| {
            let limit = rustix::process::Rlimit {
                current: Some(40),
                maximum: Some(40),
            };
            rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
            Ok(())
        });
    }
    let server = Server::start(command);
    let open_fds = common::fd_count(server.pid);
    // More idle connections than fds are left: accept hits EMFILE.
    let mut held: Vec<TcpStream> = (0..(40 - open_fds + 10))
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    server.wait_line("accept failed: Too many open files");
    // Backing off, not spinning: CPU over half a second stays low.
    let cpu = || common::status_cpu_ticks(server.pid);
    let before = cpu();
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let used = cpu() - before;
    assert!(used <= 15, "{used} ticks of CPU in 0.5 s while out of fds");
    // Load drops: connections close, and the server serves again (the queued ones too).
    held.truncate(5);
    let mut reply = common::get(server.addr, "/hello");
    let deadline = Instant::now() + DEADLINE;
    while reply.is_err() && Instant::now() < deadline {
        reply = common::get(server.addr, "/hello");
    }
    assert_eq!(reply.unwrap().pid(), Some(server.pid));
    for stream in &mut held {
        assert_eq!(hello_on(stream).status, 200);
    }
}

#[test]
fn slowloris_connections_are_cut_at_the_header_timeout_while_others_are_served() {
    let server = Server::hello(&["--header-timeout", "1s"]);
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    for stream in &mut slow {
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
    }
    let started = Instant::now();
    // Trickle a header line to each every 200 ms, for longer than the timeout; meanwhile a
    // normal client's requests keep their normal latency.
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(1500) {
        for stream in &mut slow {
            let _ = stream.write_all(b"X-Slow: 1\r\n");
        }
        for _ in 0..5 {
            let sent = Instant::now();
            assert_eq!(common::get(server.addr, "/hello").unwrap().status, 200);
            worst = worst.max(sent.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        worst < Duration::from_millis(250),
        "a normal request took {worst:?}"
    );
    // Every trickling connection got 408 and was closed.
    for stream in &mut slow {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

/// Sends a head announcing a 100-byte body and 10 bytes of it, then stalls.
fn stalled_body(server: &Server, target: &str) -> (TcpStream, Instant) {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let head = format!("{target} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[b'x'; 10]).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    (stream, Instant::now())
}

#[test]
fn a_stalled_request_body_gets_408_at_the_body_timeout() {
    let server = Server::hello(&["--body-timeout", "300ms"]);
    let (mut stream, sent) = stalled_body(&server, "POST /echo");
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("closed by the server");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(text.contains("connection: close"), "{text:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(common::get(server.addr, "/hello").unwrap().status, 200);
}

/// The timeout is for a stall, not for the whole body: one that keeps coming is never cut.
#[test]
fn a_slow_but_steady_request_body_is_not_cut() {
    let server = Server::hello(&["--body-timeout", "300ms"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(60));
        stream.write_all(b"y").unwrap();
    }
    assert!(started.elapsed() > Duration::from_millis(600));
    let reply = read_reply(&mut BufReader::new(&stream)).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "yyyyyyyyyyyy");
}

/// A handler that ignores the body answers at once; the rest of the body, which the server
/// skips to reuse the connection, is subject to the same timeout.
#[test]
fn a_stalled_body_the_handler_ignored_closes_the_connection_at_the_body_timeout() {
    let server = Server::hello(&["--body-timeout", "300ms"]);
    let (stream, _) = stalled_body(&server, "GET /hello");
    let mut reader = BufReader::new(&stream);
    assert_eq!(read_reply(&mut reader).unwrap().status, 200);
    let answered = Instant::now();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("closed by the server");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(answered.elapsed() < DEADLINE);
}

/// A connection that never sends a byte gets 408 at the header timeout from its accept (not
/// the keep-alive timeout), so silent sockets cannot hold `max_connections` slots.
#[test]
fn silent_connections_get_408_at_the_header_timeout_and_free_their_slots() {
    let server = Server::hello(&["--header-timeout", "400ms", "--max-connections", "2"]);
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    for stream in &mut silent {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "silent connections were cut after {took:?}"
    );
    // Their slots are free again (once the clients close their side too).
    drop(silent);
    let mut next = TcpStream::connect(server.addr).unwrap();
    next.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(hello_on(&mut next).status, 200);
}

/// At the drain timeout, a request whose handler has not answered gets 503 with
/// `Connection: close` and `Retry-After: 0`, not an empty reply a client could take for an
/// answer; and a response cut mid-body (close-delimited, HTTP/1.0) ends with a reset, not a
/// FIN that would look like its end.
#[test]
fn cuts_at_the_drain_timeout_are_visible_as_503_or_a_reset() {
    let mut server = Server::hello(&["--drain-timeout", "300ms"]);
    let mut waiting = TcpStream::connect(server.addr).unwrap();
    waiting.set_read_timeout(Some(DEADLINE)).unwrap();
    waiting
        .write_all(b"GET /slow?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut dripping = TcpStream::connect(server.addr).unwrap();
    dripping.set_read_timeout(Some(DEADLINE)).unwrap();
    dripping
        .write_all(b"GET /drip?ms=20 HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 64];
    let n = dripping.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200 "));
    common::signal(server.pid, common::Signal::TERM);
    let reply = read_reply(&mut BufReader::new(&waiting)).unwrap();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.header("retry-after"), Some("0"));
    let mut rest = Vec::new();
    let ended = dripping.read_to_end(&mut rest);
    assert!(
        ended
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "a cut body ended with {ended:?} after {} bytes",
        rest.len()
    );
    assert_eq!(server.wait_exit(DEADLINE), Some(1), "{}", server.dump());
    assert!(
        server.count("exiting: 2 requests cut") == 1,
        "{}",
        server.dump()
    );
}
