//! Starting the example binary and following its processes: the log of every stderr line,
//! signals, restarts; a scratch directory per test.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::log;
use super::{DEADLINE, Signal, example};

/// A private directory for one test, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("baton-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Puts `contents` at `name` atomically, as a deploy does: write beside it, then rename.
    pub fn install(&self, name: &str, contents: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let staged = self.0.join(format!(".{name}.new"));
        std::fs::write(&staged, contents).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = self.0.join(name);
        std::fs::rename(&staged, &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every stderr line of a server and all its successors (they inherit the pipe).
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Log {
    /// Collects every line `stderr` carries, on a thread of its own.
    fn follow(stderr: std::process::ChildStderr) -> Arc<Log> {
        let log = Arc::new(Log::default());
        let writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("BATON_TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                writer.lines.lock().unwrap().push(line);
                writer.grew.notify_all();
            }
        });
        log
    }
}

/// A running example server and every process it spawned, killed on drop.
pub struct Server {
    child: Child,
    log: Arc<Log>,
    /// The first process's pid.
    pub pid: u32,
    /// The same process's pid as its log lines show it: `pid`, or 1 in a PID namespace.
    pub log_pid: u32,
    /// Started in a PID namespace of its own: its log's pids are that namespace's, so they
    /// must never be signalled from here; killing its init ends every process in it.
    namespaced: bool,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `examples/hello` on 127.0.0.1 with a kernel-chosen port, plus `args`.
    pub fn hello(args: &[&str]) -> Server {
        let mut command = Command::new(example("fixture"));
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        Server::start(command)
    }

    /// Starts `command` (stderr is captured) and waits until it listens.
    pub fn start(mut command: Command) -> Server {
        let (child, log) = launch(&mut command, "start the example");
        let pid = child.id();
        Server::listening(child, log, pid, pid, false)
    }

