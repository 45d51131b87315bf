//! The supervising process (`hello --workers N`, and by default as PID 1): workers on one
//! shared socket, a worker killed under load, restarts that replace every worker and keep the
//! PID, `hello reload`, crash-loop back-off, a group Ctrl-C, and PID 1 of a new namespace.

mod common;

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEADLINE, Failure, Load, Scratch, Server, Signal, example, log, signal, wait_gone};

fn binary() -> Vec<u8> {
    std::fs::read(example("fixture")).expect("the example binary")
}

/// The workers of generation `generation` once `count` of them are ready (their pids).
fn workers_ready(server: &Server, generation: u64, count: usize) -> Vec<u32> {
    server.workers_ready(generation, count)
}

/// SIGHUP to the supervising process; waits until generation `next` serves and the
/// supervising process has re-executed itself in place.
fn restart(server: &Server, next: u64) {
    server.restart_workers(next);
}

/// Distinct pids answering `/hello` on fresh connections, until `want` are seen.
fn serving_pids(server: &Server, want: usize) -> HashSet<u32> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = HashSet::new();
    while seen.len() < want {
        assert!(Instant::now() < deadline, "only {seen:?} served");
        // Concurrent connections, so a busy worker leaves some to the others.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let addr = server.addr;
                std::thread::spawn(move || common::get(addr, "/slow?ms=20").ok()?.pid())
            })
            .collect();
        seen.extend(threads.into_iter().filter_map(|t| t.join().unwrap()));
    }
    seen
}

#[test]
fn two_workers_serve_and_a_killed_one_is_replaced_without_refusing_anyone() {
    let scratch = Scratch::new("workers-kill");
    let pid_file = scratch.0.join("hello.pid");
    let server = Server::hello(&["--workers", "2", "--pid-file", pid_file.to_str().unwrap()]);
    let workers = workers_ready(&server, 1, 2);
    assert_eq!(
        serving_pids(&server, 2),
        workers.iter().copied().collect::<HashSet<_>>()
    );
    assert!(
        !workers.contains(&server.pid),
        "the supervising process served"
    );

    let per_request = Load::per_request(server.addr, 4);
    let keep_alive = Load::keep_alive(server.addr, 2);
    per_request.wait_served_by(workers[0]);
    signal(workers[0], Signal::KILL);
    server.wait_line(&format!("worker {} exited", workers[0]));
    let replacement = server.wait_for("a replacement", |lines| {
        lines
            .iter()
            .filter_map(|l| log::parse(l)?.worker_ready())
            .map(|(pid, _)| pid)
            .find(|pid| !workers.contains(pid))
    });
    per_request.wait_served_by(replacement);
    let per_request = per_request.finish();
    let keep_alive = keep_alive.finish();
    // The socket stayed open in the supervising process: nobody was refused. Only what the
    // killed worker had in flight (at most one request per client) failed.
    let failures: Vec<&Failure> = per_request
        .failures
        .iter()
        .chain(&keep_alive.failures)
        .collect();
    assert!(!failures.contains(&&Failure::Refused), "{failures:?}");
    assert!(
        failures.len() <= 6,
        "{} failed: {failures:?}",
        failures.len()
    );
    // The load went on through the kill: the surviving worker and the replacement served it.
    let survivor = workers[1];
    assert!(
        per_request.pids.contains(&survivor) && per_request.pids.contains(&replacement),
        "served by {:?}",
        per_request.pids
    );
    assert!(serving_pids(&server, 2).contains(&replacement));
    let pid_file_text = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(pid_file_text.trim(), server.pid.to_string());
}

