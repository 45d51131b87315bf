//! Several listeners (TCP and Unix) across restarts, Unix socket files, socket activation.

mod common;

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::{DEADLINE, Scratch, Server, Signal, example, signal, wait_gone};

#[test]
fn two_tcp_listeners_and_a_unix_socket_survive_restarts_without_failures() {
    let scratch = Scratch::new("three-listeners");
    let socket = scratch.0.join("hello.sock");
    let unix = format!("unix:{}", socket.display());
    let server = Server::hello(&["--addr", "127.0.0.1:0", "--addr", &unix]);
    let addresses = server.addresses(3);
    assert_eq!(addresses.len(), 3, "{addresses:?}");
    assert_eq!(addresses[2], unix);
    let second: std::net::SocketAddr = addresses[1].parse().unwrap();
    assert_ne!(second, server.addr);

    // Load on every listener while the server restarts three times.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for target in 0..3 {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        let (first, socket) = (server.addr, socket.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let reply = match target {
                    0 => common::get(first, "/hello"),
                    1 => common::get(second, "/hello"),
                    _ => common::get_unix(&socket, "/hello"),
                };
                match reply {
                    Ok(reply) if reply.status == 200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures
                        .lock()
                        .unwrap()
                        .push(format!("listener {target}: {other:?}")),
                };
            }
        }));
    }
    let mut pid = server.pid;
    for _ in 0..3 {
        let next = server.restart(pid);
        assert!(wait_gone(pid, DEADLINE));
        // The socket file stays through every handoff.
        assert!(socket.exists(), "the restart removed {}", socket.display());
        pid = next;
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", server.dump());
    assert!(served.load(Ordering::Relaxed) > 30);
    // Each successor got all three listeners, in order, as fds 3, 4, 5.
    let inherited: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.starts_with(&format!("baton[{pid}]: listening")))
        .collect();
    assert_eq!(inherited.len(), 3, "{inherited:?}");
    for (i, line) in inherited.iter().enumerate() {
        assert!(
            line.ends_with(&format!("(fd {}, inherited)", 3 + i)),
            "{line}"
        );
    }
    assert_eq!(
        common::get_unix(&socket, "/hello").unwrap().pid(),
        Some(pid)
    );
    assert_eq!(common::get(second, "/hello").unwrap().pid(), Some(pid));
    // A final shutdown removes the socket file.
    signal(pid, Signal::TERM);
    assert!(wait_gone(pid, DEADLINE));
    assert!(
        !socket.exists(),
        "the final shutdown left {}",
        socket.display()
    );
}

/// The most listeners `bind_all` takes, plus the readiness pipe and the relay, all reach the
/// successor (a restart with 32 used to fail with EINVAL: the fd copies were sized for the
/// listeners and the pipe only).
#[test]
fn thirty_two_listeners_restart_and_each_is_served_by_the_successor() {
    let args: Vec<&str> = std::iter::repeat_n(["--addr", "127.0.0.1:0"], 31)
        .flatten()
        .collect();
    let server = Server::hello(&args);
    let addresses = server.addresses(32);
    assert_eq!(addresses.len(), 32, "{addresses:?}");
    let next = server.restart(server.pid);
    assert!(
        wait_gone(server.pid, DEADLINE),
        "the old process is still there"
    );
    for address in &addresses {
        let reply = common::get(address.parse().unwrap(), "/hello").expect(address);
        assert_eq!(
            reply.pid(),
            Some(next),
            "{address} was not served by the successor"
        );
    }
}

#[test]
fn a_live_unix_socket_is_not_taken_over_by_a_second_server() {
    let scratch = Scratch::new("live-unix");
    let unix = format!("unix:{}", scratch.0.join("s.sock").display());
    let _first = Server::hello(&["--addr", &unix]);
    let output = Command::new(example("fixture"))
        .args(["--addr", &unix])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is in use: a server is accepting on it"),
        "{stderr}"
    );
}

/// In a forked child before exec: put `fds[i]` at fd `3 + i`, without CLOEXEC.
fn place_at_3(fds: &[std::os::fd::RawFd; 2]) -> std::io::Result<()> {
    let mut copies = Vec::new();
    for &fd in fds {
        // SAFETY: fd is a listener the test owns and keeps open until the spawn returns.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        copies.push(rustix::io::fcntl_dupfd_cloexec(borrowed, 10)?);
    }
    for (i, copy) in copies.iter().enumerate() {
        // SAFETY: 3 + i is only a dup2 target in this child about to exec; ManuallyDrop keeps it
        // from being closed here.
        let mut target =
            std::mem::ManuallyDrop::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(3 + i as i32) });
        rustix::io::dup2(copy, &mut target)?;
    }
    Ok(())
}

/// The test plays systemd: it binds two sockets and passes them as fds 3 and 4 with
/// LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID set to the server's own pid (a shell sets it to
/// `$$` and execs the server, which keeps that pid).
#[test]
fn socket_activation_adopts_the_passed_sockets_and_restarts_with_listener() {
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (web_addr, api_addr) = (web.local_addr().unwrap(), api.local_addr().unwrap());
    let fds = [web.as_raw_fd(), api.as_raw_fd()];
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(example("fixture"))
        // The first socket is matched by its bound address, the second by its name.
        .args(["--addr", &web_addr.to_string(), "--addr", "api"])
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "web:api")
        .env("BATON_TEST_MARK", "1");
    // SAFETY: the closure makes only fcntl/dup2 calls on fds this process owns; the Vec it
    // fills holds two entries and is the only allocation, made in the child before exec.
    unsafe {
        command.pre_exec(move || place_at_3(&fds));
    }
    let server = Server::start(command);
    drop((web, api));
    server.addresses(2);
    let lines = server.lines();
    let has = |tail: String| lines.iter().any(|l| l.ends_with(&tail));
    assert!(
        has(format!("listening on {web_addr} (fd 3, socket-activated)")),
        "{lines:?}"
    );
    assert!(
        has(format!("listening on {api_addr} (fd 4, socket-activated)")),
        "{lines:?}"
    );
    assert_eq!(
        common::get(web_addr, "/hello").unwrap().pid(),
        Some(server.pid)
    );
    assert_eq!(
        common::get(api_addr, "/hello").unwrap().pid(),
        Some(server.pid)
    );
    // Processes the handler starts do not see the activation variables.
    let seen = common::child_env(web_addr);
    assert!(seen.iter().any(|n| n == "BATON_TEST_MARK"), "{seen:?}");
    assert!(!seen.iter().any(|n| n.starts_with("LISTEN")), "{seen:?}");
    // A restart hands both on through LISTENER, without the LISTEN_* variables.
    let next = server.restart(server.pid);
    assert!(wait_gone(server.pid, DEADLINE));
    assert_eq!(common::get(api_addr, "/hello").unwrap().pid(), Some(next));
    let environ = std::fs::read(format!("/proc/{next}/environ")).unwrap();
    let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    assert!(
        !vars.iter().any(|v| v.starts_with(b"LISTEN_")),
        "LISTEN_* reached the successor"
    );
    assert!(
        vars.iter().any(|v| v.starts_with(b"LISTENER=[")),
        "two listeners travel as an array"
    );
}

#[test]
fn socket_activation_for_another_pid_is_ignored() {
    let mut command = Command::new(example("fixture"));
    command
        .args(["--addr", "127.0.0.1:0"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1");
    let server = Server::start(command);
    assert!(server.wait_line("listening on").ends_with("created)"));
}
