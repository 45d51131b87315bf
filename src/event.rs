//! What the server reports as it goes: one [`Event`] per step of a restart or shutdown.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::process::ExitStatus;

use crate::listener::{Address, Origin};
use crate::signals::Signal;

/// One thing that happened. Its `Display` is a one-line log message; the default sink writes it
/// to stderr as `baton[<pid>]: <message>` (see [`crate::Baton::on_event`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A listener is ready: created here, inherited through `LISTENER`, or socket-activated.
    Listening {
        /// Its local address.
        addr: &'a Address,
        /// Its fd in this process.
        fd: RawFd,
        /// Created here, inherited, or socket-activated.
        origin: Origin,
        /// Connections start with a TLS handshake.
        tls: bool,
    },
    /// `LISTENER` or `LISTEN_*` stay in this process's environment, so processes the handler
    /// starts inherit them: other threads were running when [`crate::Baton::bind`] read them,
    /// and changing the environment then is not sound. Bind before starting threads.
    EnvironmentKept {
        /// Threads running at the time, if `/proc/self/stat` could be read.
        threads: Option<usize>,
    },
    /// This process took over endless's sockets and told the endless parent (SIGTERM) that
    /// it serves, as endless expects.
    EndlessParentTold {
        /// The parent's pid.
        pid: u32,
    },
    /// The previous process's state arrived (it sends it once it has stopped serving and
    /// finished its requests; this process serves only then), or did not.
    StateInherited {
        /// Its size, or `None` if there is none.
        bytes: Option<usize>,
        /// Why there is none: the previous process had none, did not send it (too large),
        /// the relay closed first (it exited, or there was no worker to take over from), the
        /// wait ran out, or it could not be read.
        why_none: Option<&'a str>,
        /// How long this process waited for it.
        waited: std::time::Duration,
    },
    /// The application's state did not go to the successor, which starts without it.
    StateNotHandedOver {
        /// Its size.
        bytes: usize,
        /// Why: over [`crate::Config::max_state_bytes`], or the send failed.
        reason: &'a str,
    },
    /// An old generation, still draining, was told to stop at once: a restart would have left
    /// more than `max` generations alive.
    GenerationEnded {
        /// Its pid.
        pid: u32,
        /// `Config::max_generations`.
        max: usize,
    },
    /// A handled signal arrived.
    Signal {
        /// Which.
        signal: Signal,
    },
    /// A signal was not acted on.
    Ignored {
        /// The signal.
        signal: Signal,
        /// Why.
        reason: &'static str,
    },
    /// A successor process was started.
    Spawned {
        /// Its pid.
        pid: u32,
    },
    /// The successor is serving.
    Ready {
        /// Its pid.
        pid: u32,
    },
    /// A successor or worker could not be started or never became ready.
    SpawnFailed {
        /// Its pid, if it got as far as having one.
        pid: Option<u32>,
        /// What went wrong (its source, where there is one, is the underlying error).
        error: &'a io::Error,
        /// Whether something serves meanwhile (this process, or other workers): the line
        /// says "still serving" only then.
        serving: bool,
        /// (A worker's slot) when the next try starts, after its back-off.
        retry_in: Option<std::time::Duration>,
    },
    /// A child started by SIGUSR2 exited and was reaped.
    ChildExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A SIGUSR2 successor exited after handing the service on: the PID file names
    /// `serving`, a live process. This process stays the old binary (`<pid file>.oldbin`).
    SuccessorMovedOn {
        /// The successor that exited.
        gone: u32,
        /// The process the PID file names.
        serving: u32,
    },
    /// `accept` failed; the server keeps serving. Reported at most once a second while
    /// it goes on (out of fds, say), with how many failures that second left unreported.
    AcceptFailed {
        /// The error.
        error: &'a io::Error,
        /// Failures since the last report, not reported each.
        suppressed: usize,
    },
    /// The successor exited while this process was draining; this process serves again.
    SuccessorExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// Accepting stopped; open connections are being drained.
    Draining {
        /// Connections open when draining started.
        connections: usize,
        /// Requests in flight when draining started.
        requests: usize,
    },
    /// This process supervises workers (see [`crate::Baton::workers`]).
    Supervising {
        /// How many.
        workers: usize,
        /// This process is PID 1 (a container's init).
        pid1: bool,
        /// This process's parent is the init of a PID namespace that is not the host's (tini,
        /// dumb-init, `docker run --init`), which would end the service if this process
        /// replaced itself.
        behind_init: bool,
        /// The number of workers was configured, rather than chosen because of the above.
        configured: bool,
        /// The workers' generation (0 until the first ones are ready).
        generation: u64,
        /// It re-executed itself in place and took its workers back.
        resumed: bool,
    },
    /// A worker reported ready.
    WorkerReady {
        /// Its pid.
        pid: u32,
        /// Its generation: 1 at start, one more with each restart.
        generation: u64,
    },
    /// A worker exited.
    WorkerExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// `Some(delay)`: unexpectedly; it is replaced after `delay`: 0 unless the workers in
        /// its place keep dying before or soon after they are ready (a crash loop, counted
        /// per place; a serving worker killed by SIGKILL is always replaced at once). `None`:
        /// it was retiring.
        replaced_in: Option<std::time::Duration>,
        /// It died with the application's state (it had state hooks, and did not retire):
        /// its replacement starts without it.
        state_lost: bool,
        /// It was stopped by the service's shutdown (not retired by a restart).
        stopped: bool,
    },
    /// A restart is complete: every worker is of the new generation.
    Restarted {
        /// The new generation.
        generation: u64,
        /// Workers serving.
        workers: usize,
    },
    /// The supervising process is re-executing itself in place (same PID).
    Reexecuting {
        /// The binary.
        program: &'a std::path::Path,
    },
    /// Re-executing in place failed; the supervising process carries on as it was.
    ReexecFailed {
        /// Why.
        error: &'a io::Error,
    },
    /// Serving is over.
    Exiting {
        /// Requests cut short by the drain timeout or a second shutdown signal (normally 0).
        cut: usize,
        /// Connections still open at that point.
        dropped: usize,
        /// Of those, upgraded connections (WebSockets, say).
        upgraded: usize,
        /// Connections handed over to this process that it closed unserved (see
        /// [`Event::ResumeFailed`]).
        lost: usize,
        /// What ended the drain early, if something did.
        cut_by: Option<crate::CutBy>,
    },
    /// The connections' epoll failed: no connection on it would be woken any more. The server
    /// stops (its `serve` returns this error), rather than hang its clients; a supervising
    /// process replaces such a worker at once.
    EdgeFailed {
        /// The error.
        error: &'a io::Error,
    },
    /// This process drains without a successor to move its connections and state to (the
    /// relay could not be received): they finish here, or close as their protocol says.
    HandOverImpossible {
        /// Why.
        why: &'a str,
    },
    /// A connection the previous process handed over was closed here without being served:
    /// the program does not take its kind (a deploy that renamed it, say), or it arrived
    /// unusable. Counted as lost in the report, which is then not clean.
    ResumeFailed {
        /// The kind it came under (`?` if the message could not be read).
        kind: &'a str,
        /// The client's address, if known.
        peer: Option<&'a Address>,
        /// Why.
        why: &'a str,
    },
    /// Something the program reports through the same sink as the core's events (the HTTP
    /// server: a handler's error answered 5xx, whose message the client never sees).
    Program {
        /// How much it matters.
        level: Level,
        /// What the program calls it (`http`, say).
        source: &'a str,
        /// The line.
        message: &'a str,
    },
}