#[test]
fn sighup_replaces_every_worker_under_load_and_keeps_pid_and_connections() {
    let scratch = Scratch::new("workers-restart");
    let pid_file = scratch.0.join("hello.pid");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    let pid_arg = pid_file.to_str().unwrap();
    command.args([
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--pid-file",
        pid_arg,
    ]);
    let server = Server::start(command);
    let mut old = workers_ready(&server, 1, 2);
    let keep_alive = Load::keep_alive(server.addr, 4);
    let per_request = Load::per_request(server.addr, 2);
    for generation in 2..=4 {
        // Each restart runs the binary now at the start path.
        scratch.install("hello", &binary());
        restart(&server, generation);
        let new = workers_ready(&server, generation, 2);
        for pid in &old {
            assert!(wait_gone(*pid, DEADLINE), "old worker {pid} still runs");
            assert!(!new.contains(pid));
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", server.pid)).unwrap();
        assert_eq!(exe, path, "the supervising process runs {}", exe.display());
        old = new;
    }
    let keep_alive = keep_alive.finish();
    let per_request = per_request.finish();
    keep_alive.assert_no_failures();
    per_request.assert_no_failures();
    // Keep-alive connections moved to the new workers: no client reconnected.
    assert_eq!(keep_alive.connects, 4, "keep-alive clients reconnected");
    assert!(keep_alive.pids.iter().any(|pid| old.contains(pid)));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        server.pid.to_string()
    );
    no_zombies(server.pid);
}

