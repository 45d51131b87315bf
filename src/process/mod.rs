//! The supervising process: it keeps the PID and the listening sockets for the service's life,
//! never accepts, and serves through N worker processes, each a copy of this binary serving
//! exactly as a single-process server does.
//!
//! ```text
//! start: N workers (fds 3…, LISTENER, readiness pipe, control channel) -> each ready -> READY=1
//! SIGHUP: N new workers (each with a relay) -> all ready -> each old worker is told over its
//!         control channel to retire, handing its connections to a new one -> execve(self)
//!         in place, carrying the listeners and the workers' channels
//! a worker dies: replaced at once (quick repeated deaths back off); the sockets stay open
//! SIGINT/SIGQUIT/SIGTERM: every worker retires and drains; exit when all have exited
//! ```
//!
//! Workers ignore SIGHUP and SIGUSR2 and drain on SIGINT/SIGQUIT/SIGTERM, so a signal to the
//! whole process group acts as one to this process. EOF on a worker's control channel tells
//! it this process is gone. One reaper (`waitpid(-1)`) collects workers and any orphan that
//! was reparented here (as PID 1, or as the child subreaper this process makes itself).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Timer;
use smol::future::FutureExt as _;
use smol::{LocalExecutor, Task};

use crate::config::Config;
use crate::config::timing::{
    CLEAN_EXIT_GRACE, FIRST_BACKOFF, KILL_GRACE, MOST_BACKOFF, QUICK_DEATH,
};
use crate::event::Event;
use crate::handoff::relay::Relay;
use crate::handoff::{self, Exec, NotReady, Ready, Role};
use crate::listener::{Description, LISTENER_ENV, Listener, SUPERVISOR_ENV};
use crate::report::{Report, Stop};
use crate::server::Server;
use crate::signals::{Command, Signal, Signals};
use crate::supervisor::Supervisor;

mod state;

use state::{Carried, CarriedWorker};

/// How many exit statuses of other children are kept for failed starts to look up.
const REAPED_KEPT: usize = 32;

/// A serving worker.
struct Worker {
    pid: u32,
    control: Relay,
    generation: u64,
    started: Instant,
}

/// Workers that came up, or the first failure (with the pid, if it got one).
type Started = Result<Vec<Ready>, (Option<u32>, io::Error)>;

/// Workers being started, and what they are for.
struct Starting {
    /// A restart (SIGHUP): the whole next generation. Else: one replacement.
    restart: bool,
    task: Task<Started>,
}

/// Runs the supervising process until a shutdown signal has drained every worker.
pub(crate) async fn supervise(server: Server) -> io::Result<Report> {
    let executor = LocalExecutor::new();
    let mut supervising = Supervising::start(server)?;
    let run = supervising.run(&executor);
    let tasks = async {
        loop {
            executor.tick().await;
        }
    };
    run.or(tasks).await
}

struct Supervising {
    listeners: Vec<Listener>,
    exec: Exec,
    config: Config,
    /// How many workers serve.
    count: usize,
    emit: Rc<dyn Fn(&Event<'_>)>,
    signals: Signals,
    notify: Supervisor,
    workers: Vec<Worker>,
    /// Workers told to retire, still draining.
    retiring: Vec<u32>,
    generation: u64,
    /// Workers that died quickly (or never came up) in a row.
    quick_deaths: u32,
    /// When the next replacement may start.
    next_respawn: Option<Instant>,
    /// Workers that exited unclean while retiring.
    unclean: usize,
    /// The last children reaped that were neither workers nor retiring: orphans, and workers
    /// that died before they were ready (so that a failed start can say how it ended).
    reaped: Rc<RefCell<VecDeque<(u32, ExitStatus)>>>,
}

impl Supervising {
    fn start(server: Server) -> io::Result<Supervising> {
        let Server {
            config,
            listeners,
            supervisor_state,
            environment_kept,
            signals,
            exec,
            on_event: emit,
            ..
        } = server;
        // Certificates are checked here too, so a broken set fails at start-up, not in every
        // worker (each worker loads them itself, so a restart rotates them).
        crate::server::load_tls(&listeners, &config.tls_files)?;
        let pid1 = std::process::id() == 1;
        if !pid1 {
            // Successors and orphans of workers stay this process's children.
            let me = rustix::process::getpid();
            rustix::process::set_child_subreaper(Some(me)).map_err(io::Error::from)?;
        }
        crate::server::announce(&listeners, environment_kept, &*emit);
        let notify = Supervisor::new(config.pid_file.clone());
        let mut supervising = Supervising {
            count: config.workers.unwrap_or(1).max(1),
            listeners,
            exec,
            config,
            emit,
            signals,
            notify,
            workers: Vec::new(),
            retiring: Vec::new(),
            generation: 0,
            quick_deaths: 0,
            next_respawn: None,
            unclean: 0,
            reaped: Rc::default(),
        };
        if let Some(text) = supervisor_state {
            supervising.resume(&text)?;
        }
        (supervising.emit)(&Event::Supervising {
            workers: supervising.count,
            pid1,
            generation: supervising.generation,
            resumed: supervising.generation > 0,
        });
        // The PID file names this process for the service's life.
        supervising.notify.write_pid_file()?;
        Ok(supervising)
    }