/// How much an event matters, as the `log` facade's levels say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The service, or a restart, failed: a successor that never served, a handler error
    /// answered 5xx, an exec that failed.
    Error,
    /// Something went wrong and the server carried on: a signal ignored, an accept that
    /// failed, a worker that died, state that did not move, requests cut by a drain.
    Warn,
    /// A step of a restart or shutdown.
    Info,
    /// Routine detail (an orphan reaped).
    Debug,
}

impl Level {
    /// Its name, lower case (`error`, `warn`, `info`, `debug`).
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Why a successor has no state when its predecessor had none to give: expected, not a
/// warning.
pub(crate) const HAD_NO_STATE: &str = "the previous process had none";

impl Event<'_> {
    /// How much this event matters.
    pub fn level(&self) -> Level {
        match self {
            Event::SpawnFailed { .. }
            | Event::EdgeFailed { .. }
            | Event::SuccessorExited { .. }
            | Event::ReexecFailed { .. } => Level::Error,
            Event::Program { level, .. } => *level,
            Event::EnvironmentKept { .. }
            | Event::StateNotHandedOver { .. }
            | Event::GenerationEnded { .. }
            | Event::Ignored { .. }
            | Event::AcceptFailed { .. }
            | Event::HandOverImpossible { .. }
            | Event::ResumeFailed { .. } => Level::Warn,
            Event::StateInherited {
                why_none: Some(why),
                ..
            } if *why != HAD_NO_STATE => Level::Warn,
            Event::WorkerExited {
                status,
                replaced_in,
                ..
            } if !status.success() || replaced_in.is_some() => Level::Warn,
            Event::Exiting {
                cut, dropped, lost, ..
            } if cut + dropped + lost > 0 => Level::Warn,
            Event::ChildExited { .. } => Level::Debug,
            _ => Level::Info,
        }
    }
}

