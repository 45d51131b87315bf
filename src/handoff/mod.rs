//! Spawning a successor or a worker, both sides of the readiness handshake, and the checks
//! before a restart (the start path is a binary or a script; the successor would have room
//! for the connections it takes).
//!
//! The child is the binary at the path this process was started from (resolved against the
//! working directory at start-up, so a binary renamed into place is picked up), with the same
//! argv, cwd and environment, plus `LISTENER`. Its fds are laid out as [`Layout`] says: the
//! listeners from fd 3, then the write end of a readiness pipe, then (with connection
//! hand-over) its end of the [`relay`], then (for a worker of a supervising process) its end
//! of the control channel, another relay. The child writes one byte to the pipe once it is
//! serving; the parent waits for that byte with a timeout. EOF on the pipe means the child
//! died first.

pub(crate) mod relay;
pub(crate) mod state;
pub(crate) mod wire;

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::reap::Owned;
use std::time::Duration;

use async_io::{Async, Timer};
use smol::future::FutureExt as _;
use smol::io::AsyncReadExt as _;

use crate::config::timing::EXIT_STATUS_WAIT;
use crate::listener::{
    ACTIVATION_ENV, Description, FIRST_FD, LISTENER_ENV, Listener, MAX_LISTENERS,
};

/// Where each fd a successor inherits goes, described once for the parent that places them
/// and the `LISTENER` text that tells the child: listeners at 3, 4, …, then the readiness
/// pipe's write end, then the relay (if connections are handed over), then the control
/// channel (a worker's, to its supervising process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    listeners: usize,
    relay: bool,
    control: bool,
}

impl Layout {
    /// The most fds a successor inherits.
    pub(crate) const MAX_FDS: usize = MAX_LISTENERS + 3;

    pub(crate) fn new(listeners: usize, relay: bool, control: bool) -> Layout {
        Layout {
            listeners,
            relay,
            control,
        }
    }

    /// The fd of listener `index`.
    pub(crate) fn listener(&self, index: usize) -> RawFd {
        FIRST_FD + index as RawFd
    }

    /// The readiness pipe's write end.
    pub(crate) fn ready(&self) -> RawFd {
        self.listener(self.listeners)
    }

    /// The child's end of the relay, if any.
    pub(crate) fn relay(&self) -> Option<RawFd> {
        self.relay.then(|| self.ready() + 1)
    }

    /// The child's end of the control channel, if it is a worker.
    pub(crate) fn control(&self) -> Option<RawFd> {
        let after = self.relay().unwrap_or(self.ready());
        self.control.then_some(after + 1)
    }

    /// How many fds the child inherits.
    pub(crate) fn len(&self) -> usize {
        self.listeners + 1 + usize::from(self.relay) + usize::from(self.control)
    }
}

/// How this process was started, captured once at start-up so that a restart runs the same
/// command even if the working directory changes later.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    program: PathBuf,
    argv0: OsString,
    args: Vec<OsString>,
    cwd: PathBuf,
}

impl Exec {
    pub(crate) fn capture() -> io::Result<Exec> {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "argv[0] is empty: cannot re-execute this binary",
            )
        })?;
        let cwd = std::env::current_dir()?;
        let path = Path::new(&argv0);
        // A bare name was found through PATH; anything with a slash is a path, made absolute here.
        let program = if path.components().count() > 1 || path.is_absolute() {
            cwd.join(path)
        } else {
            PathBuf::from(&argv0)
        };
        Ok(Exec {
            program,
            argv0,
            args: argv.collect(),
            cwd,
        })
    }

    /// The command a restart runs: the start path, with the same argv[0], arguments and
    /// working directory.
    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg0(&self.argv0)
            .args(&self.args)
            .current_dir(&self.cwd);
        command
    }

    /// The binary a restart executes.
    pub(crate) fn program(&self) -> &Path {
        &self.program
    }
}

/// A child that has been started and is not yet known to be serving.
#[derive(Debug)]
pub(crate) struct Successor {
    /// `None` once handed out as ready; a successor dropped before that is killed and reaped.
    child: Option<Owned>,
    ready: Async<std::io::PipeReader>,
    /// This process's end of the connection relay, handed out with the child once ready.
    relay: Option<crate::handoff::relay::Relay>,
    /// This process's end of a worker's control channel.
    control: Option<crate::handoff::relay::Relay>,
}