    /// Takes back the workers this process had before it re-executed itself, and collects
    /// any that exited meanwhile (their SIGCHLD went to the old image).
    fn resume(&mut self, text: &str) -> io::Result<()> {
        let carried = Carried::parse(text)?;
        self.generation = carried.generation;
        self.retiring = carried.retiring;
        for worker in carried.workers {
            self.workers.push(Worker {
                pid: worker.pid,
                control: Relay::new(worker.control)?,
                generation: worker.generation,
                started: Instant::now(),
            });
        }
        Ok(())
    }

    async fn run(&mut self, executor: &LocalExecutor<'static>) -> io::Result<Report> {
        let mut starting: Option<Starting> = None;
        if self.workers.is_empty() {
            starting = Some(self.start_workers(executor, true)?);
        } else {
            // Resumed after an exec: systemd heard READY before it; collect what exited since.
            self.reap();
        }
        let signal = loop {
            let respawn_due = starting.is_none() && self.workers.len() < self.count;
            let next_respawn = self.next_respawn;
            let Supervising { signals, .. } = self;
            let signal = async { Wake::Signal(signals.next().await) };
            let started = async {
                match starting.as_mut() {
                    Some(starting) => Wake::Started((&mut starting.task).await),
                    None => std::future::pending().await,
                }
            };
            let respawn = async {
                if !respawn_due {
                    std::future::pending::<()>().await;
                }
                if let Some(at) = next_respawn {
                    Timer::at(at).await;
                }
                Wake::Respawn
            };
            match signal.or(started).or(respawn).await {
                Wake::Respawn => {
                    self.next_respawn = None;
                    match self.start_workers(executor, false) {
                        Ok(next) => starting = Some(next),
                        Err(error) => {
                            (self.emit)(&Event::SpawnFailed {
                                pid: None,
                                error: &error,
                            });
                            self.quick_death();
                        }
                    }
                }
                Wake::Started(outcome) => {
                    let restart = starting.take().is_some_and(|s| s.restart);
                    if self.started(restart, outcome) {
                        if let Err(error) = self.reexec().await {
                            (self.emit)(&Event::ReexecFailed { error: &error });
                        }
                    }
                }
                Wake::Signal(signal) => {
                    let (signal, command) = signal?;
                    if command != Command::Reap {
                        (self.emit)(&Event::Signal { signal });
                    }
                    match command {
                        Command::Reap => self.reap(),
                        Command::Shutdown => break signal,
                        Command::Spawn => (self.emit)(&Event::Ignored {
                            signal,
                            reason: "a supervising process restarts its workers on SIGHUP",
                        }),
                        Command::Restart if starting.as_ref().is_some_and(|s| s.restart) => {
                            (self.emit)(&Event::Ignored {
                                signal,
                                reason: "an upgrade is already in progress",
                            });
                        }
                        Command::Restart => {
                            // A replacement still starting is of the generation that goes:
                            // dropping its task kills it.
                            self.notify.reloading();
                            starting = match self.start_workers(executor, true) {
                                Ok(next) => Some(next),
                                Err(error) => {
                                    self.restart_failed(None, &error);
                                    None
                                }
                            };
                        }
                    }
                }
            }
        };
        // Workers still starting are killed with their task.
        drop(starting);
        Ok(self.shutdown(signal).await)
    }

