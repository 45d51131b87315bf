//! Start-up of the real `hello` example: routes, `LISTENER` validation, a successor that fails.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, Scratch, Server, example};

#[test]
fn serves_hello_slow_and_404() {
    let server = Server::hello(&[]);
    let hello = common::get(server.addr, "/hello").unwrap();
    assert_eq!(hello.status, 200);
    assert_eq!(hello.body, format!("Hello from {}!\n", server.pid));
    let started = Instant::now();
    let slow = common::get(server.addr, "/slow?ms=200").unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        slow.body,
        format!("Slow hello from {} after 200 ms\n", server.pid)
    );
    assert_eq!(common::get(server.addr, "/nope").unwrap().status, 404);
    assert_eq!(common::get(server.addr, "/").unwrap().status, 404);
}

#[test]
fn keep_alive_connection_serves_many_requests() {
    let server = Server::hello(&[]);
    let mut client = common::Client::new(server.addr);
    for _ in 0..100 {
        let reply = client.get("/hello").unwrap();
        assert_eq!(reply.pid(), Some(server.pid));
        assert!(!reply.closes());
    }
    assert_eq!(client.connects, 1);
}

#[test]
fn garbage_gets_400_and_the_next_client_is_served() {
    let server = Server::hello(&[]);
    let reply = common::Client::new(server.addr)
        .send("NOT HTTP AT ALL\r\n\r\n")
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.closes());
    assert_eq!(common::get(server.addr, "/hello").unwrap().status, 200);
}

