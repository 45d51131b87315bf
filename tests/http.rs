//! HTTP/1.1 conformance of the real `hello` example, as raw bytes over a real socket: framing,
//! keep-alive rules, pipelining, 100-continue, and the shapes request smuggling relies on.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use common::{DEADLINE, Server, read_reply};

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `request` and returns everything the server sends until it closes the connection.
fn until_close(server: &Server, request: &[u8]) -> String {
    let mut stream = connect(server);
    stream.write_all(request).unwrap();
    let mut all = Vec::new();
    stream
        .read_to_end(&mut all)
        .expect("the server closes the connection");
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::hello(&[]);
    let mut stream = connect(&server);
    let host = server.addr;
    let batch = format!(
        "GET /slow?ms=50 HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nfirst\
         GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecond\r\n0\r\n\r\n"
    );
    stream.write_all(batch.as_bytes()).unwrap();
    let mut reader = BufReader::new(&stream);
    let bodies: Vec<String> = (0..4)
        .map(|_| read_reply(&mut reader).unwrap().body)
        .collect();
    let pid = server.pid;
    assert_eq!(
        bodies,
        [
            format!("Slow hello from {pid} after 50 ms\n"),
            "first".into(),
            format!("Hello from {pid}!\n"),
            "second".into()
        ]
    );
}

#[test]
fn a_request_split_into_single_bytes_is_served() {
    let server = Server::hello(&[]);
    let mut stream = connect(&server);
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        server.addr
    );
    for byte in request.as_bytes() {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
    }
    let reply = read_reply(&mut BufReader::new(&stream)).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "abcde"));
    assert_eq!(reply.header("echo-trailer-t"), Some("1"));
}