/// A successor that reported ready.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) child: Owned,
    /// This process's end of the connection relay, if connections are handed over.
    pub(crate) relay: Option<crate::handoff::relay::Relay>,
    /// This process's end of the worker's control channel, if it is one.
    pub(crate) control: Option<crate::handoff::relay::Relay>,
}

/// Who the child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Child {
    /// A successor (SIGHUP or SIGUSR2); with `relay`, this process hands it connections.
    Successor { relay: bool },
    /// A worker of this supervising process: a control channel; with `relay`, a retiring
    /// worker hands it connections. It is not told about `NOTIFY_SOCKET`: the supervising
    /// process speaks for the service.
    Worker { relay: bool },
}

/// Why a successor never became ready.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// It closed the readiness pipe (usually: it exited) without announcing.
    Exited(Option<ExitStatus>),
    /// It did not announce within the upgrade timeout and was killed.
    Timeout(Duration),
    /// Reading the pipe failed.
    Io(io::Error),
}

impl std::error::Error for NotReady {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NotReady::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<NotReady> for io::Error {
    fn from(why: NotReady) -> io::Error {
        let kind = match &why {
            NotReady::Exited(_) => io::ErrorKind::UnexpectedEof,
            NotReady::Timeout(_) => io::ErrorKind::TimedOut,
            NotReady::Io(e) => e.kind(),
        };
        io::Error::new(kind, why)
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Exited(Some(status)) => write!(f, "it exited ({status}) before it was ready"),
            NotReady::Exited(None) => write!(f, "it closed the readiness pipe before it was ready"),
            NotReady::Timeout(t) => write!(f, "it was not ready within {t:?} and was killed"),
            NotReady::Io(e) => write!(f, "reading its readiness pipe failed: {e}"),
        }
    }
}

/// Starts the successor with `listener` as fd 3 and a readiness pipe as fd 4.
///
/// `fork` and `exec` run on a short-lived thread: `Command::spawn` returns only once the child
/// has exec'd, and on a busy core that wait (measured: ~2 ms) would stall every connection of
/// this process. The thread owns its own copies of the fds it hands over, so a shutdown that
/// closes the listener meanwhile cannot pull an fd from under the fork.
pub(crate) fn prepare(exec: &Exec, listeners: &[Listener], child: Child) -> io::Result<Spawn> {
    let (relay, control) = match child {
        Child::Successor { relay } => (relay, false),
        Child::Worker { relay } => (relay, true),
    };
    let layout = Layout::new(listeners.len(), relay, control);
    if layout.len() > Layout::MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} listeners: at most {MAX_LISTENERS} can be handed over",
                listeners.len()
            ),
        ));
    }
    let (ready_reader, ready_writer) = std::io::pipe()?;
    // With connection relay, a socket pair: ours, and the successor's.
    let (relay_ours, relay_theirs) = match relay {
        true => relay::pair().map(|(ours, theirs)| (Some(ours), Some(theirs)))?,
        false => (None, None),
    };
    let (control_ours, control_theirs) = match control {
        true => relay::pair().map(|(ours, theirs)| (Some(ours), Some(theirs)))?,
        false => (None, None),
    };
    let sockets = listeners
        .iter()
        .map(Listener::duplicate)
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    let descriptions: Vec<Description> = listeners
        .iter()
        .enumerate()
        .map(|(i, listener)| {
            let mut description = listener.describe(layout.listener(i));
            description.ready_fd = Some(layout.ready());
            description.relay_fd = layout.relay();
            description.control_fd = layout.control();
            description
        })
        .collect();
    let mut command = exec.command();
    command.env(LISTENER_ENV, Description::to_json_all(&descriptions));
    // Socket activation is for this process only; the successor gets the sockets by LISTENER.
    for name in ACTIVATION_ENV {
        command.env_remove(name);
    }
    // A supervising process's own state is for itself, after it re-executes; endless's
    // variables were for this process only.
    command.env_remove(crate::listener::SUPERVISOR_ENV);
    for name in crate::listener::ENDLESS_ENV {
        command.env_remove(name);
    }
    if control {
        command.env_remove("NOTIFY_SOCKET");
    }
    let mut moves: Vec<(RawFd, RawFd)> = sockets
        .iter()
        .enumerate()
        .map(|(i, socket)| (socket.as_raw_fd(), layout.listener(i)))
        .collect();
    moves.push((ready_writer.as_raw_fd(), layout.ready()));
    if let (Some(theirs), Some(relay_fd)) = (&relay_theirs, layout.relay()) {
        moves.push((theirs.as_raw_fd(), relay_fd));
    }
    if let (Some(theirs), Some(control_fd)) = (&control_theirs, layout.control()) {
        moves.push((theirs.as_raw_fd(), control_fd));
    }
    // SAFETY: the closure only makes async-signal-safe syscalls (sigprocmask, fcntl, dup2,
    // close) on fd numbers copied into it, and allocates nothing (`moves` is built here, before
    // the fork). All the fds stay open until `spawn` returns: the spawning thread owns them.
    unsafe {
        command.pre_exec(move || place_fds(&moves));
    }
    Ok(Spawn {
        command,
        fds: (sockets, ready_writer, [relay_theirs, control_theirs]),
        ready_reader,
        relay: relay_ours,
        control: control_ours,
        program: exec.program.clone(),
    })
}

