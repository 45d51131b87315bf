//! Telling a process supervisor what is going on: systemd's `NOTIFY_SOCKET` protocol (a plain
//! Unix datagram, no libsystemd) and a PID file. Both follow the serving process: the successor
//! rewrites the PID file once it serves, and the old process names it as `MAINPID`.
//!
//! | moment | `NOTIFY_SOCKET` | PID file |
//! |---|---|---|
//! | first process serving | `READY=1` | written |
//! | SIGHUP | `RELOADING=1` | |
//! | successor serving | | rewritten by the successor |
//! | successor ready (old process) | `MAINPID=<successor>`, `READY=1` | |
//! | upgrade failed | `READY=1`, `STATUS=...` | |
//! | final shutdown | `STOPPING=1` | removed if it still holds this pid |
//!
//! A supervising process (see [`crate::restart::supervising`]) keeps the PID and so the PID file for the
//! service's life; it sends `MAINPID=<itself>`, `READY=1` and a `STATUS=` with its workers
//! once they serve, and around each restart `RELOADING=1` and again `READY=1`. After each
//! restart it also writes `<pid file>.restart` (see [`crate::reload`]): the number of
//! restarts so far, the pid serving after it, and `ok` or `failed: <why>`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// The systemd notification socket and the PID file, whichever are configured.
#[derive(Debug, Default)]
pub(crate) struct Supervisor {
    notify: Option<(UnixDatagram, String)>,
    pid_file: Option<PathBuf>,
}

impl Supervisor {
    /// Reads `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub(crate) fn new(pid_file: Option<PathBuf>) -> Supervisor {
        let notify = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|target| !target.is_empty())
            .and_then(|target| Some((UnixDatagram::unbound().ok()?, target)));
        Supervisor { notify, pid_file }
    }

    /// This process serves. `restarted`: it was started by a restart, so the old process
    /// reports it ready (under systemd only the main process may).
    pub(crate) fn serving(&self, restarted: bool) -> io::Result<()> {
        if let Some(path) = &self.pid_file {
            write_pid_file(path, std::process::id())?;
        }
        if !restarted {
            self.notify("READY=1\n");
        }
        Ok(())
    }

    /// Writes the PID file (this process's pid), if one is configured.
    pub(crate) fn write_pid_file(&self) -> io::Result<()> {
        match &self.pid_file {
            Some(path) => write_pid_file(path, std::process::id()),
            None => Ok(()),
        }
    }

    /// SIGUSR2 (nginx's binary upgrade): once the successor serves, this process's pid goes
    /// to `<pid file>.oldbin` (the successor has rewritten the PID file).
    pub(crate) fn old_binary(&self) {
        if let Some(path) = &self.pid_file {
            let _ = write_pid_file(&oldbin_file(path), std::process::id());
        }
    }

    /// The SIGUSR2 successor `gone` exited. If it rolled back (the PID file still names it,
    /// or nothing that runs), the PID file names this process again and `.oldbin` goes;
    /// returns `None`. If the PID file names another live process (the successor restarted
    /// itself, and its own successor serves), the service lives on there: this process stays
    /// the old binary, and the PID file is left alone; returns that process.
    pub(crate) fn successor_gone(&self, gone: u32) -> Option<u32> {
        let path = self.pid_file.as_ref()?;
        let own = std::process::id();
        let moved_on = pid_in(path).filter(|&pid| {
            pid != gone
                && pid != own
                && i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                    .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
        });
        if moved_on.is_some() {
            return moved_on;
        }
        let _ = std::fs::remove_file(oldbin_file(path));
        let _ = write_pid_file(path, own);
        self.notify(&format!(
            "MAINPID={own}\nREADY=1\nSTATUS=the SIGUSR2 successor is gone; serving again\n"
        ));
        None
    }

    /// A supervising process's workers serve.
    pub(crate) fn workers_ready(&self, workers: usize, generation: u64) {
        let pid = std::process::id();
        self.notify(&format!(
            "MAINPID={pid}\nREADY=1\nSTATUS={workers} workers serving (generation {generation})\n"
        ));
    }

    /// Records how the latest restart ended, for [`crate::reload`]: one more restart than the
    /// file said, the pid serving now, and `ok` or `failed: <why>`.
    pub(crate) fn restart_outcome(&self, serving: u32, failure: Option<&str>) {
        let Some(path) = self.restart_file() else {
            return;
        };
        let restarts = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| RestartRecord::parse(&text))
            .map_or(0, |record| record.restarts);
        let record = RestartRecord {
            restarts: restarts + 1,
            serving,
            failure: failure.map(|why| why.replace('\n', " ")),
        };
        let _ = write_atomically(&path, record.to_string().as_bytes());
    }

    fn restart_file(&self) -> Option<PathBuf> {
        self.pid_file.as_deref().map(restart_file)
    }

    pub(crate) fn reloading(&self) {
        let usec = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = usec.tv_sec as u64 * 1_000_000 + usec.tv_nsec as u64 / 1000;
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\n"));
    }

    pub(crate) fn successor_ready(&self, pid: u32) {
        self.notify(&format!("MAINPID={pid}\nREADY=1\n"));
    }

    /// Back to serving after a restart that did not happen: tells systemd, and records the
    /// failure (this process serves on) for [`crate::reload`].
    pub(crate) fn upgrade_failed(&self, why: &str) {
        let why = why.replace('\n', " ");
        self.notify(&format!("READY=1\nSTATUS=restart failed: {why}\n"));
        self.restart_outcome(std::process::id(), Some(&why));
    }

    /// The successor died during the drain and this process serves again.
    pub(crate) fn resumed(&self, successor: u32, status: std::process::ExitStatus) {
        if let Some(path) = &self.pid_file {
            let _ = write_pid_file(path, std::process::id());
        }
        let pid = std::process::id();
        self.notify(&format!(
            "MAINPID={pid}\nREADY=1\nSTATUS=successor {successor} exited ({status}); serving again\n"
        ));
    }

    pub(crate) fn stopping(&self) {
        self.notify("STOPPING=1\n");
    }

    /// Serving is over for good: removes the PID file if it still names this process.
    /// This process is done: its `.oldbin` goes (if it names it), and, when it was the last
    /// process of the service, the PID file and the restart record (if they name it).
    pub(crate) fn exited(&self, last: bool) {
        if let Some(path) = &self.pid_file {
            let oldbin = oldbin_file(path);
            let own = Some(std::process::id());
            if pid_in(&oldbin) == own {
                let _ = std::fs::remove_file(&oldbin);
            }
            if !last {
                return;
            }
            if pid_in(path) == own {
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_file(restart_file(path));
            }
        }
    }

    fn notify(&self, message: &str) {
        let Some((socket, target)) = &self.notify else {
            return;
        };
        // Best effort, as sd_notify: a supervisor that is gone must not stop the server.
        let _ = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
            }
            None => socket.send_to(message.as_bytes(), target),
        };
    }
}