/// A chunked body's trailer fields reach the handler (`recv_trailers`); a body without any,
/// or with a Content-Length, gives it `None` at once; a malformed field is a 400.
#[test]
fn trailers_reach_the_handler() {
    let server = Server::hello(&[]);
    let mut stream = connect(&server);
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nhi\r\n0\r\nDigest: sha-256=abc\r\nX-Count: 2\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nho\r\n0\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhu",
        )
        .unwrap();
    let mut reader = BufReader::new(&stream);
    let with = read_reply(&mut reader).unwrap();
    assert_eq!((with.status, with.body.as_str()), (200, "hi"));
    assert_eq!(with.header("echo-trailer-digest"), Some("sha-256=abc"));
    assert_eq!(with.header("echo-trailer-x-count"), Some("2"));
    for body in ["ho", "hu"] {
        let without = read_reply(&mut reader).unwrap();
        assert_eq!((without.status, without.body.as_str()), (200, body));
        assert!(
            !without
                .headers
                .iter()
                .any(|(n, _)| n.starts_with("echo-trailer")),
            "{:?}",
            without.headers
        );
    }
    let bad = until_close(
        &server,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon\r\n\r\n",
    );
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_asked_for() {
    let server = Server::hello(&[]);
    let all = until_close(&server, b"GET /hello HTTP/1.0\r\n\r\n");
    // The server's own version in the status line, whatever the request's (RFC 9110 §2.5).
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(
        all.ends_with(&format!("Hello from {}!\n", server.pid)),
        "{all}"
    );

    let mut stream = connect(&server);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for _ in 0..3 {
        stream
            .write_all(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let reply = read_reply(&mut reader).unwrap();
        assert_eq!(reply.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn head_has_the_length_but_no_body() {
    let server = Server::hello(&[]);
    let mut stream = connect(&server);
    let host = server.addr;
    stream
        .write_all(format!("HEAD /hello HTTP/1.1\r\nHost: {host}\r\n\r\nGET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(&stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let expected = format!("Hello from {}!\n", server.pid).len();
    assert!(
        head.contains(&format!("content-length: {expected}\r\n")),
        "{head}"
    );
    // The next bytes are the second response, not a body.
    let next = read_reply(&mut reader).unwrap();
    assert_eq!(next.body, format!("Hello from {}!\n", server.pid));
}

#[test]
fn expect_continue_is_answered_by_the_connection_itself() {
    let server = Server::hello(&[]);
    let threads = || common::status_field(server.pid, "Threads");
    let before = threads();
    let mut stream = connect(&server);
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        server.addr
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"ping").unwrap();
    let reply = read_reply(&mut BufReader::new(&stream)).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "ping"));
    assert_eq!(
        threads(),
        before,
        "answering 100-continue must not start threads"
    );
}

#[test]
fn unknown_length_responses_are_chunked() {
    let server = Server::hello(&[]);
    let mut client = common::Client::new(server.addr);
    let reply = client.get("/stream?lines=2000").unwrap();
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert_eq!(reply.body.lines().count(), 2000);
    assert!(
        reply
            .body
            .ends_with(&format!("line 1999 from {}\n", server.pid))
    );
    // The connection is still usable.
    assert_eq!(client.get("/hello").unwrap().status, 200);
    assert_eq!(client.connects, 1);
}

/// Each of these is refused with `status` and the connection closed; the next client is served.
#[test]
fn smuggling_shapes_are_refused_and_the_connection_closed() {
    let server = Server::hello(&[]);
    let cases: &[(&str, &str)] = &[
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "400",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            "400",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -4\r\n\r\n",
            "400",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\nabcd",
            "400",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            "400",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
            "400",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "501",
        ),
        (
            "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "400",
        ),
        (
            "GET /hello HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n  b\r\n\r\n",
            "400",
        ),
        ("GET /hello HTTP/1.1\nHost: a\n\n", "400"),
        ("GET /hello HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", "400"),
        ("GET /hello HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", "400"),
        ("GET /hello HTTP/1.1\r\n\r\n", "400"),
        ("BREW /hello HTTP/1.1\r\nHost: a\r\n\r\n", "501"),
    ];
    for (request, status) in cases {
        let all = until_close(&server, request.as_bytes());
        let expected = format!("HTTP/1.1 {status} ");
        assert!(all.starts_with(&expected), "{request:?} got {all:?}");
        // One response only: nothing smuggled behind it was answered.
        assert_eq!(
            all.lines().filter(|l| l.starts_with("HTTP/1.")).count(),
            1,
            "{request:?} got {all:?}"
        );
        assert!(all.contains("connection: close"), "{all}");
    }
    assert_eq!(common::get(server.addr, "/hello").unwrap().status, 200);
}

#[test]
fn oversized_head_is_431_and_oversized_body_is_413() {
    let server = Server::hello(&["--max-head-bytes", "1024", "--max-body-bytes", "100"]);
    let big_header = format!(
        "GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    assert!(until_close(&server, big_header.as_bytes()).starts_with("HTTP/1.1 431 "));
    // Declared too large: refused before reading it.
    let declared = "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n";
    assert!(until_close(&server, declared.as_bytes()).starts_with("HTTP/1.1 413 "));
    // Chunked past the limit: refused once the limit is crossed.
    let chunk = "a".repeat(80);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n{chunk}\r\n50\r\n{chunk}\r\n0\r\n\r\n"
    );
    assert!(until_close(&server, chunked.as_bytes()).starts_with("HTTP/1.1 413 "));
    // Within the limits, all is well.
    let fine = "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
        .to_owned()
        + &"b".repeat(100);
    let all = until_close(&server, fine.as_bytes());
    assert!(
        all.starts_with("HTTP/1.1 200 ") && all.ends_with(&"b".repeat(100)),
        "{all}"
    );
}

#[test]
fn an_unread_body_is_skipped_and_the_connection_reused() {
    let server = Server::hello(&[]);
    let mut stream = connect(&server);
    let host = server.addr;
    // /hello does not read the body; the connection must skip it to find the next request.
    let batch = format!(
        "GET /hello HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\n0123456789\
         GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n"
    );
    stream.write_all(batch.as_bytes()).unwrap();
    let mut reader = BufReader::new(&stream);
    for _ in 0..2 {
        let reply = read_reply(&mut reader).unwrap();
        assert_eq!(reply.body, format!("Hello from {}!\n", server.pid));
    }
    // And a garbage line after a complete exchange closes only this connection.
    (&stream)
        .write_all(b"\x16\x03\x01 not http\r\n\r\n")
        .unwrap();
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    assert!(rest.starts_with("HTTP/1.1 400 "), "{rest}");
    assert_eq!(common::get(server.addr, "/hello").unwrap().status, 200);
}

/// Methods are case-sensitive (RFC 9110 §9.1): `head` is not HEAD, and is refused with the
/// connection closed, so no proxy can be made to wait for a body that never comes.
#[test]
fn a_lowercase_method_is_not_head_and_is_refused() {
    let reply = until_close(
        &server_for_methods(),
        b"head /hello HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 501 "), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    let reply = until_close(
        &server_for_methods(),
        b"HEAD /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(
        !reply.contains("Hello from"),
        "a HEAD reply with a body: {reply}"
    );
}

fn server_for_methods() -> Server {
    Server::hello(&[])
}

/// http-types' own upgrade API (`Response::recv_upgrade`): the 101 keeps `Connection:
/// Upgrade` and has no length, and the bytes sent with the request head reach the handler.
#[test]
fn an_http_types_upgrade_gets_the_connection_and_the_bytes_behind_the_head() {
    let server = Server::hello(&[]);
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /raw-echo HTTP/1.1\r\nHost: x\r\nUpgrade: raw-echo\r\nConnection: Upgrade\r\n\r\nearly")
        .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"early") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "closed: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(
        text.starts_with("http/1.1 101 switching protocols\r\n"),
        "{text}"
    );
    assert!(text.contains("connection: upgrade\r\n"), "{text}");
    assert!(
        !text.contains("content-length") && !text.contains("content-type"),
        "{text}"
    );
    stream.write_all(b" and later").unwrap();
    let mut later = [0u8; 10];
    stream.read_exact(&mut later).unwrap();
    assert_eq!(&later, b" and later");
}

