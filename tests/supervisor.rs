//! Running under a supervisor: the PID file and systemd's NOTIFY_SOCKET across restarts.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEADLINE, Scratch, Server, Signal, example, signal, wait_gone};

fn pid_in(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn pid_file_follows_the_serving_process_and_goes_at_shutdown() {
    let scratch = Scratch::new("pid-file");
    let pid_file = scratch.0.join("hello.pid");
    let server = Server::hello(&["--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(pid_in(&pid_file), Some(server.pid));
    let mut pid = server.pid;
    for _ in 0..3 {
        let next = server.restart(pid);
        // The successor wrote it before it reported ready, so it is already there.
        assert_eq!(pid_in(&pid_file), Some(next));
        assert!(wait_gone(pid, DEADLINE));
        // The old process's exit left it alone.
        assert_eq!(pid_in(&pid_file), Some(next));
        pid = next;
    }
    let mut leftovers: Vec<_> = std::fs::read_dir(&scratch.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    leftovers.sort();
    // The PID file, and the record of the last restart that `hello reload` reads.
    assert_eq!(
        leftovers,
        ["hello.pid", "hello.pid.restart"],
        "temporary files left: {leftovers:?}"
    );
    let record = std::fs::read_to_string(scratch.0.join("hello.pid.restart")).unwrap();
    assert_eq!(record, format!("restarts 3\nserving {pid}\nok\n"));
    signal(pid, Signal::TERM);
    assert!(wait_gone(pid, DEADLINE));
    assert!(!pid_file.exists(), "the final shutdown left the PID file");
    assert!(!scratch.0.join("hello.pid.restart").exists());
}

#[test]
fn pid_file_naming_another_process_is_not_removed() {
    let scratch = Scratch::new("pid-file-other");
    let pid_file = scratch.0.join("hello.pid");
    let mut server = Server::hello(&["--pid-file", pid_file.to_str().unwrap()]);
    std::fs::write(&pid_file, "1\n").unwrap();
    signal(server.pid, Signal::TERM);
    assert_eq!(server.wait_exit(DEADLINE), Some(0));
    assert_eq!(pid_in(&pid_file), Some(1));
}

/// A datagram socket in `scratch` playing systemd's notification socket.
fn notify_socket(scratch: &Scratch) -> (UnixDatagram, std::path::PathBuf) {
    let path = scratch.0.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (socket, path)
}

/// Reads notifications until `want` arrives (each a whole datagram); returns all seen.
fn until(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 512];
    while !seen.iter().any(|m| m.contains(want)) {
        assert!(Instant::now() < deadline, "no {want:?} among {seen:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn notify_socket_gets_ready_reloading_mainpid_and_stopping() {
    let scratch = Scratch::new("notify");
    let (socket, path) = notify_socket(&scratch);
    let mut command = Command::new(example("fixture"));
    command
        .args(["--addr", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path);
    let server = Server::start(command);
    let mut seen = Vec::new();
    until(&socket, "READY=1", &mut seen);
    assert_eq!(seen, ["READY=1\n"]);

    let next = server.restart(server.pid);
    until(&socket, "MAINPID=", &mut seen);
    assert!(
        seen[1].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{seen:?}"
    );
    assert_eq!(seen[2], format!("MAINPID={next}\nREADY=1\n"));
    assert!(wait_gone(server.pid, DEADLINE));

    signal(next, Signal::TERM);
    until(&socket, "STOPPING=1", &mut seen);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(wait_gone(next, DEADLINE));
}

#[test]
fn a_failed_restart_reports_ready_again() {
    let scratch = Scratch::new("notify-failed");
    let (socket, path) = notify_socket(&scratch);
    let binary = scratch.0.join("hello");
    std::fs::copy(example("fixture"), &binary).unwrap();
    let mut command = Command::new(&binary);
    command
        .args(["--addr", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path);
    let server = Server::start(command);
    let mut seen = Vec::new();
    until(&socket, "READY=1", &mut seen);
    std::fs::remove_file(&binary).unwrap();
    signal(server.pid, Signal::HUP);
    until(&socket, "STATUS=restart failed", &mut seen);
    assert!(seen[1].starts_with("RELOADING=1"), "{seen:?}");
    assert!(
        seen[2].starts_with("READY=1\nSTATUS=restart failed: cannot start"),
        "{seen:?}"
    );
}

/// `hello reload` in the single-process model answers with the successor's pid.
#[test]
fn hello_reload_names_the_successor_in_the_single_process_model() {
    let scratch = Scratch::new("reload-single");
    let pid_file = scratch.0.join("hello.pid");
    let path = pid_file.to_str().unwrap();
    let server = Server::hello(&["--pid-file", path]);
    let output = Command::new(example("fixture"))
        .args(["reload", "--pid-file", path])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let successor = pid_in(&pid_file).unwrap();
    assert_ne!(successor, server.pid);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.trim(), format!("restarted: {successor} serves"));
    assert!(wait_gone(server.pid, DEADLINE));
}

/// A supervising process names itself as MAINPID before and after a restart, and says how
/// many workers serve; its workers send nothing (they do not see NOTIFY_SOCKET).
#[test]
fn a_supervising_process_keeps_mainpid_and_reports_its_workers() {
    let scratch = Scratch::new("notify-workers");
    let (socket, path) = notify_socket(&scratch);
    let mut command = Command::new(example("fixture"));
    command
        .args(["--addr", "127.0.0.1:0", "--workers", "2"])
        .env("NOTIFY_SOCKET", &path);
    let server = Server::start(command);
    let mut seen = Vec::new();
    until(&socket, "READY=1", &mut seen);
    let ready = format!(
        "MAINPID={}\nREADY=1\nSTATUS=2 workers serving (generation 1)\n",
        server.pid
    );
    assert_eq!(seen, [ready]);
    signal(server.pid, Signal::HUP);
    until(&socket, "generation 2", &mut seen);
    assert!(seen[1].starts_with("RELOADING=1"), "{seen:?}");
    let ready = format!(
        "MAINPID={}\nREADY=1\nSTATUS=2 workers serving (generation 2)\n",
        server.pid
    );
    assert_eq!(seen[2], ready);
    signal(server.pid, Signal::TERM);
    until(&socket, "STOPPING=1", &mut seen);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(wait_gone(server.pid, DEADLINE));
}

/// SIGUSR2 to `server`'s first process: its child, once `oldbin` names the old process.
fn binary_upgrade(server: &Server, oldbin: &std::path::Path) -> u32 {
    signal(server.pid, Signal::USR2);
    let line = server.wait_line(&format!("baton[{}]: child ", server.pid));
    let child = common::child_pid(&line);
    let deadline = Instant::now() + DEADLINE;
    while pid_in(oldbin) != Some(server.pid) {
        assert!(Instant::now() < deadline, "no .oldbin");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// SIGUSR2 is nginx's binary upgrade: the new process gets the PID file, the old one's pid is
/// kept in `<pid file>.oldbin`, a further SIGHUP or SIGUSR2 to the old one is refused, and
/// SIGQUIT to the old one finishes the upgrade; SIGQUIT to the new one rolls it back.
#[test]
fn sigusr2_is_a_binary_upgrade_that_can_be_finished_or_rolled_back() {
    let scratch = Scratch::new("usr2");
    let pid_file = scratch.0.join("hello.pid");
    let oldbin = scratch.0.join("hello.pid.oldbin");
    let path = pid_file.to_str().unwrap();

    // Rolled back: the new process goes, the old one has the PID file again.
    let mut server = Server::hello(&["--pid-file", path]);
    let child = binary_upgrade(&server, &oldbin);
    assert_eq!(pid_in(&pid_file), Some(child));
    signal(server.pid, Signal::HUP);
    server.wait_line("ignored SIGHUP: the SIGUSR2 successor still runs");
    signal(child, Signal::QUIT);
    assert!(wait_gone(child, DEADLINE));
    let deadline = Instant::now() + DEADLINE;
    while pid_in(&pid_file) != Some(server.pid) || oldbin.exists() {
        assert!(
            Instant::now() < deadline,
            "the old process did not take the PID file back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(common::serving_pid(server.addr), server.pid);

    // Finished: the old process goes, the new one keeps the PID file, .oldbin goes.
    signal(server.pid, Signal::USR2);
    let second = server.wait_for("the second SIGUSR2 child", |lines| {
        lines
            .iter()
            .filter_map(|l| common::log::parse(l))
            .filter(|l| l.pid == server.pid)
            .filter_map(|l| l.child())
            .filter(|&(pid, outcome)| pid != child && outcome == "ready")
            .map(|(pid, _)| pid)
            .next()
    });
    signal(server.pid, Signal::QUIT);
    assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    assert_eq!(pid_in(&pid_file), Some(second));
    assert!(!oldbin.exists(), ".oldbin left behind");
    common::served_by(server.addr, second);
    signal(second, Signal::TERM);
    assert!(wait_gone(second, DEADLINE));
}

/// SIGUSR2, then SIGHUP to the new process (nginx's binary upgrade, then a restart of the
/// new binary): the new process hands over to its own successor and exits. The old process
/// sees its child exit, but the PID file names a live process that serves: it leaves the
/// PID file alone and stays the old binary. SIGQUIT to it then finishes the upgrade, and
/// stopping by the PID file stops the service.
#[test]
fn a_restart_of_the_sigusr2_successor_keeps_the_pid_file_naming_who_serves() {
    let scratch = Scratch::new("usr2-hup");
    let pid_file = scratch.0.join("hello.pid");
    let oldbin = scratch.0.join("hello.pid.oldbin");
    let path = pid_file.to_str().unwrap();
    let mut server = Server::hello(&["--pid-file", path]);
    let child = binary_upgrade(&server, &oldbin);
    signal(child, Signal::HUP);
    let grandchild = server.wait_for("the SIGUSR2 child's successor", |lines| {
        lines
            .iter()
            .filter_map(|l| common::log::parse(l))
            .filter(|l| l.pid == child)
            .filter_map(|l| l.child())
            .find(|&(_, outcome)| outcome == "ready")
            .map(|(pid, _)| pid)
    });
    assert!(wait_gone(child, DEADLINE), "{}", server.dump());
    server.wait_line(&format!(
        "SIGUSR2 successor {child} exited; the PID file names {grandchild}"
    ));
    assert_eq!(pid_in(&pid_file), Some(grandchild), "{}", server.dump());
    assert_eq!(pid_in(&oldbin), Some(server.pid));
    // Finishing the upgrade leaves the grandchild the service, named by the PID file.
    signal(server.pid, Signal::QUIT);
    assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    assert_eq!(pid_in(&pid_file), Some(grandchild));
    assert!(!oldbin.exists(), ".oldbin left behind");
    assert_eq!(common::serving_pid(server.addr), grandchild);
    signal(pid_in(&pid_file).unwrap(), Signal::TERM);
    assert!(wait_gone(grandchild, DEADLINE));
    assert!(common::get(server.addr, "/hello").is_err(), "still served");
}