/// A successor ready to be started: its command and the fds it will inherit.
#[derive(Debug)]
pub(crate) struct Spawn {
    command: Command,
    fds: (Vec<OwnedFd>, std::io::PipeWriter, [Option<OwnedFd>; 2]),
    ready_reader: std::io::PipeReader,
    /// This process's end of the connection relay, if connections are handed over.
    relay: Option<OwnedFd>,
    /// This process's end of a worker's control channel.
    control: Option<OwnedFd>,
    program: PathBuf,
}

impl Spawn {
    /// Forks and execs on a helper thread; resolves once the child has exec'd. With a relay,
    /// the state goes later, once this process (or, for a worker, the worker it replaces) has
    /// stopped serving (see `server::run`); the successor waits for it before it serves.
    pub(crate) async fn start(self) -> io::Result<Successor> {
        let Spawn {
            mut command,
            fds,
            ready_reader,
            relay,
            control,
            program,
        } = self;
        check_start_path(&program).map_err(|e| {
            crate::error::context(e.kind(), format!("cannot start {}", program.display()), e)
        })?;
        let relay = relay.map(crate::handoff::relay::Relay::new).transpose()?;
        let control = control.map(crate::handoff::relay::Relay::new).transpose()?;
        let (sender, receiver) = smol::channel::bounded(1);
        std::thread::Builder::new()
            .name("baton-spawn".into())
            .spawn(move || {
                let spawned = crate::reap::spawn(&mut command);
                // The child has its copies; dropping ours now means a child that dies before
                // it is ready shows up at once as EOF on the reader.
                drop(fds);
                let _ = sender.send_blocking(spawned);
            })?;
        // On a busy CPU the helper thread, and then the child, would wait for this thread's
        // time slice to end (~2 ms each under load, seen with `perf sched`); giving way once
        // at each step lets the fork and then the successor's start-up run at once. Under the
        // bench's load on one pinned CPU the handoff went from 6.3 to 4.7 ms (keep-alive) and
        // 5.9 to 3.7 ms (a connection per request). Yielding on every executor round while
        // the successor starts halved it again but added ~2 ms to the per-request tail, so it
        // is once per step only.
        std::thread::yield_now();
        let spawned = receiver
            .recv()
            .await
            .map_err(|_| io::Error::other("the spawning thread ended without an answer"))?;
        std::thread::yield_now();
        let child = spawned.map_err(|e| {
            crate::error::context(e.kind(), format!("cannot start {}", program.display()), e)
        })?;
        Ok(Successor {
            child: Some(child),
            ready: Async::new(ready_reader)?,
            relay,
            control,
        })
    }
}