/// RFC conformance of the edges: 417 for an expectation other than 100-continue, 414 for a
/// target over the head limit, 400 for userinfo in an absolute target; each closes.
#[test]
fn unknown_expectations_long_targets_and_userinfo_are_refused_with_their_status() {
    let server = Server::hello(&["--max-head-bytes", "1024"]);
    let reply = until_close(
        &server,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 417 "), "{reply}");
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    let reply = until_close(&server, long.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 414 "), "{reply}");
    let reply = until_close(
        &server,
        b"GET http://user:pw@x/hello HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(reply.contains("userinfo"), "{reply}");
    // A later HTTP/1.x minor version is served as HTTP/1.1 (RFC 9112 §2.3).
    let reply = until_close(
        &server,
        b"GET /hello HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    // Without userinfo the absolute form is served.
    let reply = until_close(
        &server,
        b"GET http://x/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
}

/// The lean handler path (`hello --lean` serves `/hello` from it): the same answers, keep-alive
/// and pipelining as the http-types path; what it does not take (a POST) falls through.
#[test]
fn the_lean_path_answers_like_the_http_types_one_and_passes_on_the_rest() {
    let server = Server::hello(&["--lean"]);
    let mut stream = connect(&server);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // Two pipelined requests in one write, then a HEAD, on one connection.
    stream
        .write_all(
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    for _ in 0..2 {
        let reply = read_reply(&mut reader).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.pid(), Some(server.pid));
        assert!(reply.header("date").is_some());
    }
    stream
        .write_all(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        .unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    let (head, echo) = rest.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length: "), "{head}");
    // The HEAD had no body: what follows it is the POST's reply, from the http-types path.
    assert!(echo.starts_with("HTTP/1.1 200 OK\r\n"), "{echo}");
    assert!(echo.ends_with("\r\n\r\nhi"), "{echo}");
}

/// A handler's error that becomes a 5xx: the client sees the status's reason, the log the
/// error's message; a 4xx is the client's business and is not logged.
#[test]
fn a_handler_error_answered_5xx_is_logged_with_its_message() {
    let server = Server::hello(&[]);
    let reply = common::get(server.addr, "/fail").unwrap();
    assert_eq!(reply.status, 500);
    assert!(!reply.body.contains("database"), "{}", reply.body);
    server.wait_line(
        "a handler failed, answered 500 Internal Server Error to a GET: the database is down",
    );
    let reply = common::get(server.addr, "/fail?status=404").unwrap();
    assert_eq!(reply.status, 404);
    let reply = common::get(server.addr, "/fail?status=503").unwrap();
    assert_eq!(reply.status, 503);
    server.wait_line("answered 503 Service Unavailable to a GET: the database is down");
    assert_eq!(server.count("a handler failed"), 2, "{}", server.dump());
}

/// A client that sends its request and then half-closes (`shutdown(SHUT_WR)`) while the
/// request is in flight still gets the whole answer, then the close.
#[test]
fn a_half_close_with_a_request_in_flight_is_answered() {
    let server = Server::hello(&[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reader = BufReader::new(&stream);
    let reply = read_reply(&mut reader).expect("the answer");
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("after 300 ms"), "{}", reply.body);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

/// Large responses, one of unknown length (chunked) and one echoed back, read to their end.
#[test]
fn a_large_response_is_read_to_its_end() {
    let server = Server::hello(&["--max-body-bytes", "8388608"]);
    let reply = common::get(server.addr, "/stream?lines=10000").unwrap();
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 10_000);
    assert_eq!(lines[9_999], format!("line 9999 from {}", server.pid));
    let body: String = (0..200_000).map(|i| format!("{i:07}\n")).collect();
    let mut client = common::Client::new(server.addr);
    let reply = client
        .send(&format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        reply.body == body,
        "{} of {} bytes back",
        reply.body.len(),
        body.len()
    );
}

/// A response's content type is the handler's: a body set from text says `text/plain`, and
/// a response with no content (404 here) gets none invented for it.
#[test]
fn content_types_are_the_handlers_own() {
    let server = Server::hello(&[]);
    let hello = common::get(server.addr, "/hello").unwrap();
    assert_eq!(
        hello.header("content-type"),
        Some("text/plain;charset=utf-8")
    );
    let missing = common::get(server.addr, "/nothing").unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("content-type"),
        None,
        "{:?}",
        missing.headers
    );
    assert_eq!(missing.header("content-length"), Some("0"));
}

/// The benchmark's http-types floor (`fixture http-types-floor ROUNDS`) runs its rounds
/// through the fixture's own `/hello` route (it fails on any answer but 200) and reads every
/// body out; a round count it cannot read is refused with the usage.
#[test]
fn the_http_types_floor_answers_every_round_through_the_route() {
    let run = |rounds: &str| {
        std::process::Command::new(common::example("fixture"))
            .args(["http-types-floor", rounds])
            .output()
            .expect("run the fixture")
    };
    let out = run("25");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let written: usize = stdout
        .strip_prefix("25 rounds, ")
        .and_then(|rest| rest.trim().strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    // Each round: the status, the body's length, the fields and the body itself.
    let body = "Hello from 1!\n".len();
    assert!(written >= 25 * (200 + 2 * body), "{written} bytes");
    let bad = run("many");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("http-types-floor ROUNDS"), "{stderr}");
}