    /// Starts the next generation (`all`: `count` workers at once), or one replacement.
    /// The next generation gets a relay each, for the connections of the workers it replaces.
    fn start_workers(&self, executor: &LocalExecutor<'static>, all: bool) -> io::Result<Starting> {
        let count = if all { self.count } else { 1 };
        let restart = all && self.generation > 0;
        let relay = restart && self.config.hand_over_connections;
        let mut tasks = Vec::with_capacity(count);
        for _ in 0..count {
            let spawn = handoff::prepare(&self.exec, &self.listeners, Role::Worker { relay })?;
            let emit = self.emit.clone();
            let timeout = self.config.upgrade_timeout;
            let reaped = self.reaped.clone();
            tasks.push(executor.spawn(async move {
                // A relay's first message is the (empty) state: the new worker serves at once.
                let successor = spawn.start(Some(&[])).await.map_err(|e| (None, e))?;
                emit(&Event::Spawned {
                    pid: successor.pid(),
                });
                successor.ready(timeout, None).await.map_err(|(pid, why)| {
                    let status = reaped.borrow().iter().find(|(p, _)| *p == pid).map(|r| r.1);
                    let why = match (why, status) {
                        (NotReady::Exited(None), Some(status)) => NotReady::Exited(Some(status)),
                        (why, _) => why,
                    };
                    (Some(pid), io::Error::from(why))
                })
            }));
        }
        let task = executor.spawn(async move {
            // All start at once. One that fails does not stop the others; those that did
            // come up are retired again, so a failed restart leaves the old generation alone.
            let mut ready = Vec::with_capacity(tasks.len());
            let mut failure = None;
            for task in tasks {
                match task.await {
                    Ok(worker) => ready.push(worker),
                    Err(error) => failure = failure.or(Some(error)),
                }
            }
            match failure {
                None => Ok(ready),
                Some(error) => {
                    for worker in &ready {
                        if let Some(control) = &worker.control {
                            let _ = control.try_retire(None);
                        }
                    }
                    Err(error)
                }
            }
        });
        Ok(Starting { restart, task })
    }

    /// New workers are ready, or one of them failed. `true`: a restart is complete, and this
    /// process should now re-execute itself.
    fn started(&mut self, restart: bool, outcome: Started) -> bool {
        let ready = match outcome {
            Ok(ready) => ready,
            Err((pid, error)) if restart => {
                self.restart_failed(pid, &error);
                return false;
            }
            Err((pid, error)) => {
                (self.emit)(&Event::SpawnFailed { pid, error: &error });
                self.quick_death();
                return false;
            }
        };
        if restart || self.generation == 0 {
            self.generation += 1;
        }
        let generation = self.generation;
        let mut relays = Vec::with_capacity(ready.len());
        let mut fresh = Vec::with_capacity(ready.len());
        for Ready {
            child,
            relay,
            control,
        } in ready
        {
            let Some(control) = control else { continue };
            let pid = child.id();
            (self.emit)(&Event::WorkerReady { pid, generation });
            relays.push(relay);
            fresh.push(Worker {
                pid,
                control,
                generation,
                started: Instant::now(),
            });
        }
        if restart {
            // Old worker i hands its connections to new worker i (modulo the count).
            for (i, worker) in std::mem::take(&mut self.workers).into_iter().enumerate() {
                let relay = relays.get(i % relays.len().max(1)).and_then(Option::as_ref);
                let _ = worker.control.try_retire(relay.map(|r| r.as_fd()));
                self.retiring.push(worker.pid);
            }
        }
        // Our ends of the relays close here: each new worker's relay ends when the worker it
        // took over from exits.
        drop(relays);
        self.workers.extend(fresh);
        self.ready();
        if restart {
            (self.emit)(&Event::Restarted {
                generation,
                workers: self.workers.len(),
            });
            self.notify.restart_outcome(std::process::id(), None);
        }
        restart
    }