/// Polls until `pid` has no unreaped children (the reaper runs on SIGCHLD, shortly after).
fn no_zombies(pid: u32) {
    let deadline = Instant::now() + DEADLINE;
    while !common::zombie_children(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "zombies of {pid}: {:?}",
            common::zombie_children(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn hello_reload_exits_zero_after_a_good_restart_and_one_with_the_reason_after_a_bad_one() {
    let scratch = Scratch::new("workers-reload");
    let pid_file = scratch.0.join("hello.pid");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    let pid_arg = pid_file.to_str().unwrap();
    command.args([
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--pid-file",
        pid_arg,
    ]);
    let server = Server::start(command);
    workers_ready(&server, 1, 1);
    let reload = |timeout: &str| {
        let mut command = Command::new(example("fixture"));
        command.args(["reload", "--pid-file", pid_arg, "--timeout", timeout]);
        command.output().expect("run hello reload")
    };
    let good = reload("15s");
    assert!(good.status.success(), "{good:?}");
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(text.contains(&format!("{} serves", server.pid)), "{text}");
    let [serving] = workers_ready(&server, 2, 1)[..] else {
        panic!("one worker in generation 2")
    };

    scratch.install("hello", b"#!/bin/sh\necho 'broken build' >&2\nexit 3\n");
    let bad = reload("15s");
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let text = String::from_utf8_lossy(&bad.stderr);
    assert!(
        text.contains("the restart failed") && text.contains("exit status: 3"),
        "{text}"
    );
    // The old worker serves on.
    common::served_by(server.addr, serving);
    let missing = Command::new(example("fixture"))
        .args(["reload", "--pid-file", "/nonexistent/x.pid"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.pid"));
}

/// A crash loop: each worker crashes (SIGABRT, as an abort would) soon after it is ready. Its
/// slot backs off, twice as long each time.
#[test]
fn a_worker_that_keeps_crashing_soon_after_start_is_replaced_with_growing_pauses() {
    let server = Server::hello(&["--workers", "1"]);
    let mut worker = workers_ready(&server, 1, 1)[0];
    for _ in 0..4 {
        signal(worker, Signal::ABORT);
        worker = server.wait_for("the next worker", |lines| {
            lines
                .iter()
                .filter_map(|l| log::parse(l)?.worker_ready())
                .map(|(pid, _)| pid)
                .next_back()
                .filter(|&pid| pid != worker)
        });
    }
    let pauses: Vec<String> = server
        .lines()
        .iter()
        .filter(|l| l.contains("unexpectedly"))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        .collect();
    // The first death is replaced at once, then 100 ms, 200 ms, 400 ms.
    assert_eq!(
        pauses,
        ["it", "100ms", "200ms", "400ms"],
        "{}",
        server.dump()
    );
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(worker)
    );
    // Waiting is not spinning.
    assert!(common::status_cpu_ticks(server.pid) < 50);
}

/// Serving workers killed from outside (SIGKILL: the OOM killer, an operator) are replaced at
/// once, however often it happens: a random worker killed every second for 10 s never leaves
/// the service without a worker for long.
#[test]
fn serving_workers_killed_every_second_are_replaced_at_once() {
    let server = Server::hello(&["--workers", "2"]);
    workers_ready(&server, 1, 2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = server.addr;
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if common::get(addr, "/hello").is_ok_and(|r| r.status == 200) {
                    answers.push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        })
    };
    let alive = |server: &Server| -> Vec<u32> {
        let lines = server.lines();
        let parsed: Vec<_> = lines.iter().filter_map(|l| log::parse(l)).collect();
        let exited: HashSet<u32> = parsed.iter().filter_map(|l| l.worker_exited()).collect();
        parsed
            .iter()
            .filter_map(|l| l.worker_ready())
            .map(|(pid, _)| pid)
            .filter(|pid| !exited.contains(pid))
            .collect()
    };
    let mut seed = u64::from(std::process::id()) | 1;
    let mut killed = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        let workers = alive(&server);
        if workers.is_empty() {
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let _ = common::kill(workers[seed as usize % workers.len()], Signal::KILL);
        killed += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = client.join().unwrap();
    let longest = answers
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or(Duration::MAX);
    assert!(killed >= 8, "{killed} kills");
    assert!(answers.len() > 100, "{} answers", answers.len());
    assert!(
        longest < Duration::from_secs(1),
        "{longest:?} without an answer\n{}",
        server.dump()
    );
    assert_eq!(server.count("keep dying"), 0, "{}", server.dump());
}

#[test]
fn ctrl_c_to_the_process_group_drains_every_worker_and_starts_none() {
    let mut command = Command::new(example("fixture"));
    command
        .args(["--addr", "127.0.0.1:0", "--workers", "2"])
        .process_group(0);
    let mut server = Server::start(command);
    workers_ready(&server, 1, 2);
    let addr = server.addr;
    let slow = std::thread::spawn(move || common::get(addr, "/slow?ms=500"));
    server.wait_in_flight("/slow", 1);
    let spawned_before = server.count("spawned child");
    let group = rustix::process::Pid::from_raw(server.pid as i32).unwrap();
    rustix::process::kill_process_group(group, Signal::INT).unwrap();
    let reply = slow
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(reply.status, 200);
    assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    assert_eq!(
        server.count("spawned child"),
        spawned_before,
        "{}",
        server.dump()
    );
    assert_eq!(server.count("replacing it"), 0, "{}", server.dump());
}

#[test]
fn as_pid_1_of_a_new_namespace_restarts_keep_serving_and_orphans_are_reaped() {
    let scratch = Scratch::new("workers-pid1");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0", "--drain-timeout", "2s"]);
    let mut server = Server::start_in_pid_namespace(command);
    server.wait_line("baton[1]: supervising 1 worker as PID 1");
    workers_ready(&server, 1, 1);

    let keep_alive = Load::keep_alive(server.addr, 2);
    let per_request = Load::per_request(server.addr, 2);
    for generation in 2..=6 {
        scratch.install("hello", &binary());
        restart(&server, generation);
        workers_ready(&server, generation, 1);
    }
    let keep_alive = keep_alive.finish();
    let per_request = per_request.finish();
    keep_alive.assert_no_failures();
    per_request.assert_no_failures();
    assert!(per_request.ok > 20, "{} served", per_request.ok);
    // Still the namespace's init, now running the binary at the start path.
    assert!(common::alive(server.pid));
    let exe = std::fs::read_link(format!("/proc/{}/exe", server.pid)).unwrap();
    assert_eq!(exe, path);

    // A handler's orphan is reparented to PID 1 and reaped when it exits.
    let reply = common::get(server.addr, "/orphan?ms=200").unwrap();
    let orphan = reply.body.trim().to_owned();
    server.wait_line(&format!("baton[1]: child {orphan} exited"));
    no_zombies(server.pid);
    handlers_get_their_childrens_exit_status(&server);

    signal(server.pid, Signal::TERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(4)),
        Some(0),
        "{}",
        server.dump()
    );
}

#[test]
fn workers_zero_keeps_the_single_process_model() {
    let server = Server::hello(&["--workers", "0"]);
    assert_eq!(common::serving_pid(server.addr), server.pid);
    assert_eq!(server.count("supervising"), 0);
}

/// Bad input for the supervising process's own state is refused with its name.
#[test]
fn a_malformed_supervisor_state_is_a_clear_error() {
    let output = Command::new(example("fixture"))
        .args(["--addr", "127.0.0.1:0"])
        .env("BATON_SUPERVISOR", "{not json")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("BATON_SUPERVISOR"), "{text}");
}

/// A second shutdown signal to the supervising process stops its draining workers at once,
/// whatever the drain timeout.
#[test]
fn a_second_sigterm_stops_draining_workers_at_once() {
    let mut server = Server::hello(&["--workers", "1", "--drain-timeout", "60s"]);
    workers_ready(&server, 1, 1);
    let addr = server.addr;
    let slow = std::thread::spawn(move || common::get(addr, "/slow?ms=30000"));
    server.wait_in_flight("/slow", 1);
    signal(server.pid, Signal::TERM);
    server.wait_line("draining 1 connections (1 requests in flight)");
    let started = Instant::now();
    signal(server.pid, Signal::TERM);
    assert_eq!(
        server.wait_exit(Duration::from_secs(5)),
        Some(1),
        "{}",
        server.dump()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The cut request was told so.
    assert_eq!(slow.join().unwrap().map(|r| r.status), Ok(503));
}

/// What a broken deploy can leave at the start path.
#[derive(Debug, Clone, Copy)]
enum Broken {
    Directory,
    NotExecutable,
    Removed,
}

/// Restarts whose successor cannot even be executed (the start path is a directory, not
/// executable, or gone), 20 of each kind: the supervising process survives every one, keeps
/// serving through its workers, and `hello reload` exits 1 with the reason. Then a good
/// binary restarts as usual.
fn a_successor_that_cannot_be_executed_never_takes_the_service_down(workers: &str) {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new(&format!("workers-noexec-{workers}"));
    let pid_file = scratch.0.join("hello.pid");
    let pid_arg = pid_file.to_str().unwrap().to_owned();
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0", "--workers", workers]);
    command.args(["--pid-file", &pid_arg]);
    let server = Server::start(command);
    let count: usize = workers.parse().unwrap();
    let serving = workers_ready(&server, 1, count);
    let reload = || {
        Command::new(example("fixture"))
            .args(["reload", "--pid-file", &pid_arg, "--timeout", "10s"])
            .output()
            .expect("run hello reload")
    };
    for kind in [Broken::Directory, Broken::NotExecutable, Broken::Removed] {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&path);
        match kind {
            Broken::Directory => std::fs::create_dir(&path).unwrap(),
            Broken::NotExecutable => {
                std::fs::write(&path, binary()).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
            Broken::Removed => {}
        }
        for attempt in 0..20 {
            let failed = reload();
            let text = String::from_utf8_lossy(&failed.stderr);
            assert_eq!(
                failed.status.code(),
                Some(1),
                "{kind:?} #{attempt}: {failed:?}\n{}",
                server.dump()
            );
            assert!(
                text.contains("the restart failed") && text.contains("cannot start"),
                "{kind:?} #{attempt}: {text}"
            );
            assert!(
                common::alive(server.pid),
                "{kind:?} #{attempt}\n{}",
                server.dump()
            );
        }
        // The first generation serves on.
        let pid = common::get(server.addr, "/hello").unwrap().pid().unwrap();
        assert!(serving.contains(&pid), "{kind:?}: {pid} answered");
    }
    assert_eq!(server.count("panicked"), 0, "{}", server.dump());
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&path);
    scratch.install("hello", &binary());
    // Another test's fork may still hold the new file open for writing for a moment (the
    // kernel then refuses to execute it: ETXTBSY); the restart is asked again until then.
    let deadline = std::time::Instant::now() + DEADLINE;
    let good = loop {
        let good = reload();
        let busy = String::from_utf8_lossy(&good.stderr).contains("Text file busy");
        if !busy || std::time::Instant::now() > deadline {
            break good;
        }
    };
    assert!(good.status.success(), "{good:?}\n{}", server.dump());
    workers_ready(&server, 2, count);
    no_zombies(server.pid);
}

#[test]
fn an_unexecutable_successor_leaves_one_worker_serving() {
    a_successor_that_cannot_be_executed_never_takes_the_service_down("1");
}

#[test]
fn an_unexecutable_successor_leaves_two_workers_serving() {
    a_successor_that_cannot_be_executed_never_takes_the_service_down("2");
}

#[test]
fn an_unexecutable_successor_leaves_four_workers_serving() {
    a_successor_that_cannot_be_executed_never_takes_the_service_down("4");
}

/// Handlers that wait for their own children (`Command::output()`) get each one's exit status,
/// while orphans exit and are reaped around them.
fn handlers_get_their_childrens_exit_status(server: &Server) {
    let addr = server.addr;
    let threads: Vec<_> = (0..4u32)
        .map(|i| {
            std::thread::spawn(move || {
                for round in 0..10u32 {
                    let code = (i * 10 + round) % 7 + 1;
                    let _ = common::get(addr, "/orphan?ms=1");
                    let reply = common::get(addr, &format!("/exit-status?code={code}")).unwrap();
                    assert_eq!(reply.status, 200, "{reply:?}");
                    assert_eq!(reply.body.trim(), format!("exit status: {code}"));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("every handler got its child's status");
    }
}

#[test]
fn a_handler_gets_its_childs_exit_status_under_a_supervising_process() {
    let server = Server::hello(&["--workers", "2"]);
    workers_ready(&server, 1, 2);
    handlers_get_their_childrens_exit_status(&server);
    no_zombies(server.pid);
}

/// Behind an init (the stand-in behaves as tini and dumb-init do: it exits with its only
/// child), hello supervises by default, says why, and restarts under load lose nothing: the
/// init's child never exits.
#[test]
fn behind_an_init_the_default_supervises_and_restarts_lose_nothing() {
    let scratch = Scratch::new("workers-init");
    let path = scratch.install("hello", &binary());
    let mut command = Command::new(&path);
    command.args(["--addr", "127.0.0.1:0"]);
    let server = Server::start_behind_init(command);
    server
        .wait_line("baton[2]: supervising 1 worker behind the init of a PID namespace (by default");
    workers_ready(&server, 1, 1);
    let keep_alive = Load::keep_alive(server.addr, 2);
    let per_request = Load::per_request(server.addr, 2);
    for generation in 2..=11 {
        scratch.install("hello", &binary());
        restart(&server, generation);
        workers_ready(&server, generation, 1);
    }
    let keep_alive = keep_alive.finish();
    let per_request = per_request.finish();
    keep_alive.assert_no_failures();
    per_request.assert_no_failures();
    assert!(per_request.ok > 20, "{} served", per_request.ok);
    assert!(common::alive(server.pid) && server.init_alive());
    no_zombies(server.pid);
}

/// A single process forced behind an init (`--workers 0`) refuses to restart, with the reason,
/// and serves on: replacing itself would end the namespace, its successor with it.
#[test]
fn behind_an_init_a_single_process_refuses_a_restart_that_would_end_the_service() {
    let mut command = Command::new(example("fixture"));
    command.args(["--addr", "127.0.0.1:0", "--workers", "0"]);
    let server = Server::start_behind_init(command);
    assert_eq!(common::serving_pid(server.addr), 2);
    signal(server.pid, Signal::HUP);
    server.wait_line(
        "baton[2]: ignored SIGHUP: this process's parent is the init of its PID namespace",
    );
    assert_eq!(server.count("spawned child"), 0, "{}", server.dump());
    assert_eq!(common::serving_pid(server.addr), 2);
    assert!(server.init_alive());
}