impl Spawn {
    /// [`Spawn::start`], [`crate::Event::Spawned`], then [`Successor::ready`]: the child, once
    /// it serves; or its pid (if it got one) and why it does not.
    pub(crate) async fn start_until_ready(
        self,
        emit: &dyn Fn(&crate::Event<'_>),
        timeout: Option<Duration>,
        settle: Option<Duration>,
    ) -> Result<Ready, (Option<u32>, io::Error)> {
        let successor = self.start().await.map_err(|e| (None, e))?;
        emit(&crate::Event::Spawned {
            pid: successor.pid(),
        });
        successor
            .ready(timeout, settle)
            .await
            .map_err(|(pid, why)| (Some(pid), io::Error::from(why)))
    }
}

/// Room a process should keep under its fd limit for a restart that moves its connections:
/// the successor has the same limit, and needs its own few fds (listeners, relay, pipe,
/// control channel, signal and reactor fds, a state memfd) besides every connection it takes.
const FD_ROOM: usize = 16;

/// Refuses a restart that would move `pid`'s connections (this process's, if `None`) to a
/// successor that could not hold them all: the same fd limit, nearly used up. The error says
/// how many are used, of what, and what to do; nothing is cut, and the process serves on.
pub(crate) fn check_fd_room(pid: Option<u32>) -> io::Result<()> {
    let proc = match pid {
        None => "self".to_owned(),
        Some(pid) => match child_in_proc(pid) {
            Some(proc) => proc,
            // Gone, or no /proc to look in: its exit or the exec will say.
            None => return Ok(()),
        },
    };
    let soft = match pid {
        // This process's own, without opening a file (it may have none to spare).
        None => rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .and_then(|limit| usize::try_from(limit).ok()),
        Some(_) => std::fs::read_to_string(format!("/proc/{proc}/limits"))
            .unwrap_or_default()
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|soft| soft.parse::<usize>().ok()),
    };
    let used = match std::fs::read_dir(format!("/proc/{proc}/fd")) {
        Ok(fds) => fds.count(),
        // Not even one fd to look with: at the limit.
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => soft.unwrap_or(usize::MAX),
        Err(_) => return Ok(()),
    };
    match soft {
        Some(limit) if used + FD_ROOM > limit => {
            let whose =
                pid.map_or_else(|| "this process".to_owned(), |pid| format!("worker {pid}"));
            Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "{whose} holds {used} of its {limit} fds (RLIMIT_NOFILE): a successor with \
                     the same limit could not take its connections; raise the limit (ulimit -n, \
                     LimitNOFILE=) and restart again"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The name in `/proc` of this process's child `pid`. In a PID namespace without a `/proc`
/// of its own (PID 1 of `unshare --pid` without a new mount), `/proc` numbers processes as
/// the outer namespace does: there the child is found among this process's children by the
/// last pid of its `NSpid` line.
fn child_in_proc(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    if stat.split(' ').next() == Some(&std::process::id().to_string()) {
        return Some(pid.to_string());
    }
    let pid = pid.to_string();
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let children = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok());
    children
        .flat_map(|list| {
            list.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|outer| {
            std::fs::read_to_string(format!("/proc/{outer}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|line| line.strip_prefix("NSpid:"))
                .and_then(|pids| pids.split_whitespace().last())
                == Some(pid.as_str())
        })
}

/// Refuses a start path that holds neither an ELF binary nor a `#!` script: `execvp` would
/// hand such a file to `/bin/sh`, and a corrupt or half-copied binary would run as a shell
/// script. A path that cannot be read here is left to the exec, whose error says why.
fn check_start_path(path: &Path) -> io::Result<()> {
    use std::io::Read as _;
    // A bare name is found through PATH by the exec itself.
    if path.components().count() < 2 {
        return Ok(());
    }
    let mut head = [0u8; 4];
    let Ok(read) = std::fs::File::open(path).and_then(|mut file| file.read(&mut head)) else {
        return Ok(());
    };
    let head = &head[..read];
    if head.starts_with(b"\x7fELF") || head.starts_with(b"#!") {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "it is neither an ELF binary nor a #! script (it starts with {}), so it is not \
             run (a shell would run it as a script)",
            String::from_utf8_lossy(head).escape_debug()
        ),
    ))
}

/// In the forked child, before exec: set the signal mask to SIGHUP and SIGUSR2 only (held
/// until the successor installs its handlers, see [`crate::signals::HELD_ACROSS_EXEC`]; the
/// rest of the parent's mask is not passed on) and put each `(from, to)` fd in
/// place without CLOEXEC. Every source is first copied above all targets, so no `dup2` can
/// clobber a source that is still needed, and no `dup2` is ever a same-fd no-op (which would
/// leave CLOEXEC set).
fn place_fds(moves: &[(RawFd, RawFd)]) -> io::Result<()> {
    crate::signals::mask_held(libc::SIG_SETMASK)?;
    let floor = moves.iter().map(|&(_, to)| to).max().unwrap_or(FIRST_FD) + 1;
    // No allocation between fork and exec: a fixed array of copies, as many as a layout has.
    let mut copies: [Option<OwnedFd>; Layout::MAX_FDS] = [const { None }; Layout::MAX_FDS];
    if moves.len() > copies.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (copy, &(from, _)) in copies.iter_mut().zip(moves) {
        // SAFETY: `from` is an fd the spawning thread owns (a listener copy, the pipe) and keeps
        // open until the spawn returns; the borrow ends within this statement.
        let from = unsafe { std::os::fd::BorrowedFd::borrow_raw(from) };
        *copy = Some(rustix::io::fcntl_dupfd_cloexec(from, floor)?);
    }
    for (copy, &(_, to)) in copies.iter().zip(moves) {
        let Some(copy) = copy else { continue };
        // SAFETY: dup2 is sound for any pair of numbers: `copy` is an open fd this child owns,
        // and `to` may or may not be open (whatever it held is replaced, on purpose, in this
        // child about to exec); no Rust value owns `to`, so nothing closes it twice.
        if unsafe { libc::dup2(copy.as_raw_fd(), to) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    // The CLOEXEC copies are closed on drop (or at exec at the latest).
    Ok(())
}

impl Successor {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Waits until the child announces it is serving, or fails, or `timeout` passes. On any
    /// failure the child is killed and reaped before this returns. On success: the child, and
    /// this process's end of the connection relay, if any.
    ///
    /// With `settle`, a successor that cannot report readiness (a Go server that knows
    /// nothing of `ready_fd`) counts as ready once it has run that long without exiting.
    pub(crate) async fn ready(
        mut self,
        timeout: Option<Duration>,
        settle: Option<Duration>,
    ) -> Result<Ready, (u32, NotReady)> {
        let mut byte = [0u8; 1];
        let read = async { Some(self.ready.read(&mut byte).await) };
        let settled = async {
            match settle {
                Some(settle) => Timer::after(settle).await,
                None => std::future::pending().await,
            };
            Some(Ok(usize::MAX))
        };
        let outcome = read.or(settled).or(async {
            match timeout {
                Some(timeout) => Timer::after(timeout).await,
                None => std::future::pending().await,
            };
            None
        });
        let outcome = match outcome.await {
            // Settled: ready if it still runs.
            Some(Ok(usize::MAX)) => match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => Some(Ok(1)),
                _ => Some(Ok(0)),
            },
            other => other,
        };
        let failure = match outcome {
            Some(Ok(1)) => {
                if let Some(child) = self.child.take() {
                    return Ok(Ready {
                        child,
                        relay: self.relay.take(),
                        control: self.control.take(),
                    });
                }
                NotReady::Exited(None)
            }
            Some(Ok(_)) => NotReady::Exited(None),
            Some(Err(e)) => NotReady::Io(e),
            None => NotReady::Timeout(timeout.unwrap_or_default()),
        };
        let pid = self.pid();
        let failure = match failure {
            // EOF: it is exiting or has exited; wait for its status, but never unbounded.
            NotReady::Exited(None) => match self.exit_status(EXIT_STATUS_WAIT).await {
                Some(status) => NotReady::Exited(Some(status)),
                None => NotReady::Exited(None),
            },
            other => other,
        };
        drop(self);
        Err((pid, failure))
    }

    async fn exit_status(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            Timer::after(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                // Bounded: SIGKILL cannot be caught, so the child is gone promptly.
                let _ = child.wait();
            }
        }
    }
}

/// Child side: tell the parent that this process is serving, then close the pipe.
pub(crate) fn announce_ready(pipe: OwnedFd) -> io::Result<()> {
    let mut pipe = std::fs::File::from(pipe);
    pipe.write_all(b"1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_an_absolute_program_path() {
        let exec = Exec::capture().unwrap();
        assert!(exec.program().is_absolute(), "{}", exec.program().display());
    }

    #[test]
    fn the_layout_puts_the_pipe_and_relay_after_the_listeners() {
        let most = Layout::new(MAX_LISTENERS, true, true);
        assert_eq!(most.len(), Layout::MAX_FDS);
        assert_eq!(most.listener(0), FIRST_FD);
        assert_eq!(most.ready(), FIRST_FD + MAX_LISTENERS as RawFd);
        assert_eq!(most.relay(), Some(most.ready() + 1));
        assert_eq!(most.control(), Some(most.ready() + 2));
        assert_eq!(Layout::new(1, false, false).relay(), None);
        assert_eq!(Layout::new(1, false, true).control(), Some(FIRST_FD + 2));
    }

    #[test]
    fn not_ready_explains_itself() {
        let text = NotReady::Timeout(Duration::from_secs(10)).to_string();
        assert!(text.contains("10s") && text.contains("killed"), "{text}");
    }
}