    fn restart_failed(&mut self, pid: Option<u32>, error: &io::Error) {
        (self.emit)(&Event::SpawnFailed { pid, error });
        self.notify.upgrade_failed(&error.to_string());
    }

    /// Tells systemd how many workers serve, once they do.
    fn ready(&self) {
        if !self.workers.is_empty() {
            self.notify
                .workers_ready(self.workers.len(), self.generation);
        }
    }

    /// A worker died soon after it started, or never came up: the next replacement waits,
    /// twice as long each time in a row (never a spinning core). Returns the wait.
    fn quick_death(&mut self) -> Duration {
        self.quick_deaths += 1;
        let delay = match self.quick_deaths {
            0 | 1 => Duration::ZERO,
            n => (FIRST_BACKOFF * 2u32.saturating_pow(n - 2)).min(MOST_BACKOFF),
        };
        self.next_respawn = Some(Instant::now() + delay);
        delay
    }

    /// Collects every child that exited: workers (replaced unless retiring), and orphans
    /// reparented to this process.
    fn reap(&mut self) {
        while let Ok(Some((pid, status))) =
            rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG)
        {
            let pid = pid.as_raw_nonzero().get() as u32;
            let status = ExitStatus::from_raw(status.as_raw());
            if let Some(at) = self.workers.iter().position(|w| w.pid == pid) {
                let worker = self.workers.remove(at);
                let replaced_in = if status.success() {
                    // A clean exit is a drain: it got a shutdown signal, most likely the same
                    // one (a Ctrl-C to the group) that is on its way to this process. Replace
                    // it only if no shutdown follows shortly.
                    let at = Instant::now() + CLEAN_EXIT_GRACE;
                    self.next_respawn = Some(self.next_respawn.map_or(at, |n| n.max(at)));
                    CLEAN_EXIT_GRACE
                } else if worker.started.elapsed() < QUICK_DEATH {
                    self.quick_death()
                } else {
                    self.quick_deaths = 0;
                    self.next_respawn = None;
                    Duration::ZERO
                };
                (self.emit)(&Event::WorkerExited {
                    pid,
                    status,
                    replaced_in: Some(replaced_in),
                });
            } else if let Some(at) = self.retiring.iter().position(|&p| p == pid) {
                self.retiring.remove(at);
                self.unclean += usize::from(!status.success());
                (self.emit)(&Event::WorkerExited {
                    pid,
                    status,
                    replaced_in: None,
                });
            } else {
                (self.emit)(&Event::ChildExited { pid, status });
                let mut reaped = self.reaped.borrow_mut();
                if reaped.len() == REAPED_KEPT {
                    reaped.pop_front();
                }
                reaped.push_back((pid, status));
            }
        }
    }