    /// The server whose first process is `pid` (`log_pid` in its log), started as `child`
    /// (itself, or a launcher), once it listens.
    fn listening(child: Child, log: Arc<Log>, pid: u32, log_pid: u32, namespaced: bool) -> Server {
        let mut server = Server {
            child,
            log,
            pid,
            log_pid,
            namespaced,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        server.wait_listening();
        server
    }

    /// Starts `command` as PID 1 of a new PID namespace (what `docker run` gives a process):
    /// a launcher unshares the namespace and forks; its child, the namespace's init, execs
    /// `command`. `pid` is that init's pid here; its log says `baton[1]`.
    pub fn start_in_pid_namespace(mut command: Command) -> Server {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec, only async-signal-safe calls: unshare, fork, close,
        // waitpid and _exit, on no memory but locals.
        unsafe {
            command.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWPID) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    // The namespace's init: goes on to exec the command.
                    0 => Ok(()),
                    init => {
                        // The launcher: holds nothing open (the spawn's error pipe included,
                        // or `spawn` would wait for it), waits for the init, exits with it.
                        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                        let mut status = 0;
                        while libc::waitpid(init, &mut status, 0) == -1 {}
                        libc::_exit(if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        });
                    }
                }
            });
        }
        let (child, log) = launch(&mut command, "start the launcher");
        let init = super::procfs::wait_for_child_of(child.id());
        Server::listening(child, log, init, 1, true)
    }

    /// Starts `command` behind an init, as `docker run --init` (tini), dumb-init or a pod's
    /// shared PID namespace give it: a launcher unshares a PID namespace and forks its init,
    /// a stand-in that behaves as those inits do where it matters here: it forks the
    /// command, reaps every process reparented to it, and exits (with the command's status)
    /// as soon as the command itself exits. The command is PID 2 there; `pid` is its pid
    /// here, and its log says `baton[2]`.
    pub fn start_behind_init(mut command: Command) -> Server {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec, only async-signal-safe calls: unshare, fork, close,
        // waitpid and _exit, on no memory but locals.
        unsafe {
            command.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWPID) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                let exit_with = |status: libc::c_int| -> ! {
                    libc::_exit(if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    })
                };
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    0 => match libc::fork() {
                        -1 => libc::_exit(127),
                        // The command, PID 2: goes on to exec.
                        0 => Ok(()),
                        service => {
                            // The init stand-in, PID 1: holds nothing open, reaps everything,
                            // and ends with its one child, as tini does.
                            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                            loop {
                                let mut status = 0;
                                let pid = libc::waitpid(-1, &mut status, 0);
                                if pid == service {
                                    exit_with(status);
                                }
                                if pid == -1 && *libc::__errno_location() == libc::ECHILD {
                                    libc::_exit(127);
                                }
                            }
                        }
                    },
                    init => {
                        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                        let mut status = 0;
                        while libc::waitpid(init, &mut status, 0) == -1 {}
                        exit_with(status);
                    }
                }
            });
        }
        let (child, log) = launch(&mut command, "start the launcher");
        let init = super::procfs::wait_for_child_of(child.id());
        let service = super::procfs::wait_for_child_of(init);
        Server::listening(child, log, service, 2, true)
    }

    /// `command` made to run in this server's PID namespace, as `docker exec` runs one (for
    /// a server started there; else unchanged): pids it reads in a pid file name the
    /// processes they name there. It joins the namespace and forks; the fork execs, and
    /// the process `command` spawns waits for it and exits with its status.
    pub fn inside(&self, mut command: Command) -> Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        if !self.namespaced {
            return command;
        }
        let namespace = std::fs::File::open(format!("/proc/{}/ns/pid", self.pid))
            .expect("open the server's PID namespace");
        // SAFETY: between fork and exec, only async-signal-safe calls: setns on an fd the
        // closure owns, fork, waitpid and _exit, on no memory but locals.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWPID) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    0 => Ok(()),
                    child => {
                        let mut status = 0;
                        while libc::waitpid(child, &mut status, 0) == -1 {}
                        libc::_exit(if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        });
                    }
                }
            });
        }
        command
    }

    /// The init in front of a server started with [`Server::start_behind_init`] is running.
    pub fn init_alive(&self) -> bool {
        super::procfs::parent_of(self.pid).is_some_and(super::procfs::alive)
    }

    /// Waits until the first process logs that it listens, and notes its first address.
    fn wait_listening(&mut self) {
        let server = self;
        let needle = format!("baton[{}]: listening on ", server.log_pid);
        let deadline = Instant::now() + DEADLINE;
        let line = loop {
            if let Some(line) = server.try_wait_line(&needle, Duration::from_millis(50)) {
                break line;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                // Give the reader a moment to collect what it printed on the way out.
                server.try_wait_line("\u{0}", Duration::from_millis(100));
                panic!(
                    "the server exited ({status}) before listening; log:\n{}",
                    server.dump()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the server never listened; log:\n{}",
                server.dump()
            );
        };
        let addr = log::parse(&line).and_then(|l| l.listening());
        server.addr = addr
            .map(|a| a.trim_start_matches("tls:"))
            .and_then(|a| a.parse().ok())
            .expect("address in the listening line");
    }

    /// The `n` addresses the first process listens on, in order (`unix:/path` for Unix
    /// sockets), once it has logged them all.
    pub fn addresses(&self, n: usize) -> Vec<String> {
        self.wait_for("every listening line", |lines| {
            let found: Vec<String> = lines
                .iter()
                .filter_map(|l| log::parse(l).filter(|l| l.pid == self.log_pid)?.listening())
                .map(str::to_owned)
                .collect();
            (found.len() >= n).then_some(found)
        })
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle`, returns it; panics with the log after [`DEADLINE`].
    pub fn wait_line(&self, needle: &str) -> String {
        self.wait_for(needle, |lines| {
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    pub fn try_wait_line(&self, needle: &str, within: Duration) -> Option<String> {
        self.poll_log(within, |lines| {
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// Waits until `check` finds what it looks for in the log; panics after [`DEADLINE`].
    pub fn wait_for<T>(&self, what: &str, check: impl FnMut(&[String]) -> Option<T>) -> T {
        self.poll_log(DEADLINE, check)
            .unwrap_or_else(|| panic!("no {what:?} within {DEADLINE:?}; log:\n{}", self.dump()))
    }

    fn poll_log<T>(
        &self,
        within: Duration,
        mut check: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + within;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(found) = check(&lines) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Number of lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn dump(&self) -> String {
        self.lines().join("\n")
    }

    /// SIGHUP to `pid`; waits until its successor is ready and returns the successor's pid.
    pub fn restart(&self, pid: u32) -> u32 {
        let outcomes = |lines: &[String]| -> Vec<(u32, String)> {
            let lines = lines
                .iter()
                .filter_map(|l| log::parse(l))
                .filter(|l| l.pid == pid);
            let children = lines.filter_map(|l| l.child());
            children
                .map(|(child, outcome)| (child, outcome.to_owned()))
                .collect()
        };
        let before = outcomes(&self.lines()).len();
        signal(pid, Signal::HUP);
        let (successor, outcome) = self.wait_for("the successor's ready line", |lines| {
            outcomes(lines).into_iter().nth(before)
        });
        assert!(
            outcome == "ready",
            "restart of {pid} failed: child {successor} {outcome}\nlog:\n{}",
            self.dump()
        );
        successor
    }

    /// (A supervising process) the workers of generation `generation` once `count` of them
    /// are ready (their pids).
    pub fn workers_ready(&self, generation: u64, count: usize) -> Vec<u32> {
        self.wait_for(
            &format!("{count} workers of generation {generation}"),
            |lines| {
                let ready: Vec<u32> = lines
                    .iter()
                    .filter_map(|l| log::parse(l).filter(|l| l.pid == self.log_pid))
                    .filter_map(|l| l.worker_ready())
                    .filter(|&(_, g)| g == generation)
                    .map(|(pid, _)| pid)
                    .collect();
                (ready.len() >= count).then_some(ready)
            },
        )
    }

    /// (A supervising process) SIGHUP; waits until generation `next` serves and the
    /// supervising process has re-executed itself in place.
    pub fn restart_workers(&self, next: u64) {
        signal(self.pid, Signal::HUP);
        let mine = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .filter(|l| log::parse(l).is_some_and(|l| l.pid == self.log_pid))
                .cloned()
                .collect()
        };
        self.wait_for(&format!("generation {next} restarted"), |lines| {
            let lines = mine(lines);
            let mut parsed = lines.iter().filter_map(|l| log::parse(l));
            parsed.any(|l| l.restarted() == Some(next)).then_some(())
        });
        let resumed = format!("(re-executed in place, generation {next})");
        self.wait_for(&resumed, |lines| {
            let lines = mine(lines);
            let mut parsed = lines.iter().filter_map(|l| log::parse(l));
            parsed
                .any(|l| l.message.starts_with("supervising") && l.message.ends_with(&resumed))
                .then_some(())
        });
    }

    /// Waits until `n` requests for `path` have reached their handler (the fixture logs
    /// `in flight: <path>` for its long requests): what a test would otherwise sleep for.
    pub fn wait_in_flight(&self, path: &str, n: usize) {
        let needle = format!(": in flight: {path}");
        self.wait_for(&format!("{n} requests in flight for {path}"), |lines| {
            (lines.iter().filter(|l| l.ends_with(&needle)).count() >= n).then_some(())
        });
    }

    /// Every pid that logged, or was logged as a spawned child (it may not have logged yet).
    pub fn pids(&self) -> HashSet<u32> {
        let lines = self.lines();
        let parsed = lines.iter().filter_map(|l| log::parse(l));
        parsed
            .flat_map(|l| [Some(l.pid), l.spawned()])
            .flatten()
            .collect()
    }

    /// Waits for the first process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.namespaced {
            // The namespace ends with its init (behind an init, the init ends with this
            // process); the launcher then exits too.
            let _ = kill(self.pid, Signal::KILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        }
        for pid in self.pids() {
            if pid != self.pid {
                let _ = kill(pid, Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` with no stdin or stdout and its stderr followed into a [`Log`].
fn launch(command: &mut Command, what: &str) -> (Child, Arc<Log>) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A binary just installed (`Scratch::install`) may still be open for writing in a child
    // another test thread forked meanwhile, until that child execs: ETXTBSY, briefly.
    let deadline = Instant::now() + DEADLINE;
    let mut child = loop {
        match command.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            spawned => break spawned.expect(what),
        }
    };
    let stderr = child.stderr.take().expect("stderr is piped");
    (child, Log::follow(stderr))
}

pub fn kill(pid: u32, signal: Signal) -> rustix::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("non-zero pid");
    rustix::process::kill_process(pid, signal)
}

pub fn signal(pid: u32, signal: Signal) {
    kill(pid, signal).unwrap_or_else(|e| panic!("signal {signal:?} to {pid}: {e}"));
}