/// Sends `event` to the `log` facade (feature `log`), under the target `baton` at its
/// [`Event::level`]: `Server::on_event(baton::log_event)`.
#[cfg(feature = "log")]
pub fn log_event(event: &Event<'_>) {
    let level = match event.level() {
        Level::Error => log::Level::Error,
        Level::Warn => log::Level::Warn,
        Level::Info => log::Level::Info,
        Level::Debug => log::Level::Debug,
    };
    log::log!(target: "baton", level, "{event}");
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Listening {
                addr,
                fd,
                origin,
                tls,
            } => {
                let scheme = if *tls { "tls:" } else { "" };
                write!(f, "listening on {scheme}{addr} (fd {fd}, {origin})")
            }
            Event::EnvironmentKept { threads } => {
                let why = match threads {
                    Some(n) => format!("{n} threads were running"),
                    None => "the thread count in /proc/self/stat is unreadable".to_owned(),
                };
                write!(
                    f,
                    "LISTENER/LISTEN_* stay in the environment ({why} when Server::bind read \
                     them), so processes the handler starts inherit them; call Server::bind \
                     before starting threads"
                )
            }
            Event::EndlessParentTold { pid } => {
                write!(
                    f,
                    "serving endless's sockets: sent SIGTERM to its process {pid}"
                )
            }
            Event::StateInherited {
                bytes: Some(bytes),
                waited,
                ..
            } => write!(
                f,
                "state from the previous process ({bytes} bytes) after {waited:.1?}"
            ),
            Event::StateInherited {
                bytes: None,
                why_none,
                waited,
            } => write!(
                f,
                "no state from the previous process ({}) after {waited:.1?}",
                why_none.unwrap_or("none came")
            ),
            Event::StateNotHandedOver { bytes, reason } => write!(
                f,
                "the state ({bytes} bytes) was not handed over: {reason}; the successor starts \
                 without it"
            ),
            Event::GenerationEnded { pid, max } => write!(
                f,
                "ended generation {pid}, still draining: at most {max} generations alive"
            ),
            Event::Signal { signal } => write!(f, "received {signal}"),
            Event::Ignored { signal, reason } => write!(f, "ignored {signal}: {reason}"),
            Event::Spawned { pid } => write!(f, "spawned child {pid}"),
            Event::Ready { pid } => write!(f, "child {pid} ready"),
            Event::SpawnFailed {
                pid,
                error,
                serving,
                retry_in,
            } => {
                match pid {
                    Some(pid) => write!(f, "child {pid} failed: {error}")?,
                    None => write!(f, "child failed to start: {error}")?,
                }
                match serving {
                    true => write!(f, "; still serving")?,
                    false => write!(f, "; nothing serves yet")?,
                }
                match retry_in {
                    Some(delay) if delay.is_zero() => write!(f, "; trying again now"),
                    Some(delay) => write!(f, "; trying again in {delay:?} (back-off)"),
                    None => Ok(()),
                }
            }
            Event::ChildExited { pid, status } => write!(f, "child {pid} exited ({status})"),
            Event::SuccessorMovedOn { gone, serving } => write!(
                f,
                "SIGUSR2 successor {gone} exited; the PID file names {serving}, which serves on: \
                 this process stays the old binary (.oldbin)"
            ),
            Event::SuccessorExited { pid, status } => write!(
                f,
                "successor {pid} exited ({status}) during the drain; serving again"
            ),
            Event::AcceptFailed { error, suppressed } => {
                write!(f, "accept failed: {error}; still serving")?;
                if *suppressed > 0 {
                    write!(f, " ({suppressed} more failed since the last report)")?;
                }
                Ok(())
            }
            Event::Draining {
                connections,
                requests,
            } => write!(
                f,
                "draining {connections} connections ({requests} requests in flight)"
            ),
            Event::Supervising {
                workers,
                pid1,
                behind_init,
                configured,
                generation,
                resumed,
            } => {
                let plural = if *workers == 1 { "" } else { "s" };
                write!(f, "supervising {workers} worker{plural}")?;
                if *pid1 {
                    f.write_str(" as PID 1")?;
                }
                if *behind_init {
                    f.write_str(" behind the init of a PID namespace")?;
                }
                if !*configured && !*resumed && (*pid1 || *behind_init) {
                    f.write_str(
                        " (by default: a process that replaced itself here would end the \
                         namespace, and the service with it)",
                    )?;
                }
                if *resumed {
                    write!(f, " (re-executed in place, generation {generation})")?;
                }
                Ok(())
            }
            Event::WorkerReady { pid, generation } => {
                write!(f, "worker {pid} ready (generation {generation})")
            }
            Event::WorkerExited {
                pid,
                status,
                replaced_in: None,
                stopped: true,
                ..
            } => write!(f, "worker {pid} exited ({status}), stopped by the shutdown"),
            Event::WorkerExited {
                pid,
                status,
                replaced_in: None,
                ..
            } => write!(f, "worker {pid} exited ({status}), retired"),
            Event::WorkerExited {
                pid,
                status,
                replaced_in: Some(delay),
                state_lost,
                ..
            } => {
                let lost = match state_lost {
                    true => "; its state is lost, and its replacement starts without it",
                    false => "",
                };
                if status.success() {
                    write!(
                        f,
                        "worker {pid} exited ({status}){lost}; a new one starts in {delay:?} \
                         unless the service is stopping"
                    )
                } else if delay.is_zero() {
                    write!(
                        f,
                        "worker {pid} exited ({status}) unexpectedly{lost}; replacing it"
                    )
                } else {
                    write!(
                        f,
                        "worker {pid} exited ({status}) unexpectedly{lost}; the workers in its \
                         place keep dying soon after they start, replacing it in {delay:?}"
                    )
                }
            }
            Event::Restarted {
                generation,
                workers,
            } => write!(f, "restarted: generation {generation}, {workers} serving"),
            Event::Reexecuting { program } => {
                write!(f, "re-executing in place: {}", program.display())
            }
            Event::ReexecFailed { error } => {
                write!(f, "re-executing in place failed: {error}; carrying on")
            }
            Event::EdgeFailed { error } => write!(
                f,
                "the connections' epoll failed: {error}; stopping, as no connection would be \
                 woken"
            ),
            Event::Program {
                source, message, ..
            } => write!(f, "{source}: {message}"),
            Event::HandOverImpossible { why } => write!(
                f,
                "connections and state cannot move to the new process: {why}; they finish \
                 here or close"
            ),
            Event::ResumeFailed {
                kind,
                peer: Some(peer),
                why,
            } => write!(
                f,
                "a connection handed over (kind {kind:?}, from {peer}) was closed: {why}"
            ),
            Event::ResumeFailed { kind, why, .. } => write!(
                f,
                "a connection handed over (kind {kind:?}) was lost: {why}"
            ),
            Event::Exiting {
                cut,
                dropped,
                upgraded,
                lost,
                cut_by,
            } => {
                let by = cut_by.unwrap_or(crate::CutBy::DrainTimeout);
                write!(
                    f,
                    "exiting: {cut} requests cut {by}, {dropped} connections dropped"
                )?;
                if *upgraded > 0 {
                    write!(f, " ({upgraded} of them upgraded)")?;
                }
                if *lost > 0 {
                    write!(f, ", {lost} handed-over connections lost")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_has_a_level() {
        let error = io::Error::other("no such file");
        let failed = Event::SpawnFailed {
            pid: None,
            error: &error,
            serving: true,
            retry_in: None,
        };
        assert_eq!(failed.level(), Level::Error);
        let ignored = Event::Ignored {
            signal: Signal::Hup,
            reason: "draining",
        };
        assert_eq!(ignored.level(), Level::Warn);
        assert_eq!(Event::Spawned { pid: 7 }.level(), Level::Info);
        let had_none = Event::StateInherited {
            bytes: None,
            why_none: Some(HAD_NO_STATE),
            waited: std::time::Duration::ZERO,
        };
        assert_eq!(had_none.level(), Level::Info);
        let lost = Event::StateInherited {
            bytes: None,
            why_none: Some("none came within 6s"),
            waited: std::time::Duration::ZERO,
        };
        assert_eq!(lost.level(), Level::Warn);
        let cut = Event::Exiting {
            cut: 1,
            dropped: 1,
            upgraded: 0,
            lost: 0,
            cut_by: Some(crate::CutBy::DrainTimeout),
        };
        assert_eq!(cut.level(), Level::Warn);
        let program = Event::Program {
            level: Level::Error,
            source: "http",
            message: "the database is down",
        };
        assert_eq!(program.level(), Level::Error);
        assert_eq!(program.to_string(), "http: the database is down");
    }

    #[cfg(feature = "log")]
    #[test]
    fn log_event_sends_the_line_at_its_level() {
        use std::sync::Mutex;
        type Line = (log::Level, String, String);
        static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());
        struct Capture;
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata<'_>) -> bool {
                true
            }
            fn log(&self, record: &log::Record<'_>) {
                let line = (
                    record.level(),
                    record.target().to_owned(),
                    record.args().to_string(),
                );
                LINES.lock().unwrap().push(line);
            }
            fn flush(&self) {}
        }
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
        log_event(&Event::Spawned { pid: 42 });
        let error = io::Error::other("no such file");
        let failed = Event::SpawnFailed {
            pid: None,
            error: &error,
            serving: true,
            retry_in: None,
        };
        log_event(&failed);
        let lines = LINES.lock().unwrap();
        let want: [Line; 2] = [
            (log::Level::Info, "baton".into(), "spawned child 42".into()),
            (log::Level::Error, "baton".into(), failed.to_string()),
        ];
        assert_eq!(lines[..], want);
    }
}
