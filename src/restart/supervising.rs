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
//! it this process is gone. The reaper ([`crate::reap`]) collects workers by pid, and any
//! orphan that was reparented here (as PID 1, or as the child subreaper this process makes
//! itself), but never a child that a `std::process::Child` here waits for.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_io::Timer;
use smol::future::FutureExt as _;
use smol::{LocalExecutor, Task};

use crate::config::Config;
use crate::config::timing::{
    CLEAN_EXIT_GRACE, FIRST_BACKOFF, KILL_GRACE, MOST_BACKOFF, QUICK_DEATH,
};
use crate::event::Event;
use crate::handoff::relay::{Message, Relay};
use crate::handoff::{self, Child, Exec, Ready};
use crate::listener::{Description, LISTENER_ENV, Listener, SUPERVISOR_ENV};
use crate::reap::Found;
use crate::report::CutBy;
use crate::report::{Report, Stop};
use crate::signals::{Command, Signal, Signals};
use crate::supervisor::Supervisor;

use super::carried::{Carried, CarriedWorker};
use super::role::{self, Action, Phase, Role};
use super::{Alone, Setup};

/// How soon the reaper looks again when an exited child was someone else's to collect.
const REAP_AGAIN: Duration = Duration::from_millis(20);

/// A serving worker.
struct Worker {
    pid: u32,
    control: Relay,
    generation: u64,
    /// When it reported ready.
    started: Instant,
    /// Its place among the `count` workers: a replacement takes the slot of the worker it
    /// replaces, and a new generation's worker `i` takes over from the old worker `i`.
    slot: usize,
}

/// One worker's place: whether its workers keep dying soon after they start (a crash loop,
/// counted per slot, so one slot's back-off never holds up another's replacement).
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Workers of this slot that died before they were ready, or soon after, in a row.
    quick_deaths: u32,
    /// When the next replacement may start (`None`: at once).
    not_before: Option<Instant>,
}

/// Workers that came up, or the first failure (with the pid, if it got one).
type Started = Result<Vec<Ready>, (Option<u32>, io::Error)>;

/// Workers being started, and what they are for.
struct Starting {
    /// A restart (SIGHUP): the whole next generation. Else: the first generation, or one
    /// replacement.
    restart: bool,
    /// The slots they are for, in the order of the workers the task returns.
    slots: Vec<usize>,
    task: Task<Started>,
}

/// Runs the supervising process until a shutdown signal has drained every worker.
pub(crate) async fn supervise(setup: Setup) -> io::Result<Report> {
    let executor = LocalExecutor::new();
    let mut supervising = Supervising::start(setup)?;
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
    /// Workers told to retire, still draining (oldest first).
    retiring: Vec<Retiring>,
    generation: u64,
    /// Each worker's place, `count` of them.
    slots: Vec<Slot>,
    /// Replacements being started, one slot each (beside a restart's generation, if any).
    replacing: Vec<Starting>,
    /// An exited child was left for its owner to collect: look again shortly.
    reap_again: bool,
    /// Workers that exited unclean while retiring.
    unclean: usize,
    /// The service shuts down: workers that exit now were stopped, not retired by a restart.
    stopping: bool,
    /// The application's hooks: only `on_exit` runs in the supervising process.
    hooks: crate::hooks::Hooks,
}