    /// Retires every worker and waits for them all, bounded by the drain timeout (then they
    /// are killed); a second shutdown signal makes them stop at once.
    async fn shutdown(&mut self, signal: Signal) -> Report {
        self.notify.stopping();
        let mut retired_channels = Vec::new();
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.control.try_retire(None);
            self.retiring.push(worker.pid);
            retired_channels.push(worker.control);
        }
        let deadline = Instant::now() + self.config.drain_timeout + KILL_GRACE;
        let mut killed = false;
        self.reap();
        while !self.retiring.is_empty() {
            let next = async { Some(self.signals.next().await) };
            let late = async {
                if killed {
                    std::future::pending::<()>().await;
                }
                Timer::at(deadline).await;
                None
            };
            match next.or(late).await {
                Some(Ok((_, Command::Reap))) => {}
                Some(Ok((signal, Command::Shutdown))) => {
                    (self.emit)(&Event::Signal { signal });
                    // Draining workers stop at once on a second shutdown signal.
                    for control in &retired_channels {
                        let _ = control.try_stop_now();
                    }
                }
                Some(Ok((signal, _))) => {
                    (self.emit)(&Event::Signal { signal });
                    (self.emit)(&Event::Ignored {
                        signal,
                        reason: "draining",
                    });
                }
                Some(Err(_)) => {}
                None => {
                    killed = true;
                    self.signal_retiring(rustix::process::Signal::KILL);
                }
            }
            self.reap();
        }
        for path in self.listeners.iter().filter_map(Listener::unix_path) {
            let _ = std::fs::remove_file(path);
        }
        let cut = self.unclean;
        (self.emit)(&Event::Exiting {
            cut,
            dropped: 0,
            upgraded: 0,
        });
        self.notify.exited(true);
        Report {
            stop: Stop::Shutdown { signal },
            cut,
            dropped: 0,
            upgraded: 0,
        }
    }

    fn signal_retiring(&self, signal: rustix::process::Signal) {
        for &pid in &self.retiring {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }

    /// Replaces this process's image with the binary now at its start path, in place (the PID
    /// stays), carrying the listeners, the workers' control channels and the generation.
    /// Returns only if the exec failed; this process then carries on as it was.
    async fn reexec(&mut self) -> io::Result<()> {
        // From here, signals stay pending (and survive the exec) instead of reaching a
        // handler whose pipe the exec discards.
        if let Err(error) = self.signals.requeue().await {
            let _ = crate::signals::mask(libc::SIG_UNBLOCK, &crate::signals::HANDLED);
            return Err(error);
        }
        let carried = Carried {
            generation: self.generation,
            workers: self
                .workers
                .iter()
                .map(|w| CarriedWorker {
                    pid: w.pid,
                    control: w.control.as_fd().as_raw_fd(),
                    generation: w.generation,
                })
                .collect(),
            retiring: self.retiring.clone(),
        };
        let state = carried.to_json();
        let descriptions: Vec<Description> = self
            .listeners
            .iter()
            .map(|listener| listener.describe(listener.fd()))
            .collect();
        let mut keep: Vec<RawFd> = self.listeners.iter().map(Listener::fd).collect();
        keep.extend(carried.workers.iter().map(|w| w.control));
        (self.emit)(&Event::Reexecuting {
            program: self.exec.program(),
        });
        let mut command = self.exec.command();
        command
            .env(LISTENER_ENV, Description::to_json_all(&descriptions))
            .env(SUPERVISOR_ENV, state);
        for name in crate::listener::ACTIVATION_ENV {
            command.env_remove(name);
        }
        let held = keep.clone();
        // SAFETY: `exec` runs the closure in this process (there is no fork), right before
        // execve: it only changes this thread's signal mask and the CLOEXEC flag of fds this
        // process owns (the listeners and the control channels, kept open by `self`).
        unsafe {
            command.pre_exec(move || hold_across_exec(&held));
        }
        let error = command.exec();
        // Still here: the exec failed. Undo what the closure and `exec` changed.
        restore_after_failed_exec(&keep);
        Err(crate::error::context(
            error.kind(),
            format!("cannot re-execute {}", self.exec.program().display()),
            error,
        ))
    }
}

/// What woke the supervising loop.
enum Wake {
    Signal(io::Result<(Signal, Command)>),
    Started(Started),
    Respawn,
}

/// Before the supervising process's execve: hold every handled signal (they stay pending
/// across the exec and are handled once the new image has installed its handlers), and let
/// the carried fds survive the exec.
fn hold_across_exec(keep: &[RawFd]) -> io::Result<()> {
    crate::signals::mask(libc::SIG_BLOCK, &crate::signals::HANDLED)?;
    for &fd in keep {
        crate::listener::set_cloexec(fd, false)?;
    }
    Ok(())
}

/// After a failed re-exec: the carried fds are close-on-exec again, signals are unblocked,
/// and SIGPIPE is ignored again (`Command::exec` reset it to its default, which would let a
/// write to a closed socket end this process).
fn restore_after_failed_exec(keep: &[RawFd]) {
    for &fd in keep {
        let _ = crate::listener::set_cloexec(fd, true);
    }
    let _ = crate::signals::mask(libc::SIG_UNBLOCK, &crate::signals::HANDLED);
    crate::signals::ignore_sigpipe();
}