/// The pid a PID file holds, if it holds one.
fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes `pid` to `path` atomically: a temporary file beside it, then a rename.
fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    write_atomically(path, format!("{pid}\n").as_bytes()).map_err(|e| {
        crate::error::context(
            e.kind(),
            format!("cannot write the PID file {}", path.display()),
            e,
        )
    })
}

/// How the latest restart ended, as `<pid file>.restart` holds it:
/// `restarts 3\nserving 1234\nok\n` (or `failed: <why>` on the last line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestartRecord {
    /// Restarts recorded so far.
    pub(crate) restarts: u64,
    /// The pid serving after it (the supervising process, or the successor).
    pub(crate) serving: u32,
    /// Why it failed, if it did.
    pub(crate) failure: Option<String>,
}

impl RestartRecord {
    pub(crate) fn parse(text: &str) -> Option<RestartRecord> {
        let mut lines = text.lines();
        let restarts = lines.next()?.strip_prefix("restarts ")?.parse().ok()?;
        let serving = lines.next()?.strip_prefix("serving ")?.parse().ok()?;
        let failure = match lines.next()? {
            "ok" => None,
            other => Some(other.strip_prefix("failed: ")?.to_owned()),
        };
        Some(RestartRecord {
            restarts,
            serving,
            failure,
        })
    }
}

impl std::fmt::Display for RestartRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "restarts {}\nserving {}", self.restarts, self.serving)?;
        match &self.failure {
            None => writeln!(f, "ok"),
            Some(why) => writeln!(f, "failed: {why}"),
        }
    }
}

/// Where an old binary's pid goes during a SIGUSR2 upgrade: `<pid file>.oldbin`.
fn oldbin_file(pid_file: &Path) -> PathBuf {
    beside(pid_file, ".oldbin")
}

/// Where a server records its latest restart: `<pid file>.restart`.
pub(crate) fn restart_file(pid_file: &Path) -> PathBuf {
    beside(pid_file, ".restart")
}

/// `<pid file><suffix>`.
fn beside(pid_file: &Path, suffix: &str) -> PathBuf {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

/// Writes `contents` beside `path` and renames it over, so readers never see half of it.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(format!(".{}.tmp", std::process::id()));
    let staged = PathBuf::from(staged);
    std::fs::write(&staged, contents)
        .and_then(|()| std::fs::rename(&staged, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&staged);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_written_and_removed_only_if_ours() {
        let dir = std::env::temp_dir().join(format!("baton-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pid");
        let supervisor = Supervisor {
            notify: None,
            pid_file: Some(path.clone()),
        };
        supervisor.serving(false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        std::fs::write(&path, "1\n").unwrap();
        supervisor.exited(true);
        assert!(path.exists(), "removed a PID file naming another process");
        supervisor.serving(false).unwrap();
        supervisor.exited(true);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "a temporary file was left"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn restart_records_round_trip() {
        for failure in [
            None,
            Some("it exited (exit status: 1) before it was ready".into()),
        ] {
            let record = RestartRecord {
                restarts: 4,
                serving: 77,
                failure,
            };
            assert_eq!(RestartRecord::parse(&record.to_string()), Some(record));
        }
        assert_eq!(RestartRecord::parse("restarts x\n"), None);
    }

    #[test]
    fn notifications_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("baton-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let supervisor = Supervisor {
            notify: Some((UnixDatagram::unbound().unwrap(), path.display().to_string())),
            pid_file: None,
        };
        supervisor.successor_ready(42);
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=42\nREADY=1\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