impl Supervising {
    fn start(setup: Setup) -> io::Result<Supervising> {
        // The program's checks (certificates, say) run here too, so a broken set fails at
        // start-up, not in every worker (each worker runs them itself, so a restart picks up
        // new files).
        setup.check_before_ready()?;
        let Setup {
            config,
            listeners,
            supervisor_state,
            environment_kept,
            signals,
            exec,
            on_event: emit,
            hooks,
            ..
        } = setup;
        let alone = Alone::here();
        let pid1 = alone == Some(Alone::Pid1);
        if !pid1 {
            // Successors and orphans of workers stay this process's children.
            let me = rustix::process::getpid();
            rustix::process::set_child_subreaper(Some(me)).map_err(io::Error::from)?;
        }
        super::announce(&listeners, environment_kept, &*emit);
        let notify = Supervisor::new(config.pid_file.clone());
        let count = config.workers.unwrap_or(1).max(1);
        let mut supervising = Supervising {
            count,
            listeners,
            exec,
            config,
            emit,
            signals,
            notify,
            workers: Vec::new(),
            retiring: Vec::new(),
            generation: 0,
            slots: vec![Slot::default(); count],
            replacing: Vec::new(),
            reap_again: false,
            unclean: 0,
            stopping: false,
            hooks,
        };
        if let Some(text) = supervisor_state {
            supervising.resume(&text)?;
        }
        (supervising.emit)(&Event::Supervising {
            workers: supervising.count,
            pid1,
            behind_init: alone == Some(Alone::BehindInit),
            configured: supervising.config.workers.is_some(),
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
        for worker in carried.retiring {
            self.retiring.push(Retiring {
                pid: worker.pid,
                generation: worker.generation,
                control: worker.control.map(Relay::new).transpose()?,
            });
        }
        for (slot, worker) in carried.workers.into_iter().enumerate() {
            self.workers.push(Worker {
                pid: worker.pid,
                control: Relay::new(worker.control)?,
                generation: worker.generation,
                started: Instant::now(),
                slot: worker.slot.filter(|&s| s < self.count).unwrap_or(slot),
            });
        }
        Ok(())
    }

    async fn run(&mut self, executor: &LocalExecutor<'static>) -> io::Result<Report> {
        let mut starting: Option<Starting> = None;
        if self.workers.is_empty() {
            let all = (0..self.count).collect();
            starting = Some(self.start_workers(executor, all, false)?);
        } else {
            // Resumed after an exec: systemd heard READY before it; collect what exited since.
            self.reap();
        }
        let signal = loop {
            match self.next_wake(&mut starting).await {
                Wake::Reap => self.reap(),
                Wake::Respawn(slot) => self.respawn(executor, slot),
                Wake::Replaced(at, outcome) => {
                    let replacement = self.replacing.swap_remove(at);
                    self.started(replacement.restart, &replacement.slots, outcome);
                }
                Wake::Started(outcome) => {
                    let Some(started) = starting.take() else {
                        continue;
                    };
                    if self.started(started.restart, &started.slots, outcome) {
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
                    let phase = match &starting {
                        Some(starting) if starting.restart => Phase::Restarting,
                        _ => Phase::Serving,
                    };
                    match role::action(Role::Supervising, phase, command) {
                        Action::Reap => self.reap(),
                        Action::Shutdown | Action::StopNow => break signal,
                        Action::Ignore(reason) => (self.emit)(&Event::Ignored { signal, reason }),
                        // (A supervising process takes no SIGUSR2: the table says so.)
                        Action::Restart | Action::Spawn => {
                            if let Some(next) = self.restart(executor) {
                                starting = Some(next);
                            }
                        }
                    }
                }
            }
        };
        // Workers still starting are killed with their tasks.
        drop(starting);
        self.replacing.clear();
        let report = self.shutdown(signal).await;
        self.hooks.exiting(&report).await;
        Ok(report)
    }

    /// Waits for the next thing the supervising loop acts on: a signal, the generation
    /// `starting` (or a replacement) up or failed, a slot whose replacement may start, or
    /// another look for exited children.
    async fn next_wake(&mut self, starting: &mut Option<Starting>) -> Wake {
        // While a generation starts, it fills every slot; else each empty slot gets a
        // replacement once its back-off (if any) has passed.
        let respawn_at = match starting {
            Some(_) => None,
            None => self.next_vacancy(),
        };
        let reap_again = self.reap_again;
        let Supervising {
            signals, replacing, ..
        } = self;
        let signal = async { Wake::Signal(signals.next().await) };
        let started = async {
            match starting.as_mut() {
                Some(starting) => Wake::Started((&mut starting.task).await),
                None => std::future::pending().await,
            }
        };
        let replaced = std::future::poll_fn(|cx| {
            for (at, replacement) in replacing.iter_mut().enumerate() {
                if let Poll::Ready(outcome) = replacement.task.poll(cx) {
                    return Poll::Ready(Wake::Replaced(at, outcome));
                }
            }
            Poll::Pending
        });
        let respawn = async {
            match respawn_at {
                Some((slot, at)) => {
                    Timer::at(at).await;
                    Wake::Respawn(slot)
                }
                None => std::future::pending().await,
            }
        };
        let again = async {
            if !reap_again {
                std::future::pending::<()>().await;
            }
            Timer::after(REAP_AGAIN).await;
            Wake::Reap
        };
        signal.or(started).or(replaced).or(respawn).or(again).await
    }

    /// Starts the replacement of `slot` (its back-off has passed).
    fn respawn(&mut self, executor: &LocalExecutor<'static>, slot: usize) {
        self.slots[slot].not_before = None;
        match self.start_workers(executor, vec![slot], false) {
            Ok(next) => self.replacing.push(next),
            Err(error) => {
                let retry_in = self.quick_death(slot);
                (self.emit)(&Event::SpawnFailed {
                    pid: None,
                    error: &error,
                    serving: !self.workers.is_empty(),
                    retry_in: Some(retry_in),
                });
            }
        }
    }

    /// SIGHUP: a new generation of workers (the first, if none started yet), unless an old
    /// worker's connections would not fit in its successor (then the reason is reported).
    fn restart(&mut self, executor: &LocalExecutor<'static>) -> Option<Starting> {
        // Replacements still starting are of the generation that goes: dropping their tasks
        // kills them.
        self.replacing.clear();
        self.notify.reloading();
        let all = (0..self.count).collect();
        let restart = self.generation > 0;
        // Each old worker's connections must fit in its successor.
        let room = match restart && self.config.hand_over_connections {
            true => self
                .workers
                .iter()
                .try_for_each(|w| handoff::check_fd_room(Some(w.pid))),
            false => Ok(()),
        };
        match room.and_then(|()| self.start_workers(executor, all, restart)) {
            Ok(next) => Some(next),
            Err(error) => {
                self.restart_failed(None, &error);
                None
            }
        }
    }

    /// The empty slot whose replacement may start first, and when.
    fn next_vacancy(&self) -> Option<(usize, Instant)> {
        let now = Instant::now();
        let filled = |slot: usize| {
            self.workers.iter().any(|w| w.slot == slot)
                || self.replacing.iter().any(|r| r.slots.contains(&slot))
        };
        (0..self.count)
            .filter(|&slot| !filled(slot))
            .map(|slot| (slot, self.slots[slot].not_before.unwrap_or(now)))
            .min_by_key(|&(_, at)| at)
    }

    /// Starts workers for `slots` (a restart, with `restart`: the next generation, each with
    /// a relay for the connections and state of the worker it replaces).
    fn start_workers(
        &self,
        executor: &LocalExecutor<'static>,
        slots: Vec<usize>,
        restart: bool,
    ) -> io::Result<Starting> {
        let relay = restart && self.config.hand_over_connections;
        let mut tasks = Vec::with_capacity(slots.len());
        for _ in &slots {
            let spawn = handoff::prepare(&self.exec, &self.listeners, Child::Worker { relay })?;
            let emit = self.emit.clone();
            // The first start is not a restart: no generation serves yet to fall back on, so
            // its workers are waited for as long as they take (a start-up that loads a large
            // configuration, say); only later workers are held to `ready_timeout`.
            let timeout = (self.generation > 0).then_some(self.config.ready_timeout);
            // With a relay, the state comes later, from the worker this one replaces, once
            // that one has stopped serving: exact, as for a single process.
            tasks.push(
                executor.spawn(async move { spawn.start_until_ready(&*emit, timeout, None).await }),
            );
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
                            let _ = control.try_send(Message::Retire(None));
                        }
                        // Its `Owned` goes with `ready`: the reaper collects it when it
                        // exits, as any other child.
                    }
                    Err(error)
                }
            }
        });
        Ok(Starting {
            restart,
            slots,
            task,
        })
    }

    /// New workers for `slots` are ready, or one of them failed. `true`: a restart is
    /// complete, and this process should now re-execute itself.
    fn started(&mut self, restart: bool, slots: &[usize], outcome: Started) -> bool {
        let ready = match outcome {
            Ok(ready) => ready,
            Err((pid, error)) if restart => {
                self.restart_failed(pid, &error);
                return false;
            }
            Err((pid, error)) => {
                let mut retry_in = Duration::ZERO;
                for &slot in slots {
                    retry_in = retry_in.max(self.quick_death(slot));
                }
                (self.emit)(&Event::SpawnFailed {
                    pid,
                    error: &error,
                    serving: !self.workers.is_empty(),
                    retry_in: Some(retry_in),
                });
                return false;
            }
        };
        if restart || self.generation == 0 {
            self.generation += 1;
        }
        let generation = self.generation;
        let mut relays = Vec::with_capacity(ready.len());
        let mut fresh = Vec::with_capacity(ready.len());
        for (
            &slot,
            Ready {
                child,
                relay,
                control,
            },
        ) in slots.iter().zip(ready)
        {
            let pid = child.id();
            // Collected by pid from here on (see `reap`), once `child` is dropped below.
            let Some(control) = control else { continue };
            (self.emit)(&Event::WorkerReady { pid, generation });
            relays.push((slot, relay));
            fresh.push(Worker {
                pid,
                control,
                generation,
                started: Instant::now(),
                slot,
            });
        }
        if restart {
            // The old worker of each slot hands its connections and state to the new one. A
            // new worker whose slot had none (it died, and was not yet replaced) sees its
            // relay close when our end does, below, and serves at once, with no state.
            for worker in std::mem::take(&mut self.workers) {
                let relay = relays
                    .iter()
                    .find(|(slot, _)| *slot == worker.slot)
                    .and_then(|(_, relay)| relay.as_ref());
                let _ = worker
                    .control
                    .try_send(Message::Retire(relay.map(|r| r.as_fd())));
                self.retiring.push(Retiring {
                    pid: worker.pid,
                    generation: worker.generation,
                    control: Some(worker.control),
                });
            }
            // A new binary: the slots' crash counts start again.
            self.slots = vec![Slot::default(); self.count];
            self.bound_generations();
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
        (self.emit)(&Event::SpawnFailed {
            pid,
            error,
            serving: !self.workers.is_empty(),
            retry_in: None,
        });
        self.notify.upgrade_failed(&error.to_string());
    }

    /// Tells systemd how many workers serve, once they do.
    fn ready(&self) {
        if !self.workers.is_empty() {
            self.notify
                .workers_ready(self.workers.len(), self.generation);
        }
    }

    /// A worker of `slot` died soon after it started, or never came up: the slot's next
    /// replacement waits, twice as long each time in a row (never a spinning core). Returns
    /// the wait.
    fn quick_death(&mut self, slot: usize) -> Duration {
        let slot = &mut self.slots[slot];
        slot.quick_deaths += 1;
        let delay = match slot.quick_deaths {
            0 | 1 => Duration::ZERO,
            n => (FIRST_BACKOFF * 2u32.saturating_pow(n - 2)).min(MOST_BACKOFF),
        };
        slot.not_before = Some(Instant::now() + delay);
        delay
    }

    fn is_known(&self, pid: u32) -> bool {
        self.workers.iter().any(|w| w.pid == pid) || self.retiring.iter().any(|r| r.pid == pid)
    }

    /// Collects every child that exited and is this process's to collect: workers (by pid;
    /// replaced unless retiring), and orphans reparented to this process. A child that a
    /// `Child` here waits for (a worker still starting) is left to it.
    fn reap(&mut self) {
        self.reap_again = false;
        let known: Vec<u32> = self.workers.iter().map(|w| w.pid).collect();
        let retiring = self.retiring.iter().map(|r| r.pid);
        for pid in known.into_iter().chain(retiring.collect::<Vec<_>>()) {
            if let Some(status) = crate::reap::reap_pid(pid) {
                self.exited(pid, status);
            }
        }
        loop {
            match crate::reap::next_orphan(|pid| self.is_known(pid)) {
                Found::Nothing => break,
                Found::Known(pid) => match crate::reap::reap_pid(pid) {
                    Some(status) => self.exited(pid, status),
                    None => break,
                },
                Found::Orphan(pid, status) => (self.emit)(&Event::ChildExited { pid, status }),
                Found::Later => {
                    self.reap_again = true;
                    break;
                }
            }
        }
    }

    /// A worker (serving or retiring) exited.
    fn exited(&mut self, pid: u32, status: ExitStatus) {
        if let Some(at) = self.workers.iter().position(|w| w.pid == pid) {
            let worker = self.workers.remove(at);
            let killed = status.signal() == Some(libc::SIGKILL);
            let replaced_in = if status.success() {
                // A clean exit is a drain: it got a shutdown signal, most likely the same
                // one (a Ctrl-C to the group) that is on its way to this process. Replace
                // it only if no shutdown follows shortly.
                let slot = &mut self.slots[worker.slot];
                let at = Instant::now() + CLEAN_EXIT_GRACE;
                slot.not_before = Some(slot.not_before.map_or(at, |n| n.max(at)));
                CLEAN_EXIT_GRACE
            } else if !killed && worker.started.elapsed() < QUICK_DEATH {
                // A crash soon after start: maybe a crash loop.
                self.quick_death(worker.slot)
            } else {
                // It was serving, and something ended it (OOM, SIGKILL, an operator, a
                // crash long after start): replaced at once.
                self.slots[worker.slot] = Slot::default();
                Duration::ZERO
            };
            (self.emit)(&Event::WorkerExited {
                pid,
                status,
                replaced_in: Some(replaced_in),
                state_lost: self.hooks.has_state(),
                stopped: false,
            });
        } else if let Some(at) = self.retiring.iter().position(|r| r.pid == pid) {
            self.retiring.remove(at);
            self.unclean += usize::from(!status.success());
            (self.emit)(&Event::WorkerExited {
                pid,
                status,
                replaced_in: None,
                state_lost: false,
                stopped: self.stopping,
            });
        }
    }

    /// Stops accepting at once (this process's listeners close, and each worker closes its
    /// copies when told), then waits for every worker to drain, bounded by the drain timeout
    /// (then they are killed); a second shutdown signal makes them stop at once.
    async fn shutdown(&mut self, signal: Signal) -> Report {
        self.stopping = true;
        self.notify.stopping();
        let unix_paths: Vec<std::path::PathBuf> = self
            .listeners
            .iter()
            .filter_map(Listener::unix_path)
            .map(Into::into)
            .collect();
        self.listeners.clear();
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.control.try_send(Message::Quit(signal));
            self.retiring.push(Retiring {
                pid: worker.pid,
                generation: worker.generation,
                control: Some(worker.control),
            });
        }
        let deadline = Instant::now() + self.config.drain_timeout + KILL_GRACE;
        let mut killed = false;
        let mut cut_by = None;
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
            let draining = Phase::Draining {
                first_is_expected: false,
            };
            match next.or(late).await {
                Some(Ok((signal, command))) => {
                    match role::action(Role::Supervising, draining, command) {
                        Action::Reap => {}
                        Action::Ignore(reason) => {
                            (self.emit)(&Event::Signal { signal });
                            (self.emit)(&Event::Ignored { signal, reason });
                        }
                        _ => {
                            (self.emit)(&Event::Signal { signal });
                            // Draining workers stop at once on a second shutdown signal.
                            cut_by = Some(CutBy::Signal);
                            for control in self.retiring.iter().filter_map(|r| r.control.as_ref()) {
                                let _ = control.try_send(Message::StopNow(CutBy::Signal));
                            }
                        }
                    }
                }
                Some(Err(_)) => {}
                None => {
                    killed = true;
                    cut_by = cut_by.or(Some(CutBy::DrainTimeout));
                    self.signal_retiring(rustix::process::Signal::KILL);
                }
            }
            self.reap();
        }
        for path in unix_paths {
            let _ = std::fs::remove_file(path);
        }
        let cut = self.unclean;
        let cut_by = cut_by.filter(|_| cut > 0);
        (self.emit)(&Event::Exiting {
            cut,
            dropped: 0,
            upgraded: 0,
            lost: 0,
            cut_by,
        });
        self.notify.exited(true);
        Report {
            stop: Stop::Shutdown { signal },
            cut,
            dropped: 0,
            upgraded: 0,
            lost: 0,
            cut_by,
        }
    }

    /// After a restart: with the serving generation and those still draining, more than
    /// `max_generations` are alive; the oldest draining ones are told to stop at once (what
    /// they still do is cut, and their exit says by what), as a single process does.
    fn bound_generations(&mut self) {
        let max = self.config.max_generations.max(2);
        let mut draining: Vec<u64> = self
            .retiring
            .iter()
            .filter(|r| r.control.is_some())
            .map(|r| r.generation)
            .collect();
        draining.sort_unstable();
        draining.dedup();
        let excess = (draining.len() + 1).saturating_sub(max);
        for &generation in &draining[..excess] {
            for retiring in self.retiring.iter_mut() {
                if retiring.generation != generation {
                    continue;
                }
                // Told once: its channel goes with the message.
                if let Some(control) = retiring.control.take() {
                    let _ = control.try_send(Message::StopNow(CutBy::GenerationLimit { max }));
                    (self.emit)(&Event::GenerationEnded {
                        pid: retiring.pid,
                        max,
                    });
                }
            }
        }
    }

    fn signal_retiring(&self, signal: rustix::process::Signal) {
        for pid in self.retiring.iter().map(|r| r.pid) {
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
                    slot: Some(w.slot),
                })
                .collect(),
            retiring: self
                .retiring
                .iter()
                .map(|r| CarriedWorker {
                    pid: r.pid,
                    control: r.control.as_ref().map(|c| c.as_fd().as_raw_fd()),
                    generation: r.generation,
                    slot: None,
                })
                .collect(),
        };
        let state = carried.to_json();
        let descriptions: Vec<Description> = self
            .listeners
            .iter()
            .map(|listener| listener.describe(listener.fd()))
            .collect();
        let mut keep: Vec<RawFd> = self.listeners.iter().map(Listener::fd).collect();
        keep.extend(carried.workers.iter().map(|w| w.control));
        keep.extend(carried.retiring.iter().filter_map(|w| w.control));
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

/// A worker told to retire (or to stop), still draining.
struct Retiring {
    pid: u32,
    /// 0 if unknown (carried by a build that did not say).
    generation: u64,
    /// Its control channel: "stop at once" goes there.
    control: Option<Relay>,
}

/// What woke the supervising loop.
enum Wake {
    Signal(io::Result<(Signal, Command)>),
    /// The next generation (or the first) is up, or failed.
    Started(Started),
    /// Replacement `.0` of `replacing` is up, or failed.
    Replaced(usize, Started),
    /// A slot's replacement may start.
    Respawn(usize),
    /// Look for exited children again.
    Reap,
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
