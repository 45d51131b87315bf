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
use super::drive::{self, Machine, Step};
use super::role::{self, Action, Phase, Role};
use super::{Alone, Setup};

mod reexec;
mod shutdown;
mod workers;

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
    let executor = Rc::new(LocalExecutor::new());
    let mut supervising = Supervising::start(setup, executor.clone())?;
    let run = async {
        let first = supervising.first_step()?;
        drive::drive(&mut supervising, first).await
    };
    let tasks = async {
        loop {
            executor.tick().await;
        }
    };
    run.or(tasks).await
}

struct Supervising {
    /// Where the workers' start-up tasks run (beside the phases, on this thread).
    executor: Rc<LocalExecutor<'static>>,
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
    fn start(setup: Setup, executor: Rc<LocalExecutor<'static>>) -> io::Result<Supervising> {
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
            executor,
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

    /// Where the first phase starts: the first generation starting, or, resumed after an
    /// exec, serving with the workers it had.
    fn first_step(&mut self) -> io::Result<Step<Starting, Signal>> {
        if self.workers.is_empty() {
            let all = (0..self.count).collect();
            let first = self.start_workers(&self.executor, all, false)?;
            return Ok(Step::Restarting(first));
        }
        // Resumed after an exec: systemd heard READY before it; collect what exited since.
        self.reap();
        Ok(Step::Serving)
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
}

/// The phases of a supervising process: serving (workers come and go, a restart starts the
/// next generation, `workers`), then the shutdown's drain (`shutdown`).
impl Machine for Supervising {
    type Restart = Starting;
    type Drain = Signal;

    async fn serving(
        &mut self,
        mut starting: Option<Starting>,
    ) -> io::Result<Step<Starting, Signal>> {
        let executor = self.executor.clone();
        loop {
            match self.next_wake(&mut starting).await {
                Wake::Reap => self.reap(),
                Wake::Respawn(slot) => self.respawn(&executor, slot),
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
                    return Ok(Step::Serving);
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
                        // (Workers still starting are killed with their tasks, dropped here.)
                        Action::Shutdown | Action::StopNow => return Ok(Step::Draining(signal)),
                        Action::Ignore(reason) => (self.emit)(&Event::Ignored { signal, reason }),
                        // (A supervising process takes no SIGUSR2: the table says so.)
                        Action::Restart | Action::Spawn => {
                            if let Some(next) = self.restart(&executor) {
                                return Ok(Step::Restarting(next));
                            }
                        }
                    }
                }
            }
        }
    }

    async fn draining(&mut self, signal: Signal) -> Step<Starting, Signal> {
        self.replacing.clear();
        Step::Done(self.shutdown(signal).await)
    }

    async fn ending(&mut self, report: &Report) {
        self.hooks.exiting(report).await;
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
