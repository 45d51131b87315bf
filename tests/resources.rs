//! Restarts at the edge of the process's resources and readiness bounds: a restart that a
//! successor could not hold (the fd limit) is refused with the reason while every connection
//! keeps working; a supervised service's first workers are not held to the ready timeout,
//! which bounds restarts only.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{Client, Scratch, Server, Signal, example, signal};

/// `hello` with RLIMIT_NOFILE at `limit`, plus `args`.
fn limited(limit: u64, args: &[&str]) -> Command {
    let mut command = Command::new(example("fixture"));
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

/// The process models a test here runs in.
#[derive(Clone, Copy, Debug)]
enum Model {
    Single,
    Workers(usize),
    /// PID 1 of a PID namespace (one worker).
    Pid1,
}

const MODELS: [Model; 4] = [
    Model::Single,
    Model::Workers(1),
    Model::Workers(2),
    Model::Pid1,
];

impl Model {
    fn start(self, mut command: Command) -> Server {
        match self {
            Model::Single => {
                command.args(["--workers", "0"]);
                Server::start(command)
            }
            Model::Workers(n) => {
                command.args(["--workers", &n.to_string()]);
                Server::start(command)
            }
            Model::Pid1 => Server::start_in_pid_namespace(command),
        }
    }

    /// The pids that serve generation 1 (the process itself in the single model).
    fn serving(self, server: &Server) -> Vec<u32> {
        match self {
            Model::Single => vec![server.pid],
            Model::Workers(n) => server.workers_ready(1, n),
            Model::Pid1 => server.workers_ready(1, 1),
        }
    }
}

/// Keep-alive connections near the fd limit of 64, then SIGHUP: a process whose successor
/// could not hold its connections refuses the restart, saying why, and every connection
/// answers again from the same process; where they fit (two workers share them), they move.
/// Either way no client reconnects, and nothing is reported cut or lost.
fn keep_alive_connections_at_the_fd_limit(model: Model) {
    let connections = match model {
        Model::Single => 46,
        _ => 40,
    };
    let server = model.start(limited(64, &[]));
    let first = model.serving(&server);
    let mut clients: Vec<Client> = (0..connections).map(|_| Client::new(server.addr)).collect();
    let mut held = std::collections::HashMap::<u32, usize>::new();
    for client in &mut clients {
        let pid = client.get("/hello").unwrap().pid().unwrap();
        assert!(first.contains(&pid), "{pid} is not of {first:?}");
        *held.entry(pid).or_default() += 1;
    }
    signal(server.pid, Signal::HUP);
    // Refused where a successor could not hold what one process holds; else a restart.
    let refusal = server.wait_for("the restart's outcome", |lines| {
        let refused = lines.iter().find(|l| l.contains("failed to start"));
        let restarted = lines.iter().any(|l| l.contains("restarted: generation 2"));
        match (refused, restarted) {
            (Some(line), _) => Some(Some(line.clone())),
            (None, true) => Some(None),
            (None, false) => None,
        }
    });
    let serving = match (refusal, model) {
        (Some(line), _) => {
            assert!(
                line.contains("of its 64 fds (RLIMIT_NOFILE)") && line.contains("still serving"),
                "{line}"
            );
            first.clone()
        }
        (None, Model::Workers(n)) => server.workers_ready(2, n),
        (None, _) => panic!(
            "{model:?}: {held:?} restarted at the limit\n{}",
            server.dump()
        ),
    };
    for client in &mut clients {
        let reply = client.get("/hello").unwrap_or_else(|e| {
            panic!(
                "{model:?}: a connection failed after SIGHUP: {e:?}\n{}",
                server.dump()
            )
        });
        // (A request that reaches an old worker before its retire does is answered there,
        // and the connection moves after it.)
        let pid = reply.pid().unwrap();
        assert!(
            serving.contains(&pid) || first.contains(&pid),
            "{pid} is not of {serving:?} or {first:?}"
        );
    }
    assert!(
        clients.iter().all(|c| c.connects == 1),
        "{model:?}: a client reconnected\n{}",
        server.dump()
    );
    // Nothing cut, dropped or lost on the way.
    for line in server.lines() {
        let exit = line.contains("exiting:")
            && !line.ends_with("0 requests cut by the drain timeout, 0 connections dropped");
        assert!(
            !exit && !line.contains("was lost"),
            "{model:?}: {line}\n{}",
            server.dump()
        );
    }
}

#[test]
fn keep_alive_connections_at_the_fd_limit_in_every_model() {
    for model in MODELS {
        keep_alive_connections_at_the_fd_limit(model);
    }
}

/// A service that takes longer to start than the ready timeout: the first start is waited
/// for and serves (supervised: the first workers are not held to the bound); a restart is
/// bounded, `reload` gets the reason, and the first generation serves on (the line says so,
/// because something does serve).
fn first_start_is_not_held_to_the_ready_timeout(model: Model) {
    let scratch = Scratch::new(&format!("resources-ready-{model:?}"));
    let pid_file = scratch.0.join("hello.pid");
    let pid_arg = pid_file.to_str().unwrap();
    let mut command = Command::new(example("fixture"));
    command.args([
        "--addr",
        "127.0.0.1:0",
        "--startup-delay",
        "1500ms",
        "--upgrade-timeout",
        "500ms",
        "--pid-file",
        pid_arg,
    ]);
    let server = model.start(command);
    let first = model.serving(&server);
    assert_eq!(server.count("failed"), 0, "{}", server.dump());
    for _ in 0..4 {
        let pid = common::get(server.addr, "/hello").unwrap().pid().unwrap();
        assert!(first.contains(&pid), "{pid} is not of {first:?}");
    }
    // (As PID 1, the pid file names it as its namespace does: reload from inside.)
    let mut reload = Command::new(example("fixture"));
    reload.args(["reload", "--pid-file", pid_arg, "--timeout", "10s"]);
    let reload = server.inside(reload).output().expect("run hello reload");
    assert_eq!(reload.status.code(), Some(1), "{model:?}: {reload:?}");
    let why = String::from_utf8_lossy(&reload.stderr);
    assert!(
        why.contains("was not ready within 500ms"),
        "{model:?}: {why}"
    );
    let failed = server.wait_line("was not ready within 500ms and was killed");
    assert!(failed.contains("still serving"), "{failed}");
    for _ in 0..4 {
        let pid = common::get(server.addr, "/hello").unwrap().pid().unwrap();
        assert!(first.contains(&pid), "{pid} is not of {first:?}");
    }
}

#[test]
fn a_first_start_is_not_held_to_the_ready_timeout_in_every_model() {
    for model in MODELS {
        first_start_is_not_held_to_the_ready_timeout(model);
    }
}

/// More connections than fds: accept fails while they wait. The log says so at most about
/// once a second per serving process, with how many failures it did not report one by one;
/// when connections close, the waiting ones are served.
fn an_accept_error_storm_stays_a_few_lines_a_second(model: Model) {
    let server = model.start(limited(64, &[]));
    let serving = model.serving(&server);
    let mut held: Vec<std::net::TcpStream> = (0..serving.len() * 64)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    server.wait_line("accept failed: Too many open files");
    let before = server.count("accept failed");
    let window = std::time::Instant::now();
    server.wait_line("more failed since the last report");
    while window.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let said = server.count("accept failed") - before;
    let seconds = window.elapsed().as_secs_f64();
    assert!(
        said as f64 <= (seconds + 1.0) * serving.len() as f64,
        "{model:?}: {said} lines in {seconds:.1} s from {} processes\n{}",
        serving.len(),
        server.dump()
    );
    // Load drops: the waiting connections are accepted and served.
    held.truncate(8);
    drop(held);
    let reply = common::get(server.addr, "/hello").unwrap();
    assert!(serving.contains(&reply.pid().unwrap()), "{}", server.dump());
}

#[test]
fn an_accept_error_storm_stays_a_few_lines_a_second_in_every_model() {
    for model in MODELS {
        an_accept_error_storm_stays_a_few_lines_a_second(model);
    }
}
