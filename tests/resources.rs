//! Restarts at the edge of the process's resources and readiness bounds: a restart that a
//! successor could not hold (the fd limit) is refused with the reason while every connection
//! keeps working; a supervised service's first workers are not held to the ready timeout,
//! which bounds restarts only.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{Client, Server, Signal, example, signal};

/// `hello` with RLIMIT_NOFILE at `limit`, plus `args`.
fn limited(limit: u64, args: &[&str]) -> Command {
    let mut command = Command::new(example("hello"));
    command.args(["--addr", "127.0.0.1:0"]).args(args);
    // SAFETY: between fork and exec, only setrlimit (async-signal-safe) on a local value.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// A single process holding 47 keep-alive connections under a limit of 64 fds: a successor
/// with the same limit could not take them, so the restart is refused, saying why, and every
/// connection answers again from the same process.
#[test]
fn a_restart_the_successor_could_not_hold_is_refused_and_every_connection_answers() {
    let server = Server::start(limited(64, &["--workers", "0"]));
    let mut clients: Vec<Client> = (0..47).map(|_| Client::new(server.addr)).collect();
    for client in &mut clients {
        assert_eq!(client.get("/hello").unwrap().pid(), Some(server.pid));
    }
    signal(server.pid, Signal::HUP);
    let refused = server.wait_line("child failed to start");
    assert!(
        refused.contains("of its 64 fds (RLIMIT_NOFILE)") && refused.contains("still serving"),
        "{refused}"
    );
    for client in &mut clients {
        let reply = client.get("/hello").unwrap_or_else(|e| {
            panic!(
                "a connection failed after the refusal: {e:?}\n{}",
                server.dump()
            )
        });
        assert_eq!(reply.pid(), Some(server.pid));
    }
    assert!(
        clients.iter().all(|c| c.connects == 1),
        "a client reconnected"
    );
    assert_eq!(server.count("spawned child"), 0, "{}", server.dump());
}

/// Workers that take longer to start than the ready timeout: the first generation is waited
/// for and serves; a restart is bounded, fails with the reason, and the first generation
/// serves on (the line says so, because something does serve).
fn first_start_is_not_held_to_the_ready_timeout(namespaced: bool) {
    let mut command = Command::new(example("hello"));
    command.args([
        "--addr",
        "127.0.0.1:0",
        "--startup-delay",
        "1500ms",
        "--upgrade-timeout",
        "500ms",
    ]);
    let server = match namespaced {
        false => {
            command.args(["--workers", "1"]);
            Server::start(command)
        }
        true => Server::start_in_pid_namespace(command),
    };
    let [first] = server.workers_ready(1, 1)[..] else {
        panic!("one worker")
    };
    assert_eq!(server.count("failed"), 0, "{}", server.dump());
    let reply = common::get(server.addr, "/hello").unwrap();
    assert!(
        reply.body.contains(&format!("Hello from {first}!")),
        "{}",
        reply.body
    );
    signal(server.pid, Signal::HUP);
    let failed = server.wait_line("was not ready within 500ms and was killed");
    assert!(failed.contains("still serving"), "{failed}");
    let reply = common::get(server.addr, "/hello").unwrap();
    assert!(
        reply.body.contains(&format!("Hello from {first}!")),
        "{}",
        reply.body
    );
}

#[test]
fn a_supervised_first_start_is_not_held_to_the_ready_timeout() {
    first_start_is_not_held_to_the_ready_timeout(false);
}

#[test]
fn as_pid_1_the_first_start_is_not_held_to_the_ready_timeout() {
    first_start_is_not_held_to_the_ready_timeout(true);
}