/// Runs the example with `LISTENER` set to `value` and returns its exit code and stderr.
fn run_with_listener(value: &str, addr: &str) -> (Option<i32>, String) {
    let mut child = Command::new(example("fixture"))
        .args(["--addr", addr])
        .env("LISTENER", value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hello kept running with LISTENER={value}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn malformed_listener_is_a_clear_error() {
    let (code, stderr) = run_with_listener("{not json", "127.0.0.1:0");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("LISTENER is not valid JSON"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (code, stderr) = run_with_listener(r#"{"addr":"127.0.0.1:0"}"#, "127.0.0.1:0");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("LISTENER: \"fd\" is missing"), "{stderr}");
}

#[test]
fn listener_fd_that_is_not_a_socket_is_a_clear_error() {
    // fd 0 is /dev/null here.
    let (code, stderr) = run_with_listener(
        r#"{"addr":"127.0.0.1:0","fd":0,"filename":""}"#,
        "127.0.0.1:0",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("LISTENER: fd 0 is not a socket (it is a character device)"),
        "{stderr}"
    );
}

#[test]
fn listener_fd_that_is_closed_is_a_clear_error() {
    let (code, stderr) = run_with_listener(
        r#"{"addr":"127.0.0.1:0","fd":900,"filename":""}"#,
        "127.0.0.1:0",
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("LISTENER: fd 900 is not open"), "{stderr}");
}

/// A `LISTENER` for an address the process does not ask for is an error naming both (it used
/// to be ignored, and the process bound beside it: how a Go server's successor failed).
#[test]
fn listener_for_another_address_is_an_error_naming_both() {
    let output = Command::new(example("fixture"))
        .args(["--addr", "127.0.0.1:0"])
        .env("LISTENER", r#"{"addr":":8080","fd":0,"filename":""}"#)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("\":8080\"") && text.contains("127.0.0.1:0"),
        "{text}"
    );
}

fn binary() -> Vec<u8> {
    std::fs::read(example("fixture")).unwrap()
}

#[test]
fn failed_successor_leaves_the_old_process_serving() {
    let scratch = Scratch::new("failing-successor");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0"]);
    let server = Server::start(command);

    // A deploy replaces the binary with one that cannot start.
    scratch.install("hello", b"#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
    common::signal(server.pid, common::Signal::HUP);
    let failed = server.wait_line(&format!("baton[{}]: child ", server.pid));
    assert!(
        failed.contains("failed: it exited (exit status: 1) before it was ready; still serving"),
        "{failed}"
    );
    for _ in 0..10 {
        assert_eq!(
            common::get(server.addr, "/hello").unwrap().pid(),
            Some(server.pid)
        );
    }
    assert!(common::zombie_children(server.pid).is_empty());

    // A good binary at the same path is picked up by the next restart.
    scratch.install("hello", &binary());
    let new = server.restart(server.pid);
    assert!(common::wait_gone(server.pid, DEADLINE));
    assert_eq!(common::get(server.addr, "/hello").unwrap().pid(), Some(new));
}

#[test]
fn missing_binary_leaves_the_old_process_serving() {
    let scratch = Scratch::new("missing-binary");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0"]);
    let server = Server::start(command);
    std::fs::remove_file(&path).unwrap();
    common::signal(server.pid, common::Signal::HUP);
    let failed = server.wait_line("child failed to start");
    assert!(failed.contains(&path.display().to_string()), "{failed}");
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(server.pid)
    );
    assert!(Path::new(&path).parent().unwrap().exists());
}

#[test]
fn successor_that_never_gets_ready_is_killed_at_the_upgrade_timeout() {
    let scratch = Scratch::new("hanging-successor");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0", "--upgrade-timeout", "500ms"]);
    let server = Server::start(command);
    scratch.install("hello", b"#!/bin/sh\nexec sleep 30\n");
    let started = Instant::now();
    common::signal(server.pid, common::Signal::HUP);
    server.wait_line("spawned child");
    // One upgrade at a time: a second SIGHUP meanwhile is ignored, not a second child.
    common::signal(server.pid, common::Signal::HUP);
    server.wait_line("ignored SIGHUP: an upgrade is already in progress");
    let failed = server.wait_line(&format!("baton[{}]: child ", server.pid));
    assert!(
        failed.contains("was not ready within 500ms and was killed"),
        "{failed}"
    );
    assert_eq!(server.count("spawned child"), 1, "{}", server.dump());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(common::zombie_children(server.pid).is_empty());
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(server.pid)
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_at_the_timeout() {
    let server = Server::hello(&["--keep-alive-timeout", "300ms"]);
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let request = format!("GET /hello HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    // Activity keeps it open: requests 200 ms apart, past the 300 ms since the connection opened.
    for _ in 0..3 {
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        let reply = common::read_reply(&mut std::io::BufReader::new(&stream)).unwrap();
        assert_eq!(reply.status, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle = Instant::now();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(
        read.is_ok() && rest.is_empty(),
        "expected a clean close, got {read:?} {rest:?}"
    );
    let waited = idle.elapsed();
    assert!(waited < Duration::from_secs(2), "closed after {waited:?}");
}

#[test]
fn client_that_never_finishes_its_head_gets_408_at_the_header_timeout() {
    let server = Server::hello(&["--header-timeout", "300ms"]);
    let mut slow = std::net::TcpStream::connect(server.addr).unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    std::io::Write::write_all(&mut slow, b"GET /hello HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    // Meanwhile other clients are served normally.
    assert_eq!(common::get(server.addr, "/hello").unwrap().status, 200);
    let reply = common::read_reply(&mut std::io::BufReader::new(&slow)).unwrap();
    assert_eq!(reply.status, 408);
    assert!(reply.closes());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn a_binary_that_cannot_be_executed_leaves_the_old_process_serving() {
    let scratch = Scratch::new("unexecutable");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0"]);
    let server = Server::start(command);
    // Not executable: exec fails with EACCES, and spawning reports it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    common::signal(server.pid, common::Signal::HUP);
    let failed = server.wait_line("child failed to start");
    assert!(
        failed.contains("Permission denied") && failed.contains(&path.display().to_string()),
        "{failed}"
    );
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(server.pid)
    );
    // Executable but neither a binary nor a script: refused before any exec (execvp would hand
    // it to /bin/sh), with the reason; the old process serves on.
    let staged = scratch.0.join(".staged");
    std::fs::write(&staged, b"\x00\x01\x02\x03 garbage").unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    common::signal(server.pid, common::Signal::HUP);
    let failed = server.wait_for("a second failure", |lines| {
        lines
            .iter()
            .filter(|l| l.contains(" failed"))
            .nth(1)
            .cloned()
    });
    assert!(
        failed.contains("neither an ELF binary nor a #! script")
            && failed.contains(&path.display().to_string())
            && !failed.contains("spawned"),
        "{failed}"
    );
    assert_eq!(server.count("spawned child"), 0, "{}", server.dump());
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(server.pid)
    );
    assert!(common::zombie_children(server.pid).is_empty());
}

#[test]
fn a_successor_killed_during_the_handshake_leaves_the_old_process_serving() {
    let scratch = Scratch::new("killed-successor");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0"]);
    let server = Server::start(command);
    // A successor that never gets ready on its own, killed from outside mid-handshake.
    scratch.install("hello", b"#!/bin/sh\nexec sleep 30\n");
    common::signal(server.pid, common::Signal::HUP);
    let spawned = server.wait_line("spawned child");
    let child: u32 = spawned.rsplit(' ').next().unwrap().parse().unwrap();
    common::signal(child, common::Signal::KILL);
    let failed = server.wait_line(&format!("child {child} failed"));
    assert!(failed.contains("signal: 9"), "{failed}");
    assert!(common::zombie_children(server.pid).is_empty());
    for _ in 0..10 {
        assert_eq!(
            common::get(server.addr, "/hello").unwrap().pid(),
            Some(server.pid)
        );
    }
}
