//! What a server does once it serves, as phases:
//!
//! ```text
//! start ─> Serving ──SIGHUP/SIGUSR2──> Upgrading ──ready (SIGHUP)──> Draining ──> Report
//!             ^                            │  failed, or ready (SIGUSR2)    │
//!             └────────────────────────────┘                                │
//!             └───────────────────── the successor exited ──────────────────┘
//! ```
//!
//! The core's serving loop, for any [`Program`]: [`start`] runs the program's checks
//! ([`crate::Baton::before_ready`]), writes the pid file, takes the predecessor's state and
//! reports ready. [`Process::serving`] is the select loop of both `Serving` and `Upgrading`
//! (accept, relayed connections, signals, and, while upgrading, the successor's readiness).
//! [`Process::draining`] stops accepting and waits for the program's work under the drain
//! timer. Nothing here knows the program's protocol.

use std::future::Future;
use std::io;
use std::process::ExitStatus;

use crate::reap::Owned;
use crate::report::CutBy;
use std::rc::Rc;
use std::sync::Arc;

use async_io::Timer;
use smol::future::FutureExt as _;

use super::role::{self, Action, Role};
use super::{Setup, announce};
use crate::config::Config;
use crate::config::timing::{ACCEPT_REPORT_EVERY, CUT_GRACE, STATE_TIMEOUT};
use crate::drain::Drain;
use crate::event::Event;
use crate::handoff::relay::{Message, Received, Relay};
use crate::handoff::state::{Arrived, Content, Outgoing};
use crate::handoff::{self, Exec};
use crate::hooks::Hooks;
use crate::io::Address;
use crate::io::datagram::Datagrams;
use crate::io::edge::Edge;
use crate::io::stream::Stream;
use crate::listener::{AcceptError, Accepted, Listener, Listeners};
use crate::program::{Connection, Program, Resumed};
use crate::report::{Report, Stop};
use crate::signals::{Command, Signal, Signals};
use crate::supervisor::Supervisor;

/// Where the server is.
enum Phase {
    Serving,
    /// A successor is starting; this process serves meanwhile.
    Upgrading(Upgrade),
    Draining(Draining),
    Done(Report),
}

/// A successor on its way up, and what to do once it is ready.
struct Upgrade {
    /// SIGHUP (drain once ready) rather than SIGUSR2 (keep serving beside it).
    restart: bool,
    task: std::pin::Pin<Box<dyn Future<Output = Upgraded>>>,
}

/// The successor, serving (with this process's end of the relay, if any); or its pid (if it
/// got one) and why it is not.
type Upgraded = Result<handoff::Ready, (Option<u32>, io::Error)>;

/// Why draining, and, after a restart, to whom.
struct Draining {
    stop: Stop,
    /// The successor that took over; if it exits during the drain, this process serves again.
    successor: Option<Owned>,
    /// This process's end of the successor's relay, for handing connections over.
    outbound: Option<Relay>,
    /// A worker told to drain by its supervising process (which may send a shutdown signal
    /// to the whole group as well).
    from_supervisor: bool,
}

/// What comes from older processes: relays connections come in on, until each is closed (the
/// previous process's, and older ones it forwarded when it started draining), and the
/// generations still draining, oldest first.
#[derive(Default)]
struct Inbound {
    relays: Vec<Relay>,
    older: Vec<u32>,
}

/// Everything the phases share.
struct Process {
    /// What serves the connections.
    program: Rc<dyn Program>,
    /// The connections' epoll, which watches the listeners too.
    edge: Arc<Edge>,
    config: Config,
    listeners: Listeners,
    signals: Signals,
    exec: Exec,
    emit: Rc<dyn Fn(&Event<'_>)>,
    hooks: Hooks,
    supervisor: Supervisor,
    /// Relays connections come in on, and the older generations still draining.
    inbound: Inbound,
    /// A worker's control channel to its supervising process: it restarts and stops this
    /// process, which then ignores SIGHUP and SIGUSR2.
    control: Option<Relay>,
    relay_buffer: Vec<u8>,
    drain: Drain,
    /// Drains given up when a successor died during them; their connections still count.
    earlier: Vec<Drain>,
    /// SIGUSR2 successors, reaped when they exit.
    spawned: Vec<Owned>,
    /// Started by a supervising process.
    /// Single (may it replace itself?) or a worker.
    role: Role,
    /// The UDP listeners went to the program since this process (last) started serving.
    datagrams_given: bool,
    /// When an accept failure was last reported, and how many failed since.
    accept_reports: std::cell::Cell<(Option<std::time::Instant>, usize)>,
}

/// Serves until a restart or a shutdown has drained, and returns what the drain cut short.
pub(crate) async fn run(setup: Setup, program: Rc<dyn Program>) -> io::Result<Report> {
    // Every connection's readiness comes from the process's edge: handed out here, on the
    // core's thread, whatever thread the connections' tasks run on. If its epoll breaks, no
    // connection would be woken again: say so and stop.
    let edge = Edge::global()?.clone();
    let events = setup.on_event.clone();
    let driven = edge.clone();
    let edge_failed = async move {
        let error = driven.drive().await;
        events(&Event::EdgeFailed { error: &error });
        Err(error)
    };
    let phases = async {
        let mut process = start(setup, program, edge).await?;
        let mut phase = Phase::Serving;
        let report = loop {
            phase = match phase {
                Phase::Serving => process.serving(None).await?,
                Phase::Upgrading(upgrade) => process.serving(Some(upgrade)).await?,
                Phase::Draining(draining) => process.draining(draining).await,
                Phase::Done(report) => break report,
            };
        };
        process.hooks.exiting(&report).await;
        Ok(report)
    };
    phases.or(edge_failed).await
}

/// Everything before the first accept: the program's checks, the pid file, the predecessor's
/// state, and telling the parent (if any) that this process serves.
async fn start(setup: Setup, program: Rc<dyn Program>, edge: Arc<Edge>) -> io::Result<Process> {
    // The program's checks (certificates, say) pass before anything reports ready: a
    // successor whose configuration is broken fails here, and its parent serves on.
    setup.check_before_ready()?;
    let Setup {
        config,
        listeners,
        ready,
        relay,
        control,
        supervisor_state: _,
        endless_parent,
        environment_kept,
        signals,
        exec,
        on_event: emit,
        hooks,
        before_ready: _,
    } = setup;
    // A worker must take its retire message's relay even at its fd limit.
    let control = control
        .map(Relay::new)
        .transpose()?
        .map(Relay::with_reserve);
    let is_worker = control.is_some();
    // The PID file names this process before its parent hears that it is ready. A worker's
    // supervising process keeps the PID file and speaks to systemd.
    let pid_file = config.pid_file.clone().filter(|_| control.is_none());
    let supervisor = Supervisor::new(pid_file);
    supervisor.serving(ready.is_some())?;
    announce(&listeners, environment_kept, &*emit);
    if let Some(pipe) = ready {
        // Unannounced, the parent would kill this process at its upgrade timeout anyway.
        handoff::announce_ready(pipe).map_err(|e| {
            crate::error::context(
                e.kind(),
                "cannot tell the parent process this one is ready".into(),
                e,
            )
        })?;
    }
    // The previous process, told that this one is ready, stops serving, finishes what it has
    // in flight, and sends its state: nothing is served here until it has arrived, so the
    // state is the one after its last request. Connections it hands over meanwhile wait.
    let mut relay_buffer = Vec::new();
    let mut waiting = Vec::new();
    let mut inbound = Inbound::default();
    if let Some(relay) = relay.map(Relay::new).transpose()? {
        relay.set_max_held(config.max_held_bytes);
        let bound = config.drain_timeout + STATE_TIMEOUT;
        let started = std::time::Instant::now();
        let state = inherit_state(&relay, &mut relay_buffer, &mut waiting, bound).await;
        let state = state
            .and_then(|state| state.into_state(config.max_state_bytes))
            .and_then(|state| hooks.inherit(&state).map(|()| state.len()));
        emit(&Event::StateInherited {
            bytes: state.as_ref().ok().copied(),
            why_none: state.as_ref().err().map(String::as_str),
            waited: started.elapsed(),
        });
        inbound.relays.push(relay);
    }
    if let Some(parent) = endless_parent {
        // endless waits for this to shut down; only if it is still our parent (not init,
        // after it died) and so still the process that handed the sockets over.
        let now = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
        if now == parent && parent > 1 {
            if let Some(pid) = rustix::process::Pid::from_raw(parent as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                emit(&Event::EndlessParentTold { pid: parent });
            }
        }
    }
    let drain = crate::drain::current();
    for message in waiting {
        relayed(
            &*program,
            &drain,
            &emit,
            &mut inbound,
            usize::MAX,
            Ok(Some(message)),
        );
    }
    Ok(Process {
        program,
        edge,
        config,
        listeners: Listeners::new(listeners),
        signals,
        exec,
        emit,
        hooks,
        supervisor,
        inbound,
        control,
        relay_buffer,
        drain,
        earlier: Vec::new(),
        spawned: Vec::new(),
        role: match is_worker {
            true => Role::Worker,
            false => Role::Single(super::Alone::here()),
        },
        datagrams_given: false,
        accept_reports: std::cell::Cell::new((None, 0)),
    })
}

/// Waits, up to `bound`, for the previous process's state on its relay; what arrives before it
/// (connections it hands over, relays it forwards) is kept in `waiting`. An error says why
/// none came (the relay closed or broke, or the bound passed): this process starts without.
async fn inherit_state(
    relay: &Relay,
    buffer: &mut Vec<u8>,
    waiting: &mut Vec<Received>,
    bound: std::time::Duration,
) -> Result<Arrived, String> {
    let receive = async {
        loop {
            match relay.receive(buffer).await {
                Ok(Some(Received::State(state))) => return Ok(state),
                Ok(Some(other)) => waiting.push(other),
                Ok(None) => {
                    return Err("the relay closed before it came: the previous process \
                                exited first, or there was none to take over from"
                        .into());
                }
                Err(e) => return Err(format!("the relay failed: {e}")),
            }
        }
    };
    let late = async {
        Timer::after(bound).await;
        Err(format!("none came within {bound:?}"))
    };
    receive.or(late).await
}

/// The application's state as a message for the successor; an event says so when the state
/// cannot go (over `max` bytes).
fn outgoing_state(hooks: &Hooks, max: usize, emit: &dyn Fn(&Event<'_>)) -> Outgoing {
    let outgoing = Outgoing::new(hooks.state().as_deref(), max);
    if let Content::NotSent { bytes, why } = &outgoing.sent {
        emit(&Event::StateNotHandedOver {
            bytes: *bytes,
            reason: why,
        });
    }
    outgoing
}

/// Sends `state` on `relay` (`try`: only if there is room at once); an event says so if it
/// could not go.
async fn send_state(relay: &Relay, state: &Outgoing, wait: bool, emit: &dyn Fn(&Event<'_>)) {
    let sent = match wait {
        true => relay.send(Message::State(state)).await,
        false => relay.try_send(Message::State(state)),
    };
    if let (Err(error), Content::State(bytes)) = (sent, &state.sent) {
        emit(&Event::StateNotHandedOver {
            bytes: *bytes,
            reason: &error.to_string(),
        });
    }
}

/// What woke the serving loop.
enum Wake {
    /// A message on inbound relay `.0`, or the end of that relay.
    Relayed(usize, io::Result<Option<Received>>),
    Accepted(Result<(usize, Accepted), AcceptError>),
    Signal(io::Result<(Signal, Command)>),
    Upgraded(Upgraded),
    /// A message from the supervising process, or the end of its channel.
    Control(io::Result<Option<Received>>),
}

impl Process {
    /// `Serving` (no upgrade) and `Upgrading`: accept and serve until something changes the
    /// phase.
    async fn serving(&mut self, mut upgrade: Option<Upgrade>) -> io::Result<Phase> {
        if !self.datagrams_given {
            self.give_datagrams();
        }
        loop {
            match self.next_wake(upgrade.as_mut()).await {
                Wake::Relayed(index, message) => {
                    let Process {
                        program,
                        inbound,
                        drain,
                        emit,
                        ..
                    } = self;
                    relayed(&**program, drain, emit, inbound, index, message);
                }
                Wake::Accepted(Ok((index, connection))) => self.serve_accepted(index, connection),
                Wake::Accepted(Err(failure)) => {
                    if failure.pause {
                        self.accept_failed(&failure.error);
                    }
                }
                Wake::Signal(signal) => {
                    let (signal, command) = signal?;
                    if command != Command::Reap {
                        (self.emit)(&Event::Signal { signal });
                    }
                    let phase = match () {
                        () if upgrade.is_some() => role::Phase::Restarting,
                        () if !self.spawned.is_empty() => role::Phase::BesideSuccessor,
                        () => role::Phase::Serving,
                    };
                    match role::action(self.role, phase, command) {
                        Action::Reap => self.reap(),
                        Action::Ignore(reason) => {
                            // `reload` waits for an outcome: this is it (an upgrade under way
                            // writes its own).
                            if command == Command::Restart && phase != role::Phase::Restarting {
                                self.supervisor.upgrade_failed(reason);
                            }
                            (self.emit)(&Event::Ignored { signal, reason });
                        }
                        action @ (Action::Restart | Action::Spawn) => {
                            if let Some(upgrade) = self.upgrade(action == Action::Restart) {
                                return Ok(Phase::Upgrading(upgrade));
                            }
                        }
                        // A successor still starting is killed with its task.
                        Action::Shutdown | Action::StopNow => {
                            return Ok(Phase::Draining(Draining {
                                stop: Stop::Shutdown { signal },
                                successor: None,
                                outbound: None,
                                from_supervisor: false,
                            }));
                        }
                    }
                }
                Wake::Upgraded(outcome) => {
                    let restart = upgrade.take().is_some_and(|upgrade| upgrade.restart);
                    return Ok(self.upgraded(restart, outcome).await);
                }
                // Retired by the supervising process (with the new worker to hand connections
                // to), the service shuts down, or the supervising process is gone: drain and
                // exit either way.
                Wake::Control(message) => {
                    let (stop, outbound) = match message {
                        Ok(Some(Received::Retire(relay))) => {
                            (Stop::Retired, relay.and_then(|r| Relay::new(r).ok()))
                        }
                        Ok(Some(Received::Quit(name))) => {
                            let signal = Signal::from_name(&name).unwrap_or(Signal::Term);
                            (Stop::Shutdown { signal }, None)
                        }
                        // A retire whose relay could not be taken (at the fd limit despite
                        // the reserve): retire all the same, and say that nothing moves.
                        Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                            (self.emit)(&Event::HandOverImpossible {
                                why: &error.to_string(),
                            });
                            (Stop::Retired, None)
                        }
                        // The channel stays while the supervising process is there: a second
                        // shutdown comes on it as "stop at once".
                        _ => {
                            self.control = None;
                            (Stop::Retired, None)
                        }
                    };
                    return Ok(Phase::Draining(Draining {
                        stop,
                        successor: None,
                        outbound,
                        from_supervisor: self.control.is_some(),
                    }));
                }
            }
        }
    }

    /// Waits for the next thing the serving loop acts on.
    async fn next_wake(&mut self, upgrade: Option<&mut Upgrade>) -> Wake {
        let Process {
            listeners,
            signals,
            inbound,
            control,
            relay_buffer,
            edge,
            drain,
            config,
            ..
        } = self;
        let accept = async {
            // At the limit, leave new connections in the kernel's queue until one ends.
            drain.below(config.max_connections.max(1)).await;
            let accepted = listeners.accept(edge).await;
            Wake::Accepted(accepted)
        };
        let signal = async { Wake::Signal(signals.next().await) };
        let relayed = async {
            let (index, message) = receive_any(&inbound.relays, relay_buffer).await;
            Wake::Relayed(index, message)
        };
        let upgraded = async {
            match upgrade {
                Some(upgrade) => Wake::Upgraded((&mut upgrade.task).await),
                None => std::future::pending().await,
            }
        };
        let controlled = async {
            let mut buffer = Vec::new();
            match control.as_ref() {
                Some(control) => Wake::Control(control.receive(&mut buffer).await),
                None => std::future::pending().await,
            }
        };
        signal
            .or(controlled)
            .or(upgraded)
            .or(relayed)
            .or(accept)
            .await
    }

    /// Gives the program each UDP listener (a copy of its socket), counted for the drain.
    fn give_datagrams(&mut self) {
        self.datagrams_given = true;
        for (index, listener) in self.listeners.as_slice().iter().enumerate() {
            let Address::Udp(local) = listener.local else {
                continue;
            };
            let socket = listener.duplicate();
            let datagrams = socket
                .and_then(|socket| Datagrams::register(socket, local, index, self.drain.work()));
            match datagrams {
                Ok(datagrams) => self.program.datagrams(datagrams, self.drain.clone()),
                Err(error) => self.accept_failed(&error),
            }
        }
    }

    /// Reports a failed accept, at most once per [`ACCEPT_REPORT_EVERY`], with how many
    /// went unreported since: a process at its fd limit fails ten times a second.
    fn accept_failed(&self, error: &io::Error) {
        let (last, suppressed) = self.accept_reports.get();
        let now = std::time::Instant::now();
        if last.is_some_and(|last| now.duration_since(last) < ACCEPT_REPORT_EVERY) {
            self.accept_reports.set((last, suppressed + 1));
            return;
        }
        self.accept_reports.set((Some(now), 0));
        (self.emit)(&Event::AcceptFailed { error, suppressed });
    }

    fn serve_accepted(&self, index: usize, accepted: Accepted) {
        let listener = &self.listeners.as_slice()[index];
        self.serve_accepted_from(listener.local.clone(), listener.tls, index, accepted);
    }

    /// Gives the program a connection accepted on listener `index` (at `local`).
    fn serve_accepted_from(
        &self,
        local: Address,
        tls: bool,
        index: usize,
        (socket, peer): Accepted,
    ) {
        let stream = match Stream::with_addresses(socket, peer, local) {
            // Counted from the accept on, so the connection limit holds exactly.
            Ok(stream) => stream.counted(self.drain.work()),
            Err(error) => {
                // (The epoll refused it: out of memory, or max_user_watches.) Closed now.
                self.accept_failed(&error);
                return;
            }
        };
        self.program.accepted(Connection {
            stream,
            listener: index,
            tls,
            drain: self.drain.clone(),
        });
    }

    /// At a restart: with this process, its successor and the older generations still
    /// draining, more than `max_generations` are alive; the oldest draining ones are told to
    /// stop at once (a second SIGTERM: what they still do is cut). Expects `inbound.older`
    /// pruned of the generations that have exited.
    fn bound_generations(&mut self) {
        let max = self.config.max_generations.max(2);
        let older = &self.inbound.older;
        let excess = (older.len() + 2).saturating_sub(max).min(older.len());
        for &pid in &older[..excess] {
            if let Some(target) = rustix::process::Pid::from_raw(pid as i32) {
                // Draining already: a shutdown signal ends its drain at once.
                let _ = rustix::process::kill_process(target, rustix::process::Signal::TERM);
                (self.emit)(&Event::GenerationEnded { pid, max });
            }
        }
        self.inbound.older.drain(..excess);
    }

    /// Starts a successor (SIGHUP: `restart`; SIGUSR2: beside this process); `None` if it
    /// could not even be prepared (reported).
    fn upgrade(&self, restart: bool) -> Option<Upgrade> {
        if restart {
            self.supervisor.reloading();
        }
        let room = match restart && self.config.hand_over_connections {
            true => handoff::check_fd_room(None),
            false => Ok(()),
        };
        match room.and_then(|()| self.upgrade_task()) {
            Ok(task) => Some(Upgrade {
                restart,
                task: Box::pin(task),
            }),
            Err(error) => {
                if restart {
                    self.supervisor.upgrade_failed(&error.to_string());
                }
                (self.emit)(&Event::SpawnFailed {
                    pid: None,
                    error: &error,
                    serving: true,
                    retry_in: None,
                });
                None
            }
        }
    }

    /// Starts a successor and waits until it is ready: the part of an upgrade that runs
    /// beside the serving loop.
    fn upgrade_task(&self) -> io::Result<impl Future<Output = Upgraded> + 'static> {
        // A successor that cannot report readiness (a Go server) cannot take connections over
        // the relay either: they would be lost in it.
        let hand_over =
            self.config.hand_over_connections && self.config.successor_ready_after.is_none();
        let role = handoff::Child::Successor { relay: hand_over };
        let spawn = handoff::prepare(&self.exec, self.listeners.as_slice(), role)?;
        let emit = self.emit.clone();
        let hooks = self.hooks.clone();
        let timeout = Some(self.config.ready_timeout);
        let settle = self.config.successor_ready_after;
        Ok(async move {
            hooks.spawning().await;
            // The state goes later, once this process has stopped serving (exact).
            spawn.start_until_ready(&*emit, timeout, settle).await
        })
    }

    /// The successor is ready or failed: drain (a restart), or serve on.
    async fn upgraded(&mut self, restart: bool, outcome: Upgraded) -> Phase {
        match outcome {
            Ok(handoff::Ready { child, relay, .. }) => {
                let pid = child.id();
                (self.emit)(&Event::Ready { pid });
                if restart {
                    self.supervisor.successor_ready(pid);
                    self.supervisor.restart_outcome(pid, None);
                }
                self.hooks.ready(pid).await;
                if !restart {
                    // A SIGUSR2 successor gets the state as it stands (both serve on), and no
                    // connections: its relay closes here. It has the PID file now (and
                    // MAINPID); this process is `<pid file>.oldbin`.
                    if let Some(relay) = &relay {
                        let state = self.state();
                        send_state(relay, &state, false, &*self.emit).await;
                    }
                    self.supervisor.successor_ready(pid);
                    self.supervisor.old_binary();
                    self.spawned.push(child);
                    return Phase::Serving;
                }
                Phase::Draining(Draining {
                    stop: Stop::Restart { successor: pid },
                    successor: Some(child),
                    outbound: relay,
                    from_supervisor: false,
                })
            }
            Err((pid, error)) => {
                if restart {
                    self.supervisor.upgrade_failed(&error.to_string());
                }
                (self.emit)(&Event::SpawnFailed {
                    pid,
                    error: &error,
                    serving: true,
                    retry_in: None,
                });
                Phase::Serving
            }
        }
    }

    /// Stops accepting and waits, under the drain timer, for every connection to end; serves
    /// again if the successor exits meanwhile.
    ///
    /// After a restart this process keeps its copy of the listeners, unused, until it exits:
    /// should the successor die during the drain, it serves again. The sockets, and every
    /// connection waiting in their accept queues, live on in the successor either way.
    ///
    /// A shutdown closes this process's listeners at once, after taking what waits in their
    /// queues (served like any connection): once the last copy of a socket is closed, new
    /// connections are refused, which a client or load balancer sees at once, instead of
    /// being accepted by the kernel and left unanswered. (Under socket activation systemd keeps its own copy, and the socket stays
    /// its business.) A worker closes its copies at any drain: it never serves again, and
    /// its supervising process holds the sockets.
    async fn draining(&mut self, draining: Draining) -> Phase {
        let Draining {
            stop,
            mut successor,
            mut outbound,
            from_supervisor,
        } = draining;
        let shutdown = matches!(stop, Stop::Shutdown { .. });
        self.reap();
        // Not accepting any more: accepts by the successor should not wake this process.
        self.listeners.unwatch();
        // A worker's sockets belong to its supervising process, which ends the service.
        let last = shutdown && self.spawned.is_empty() && self.role != Role::Worker;
        if last {
            self.supervisor.stopping();
            // A Unix socket's file goes only when serving ends for good: never in a restart
            // (the successor serves on it), nor while a SIGUSR2 child still does.
            for path in self.listeners.iter().filter_map(Listener::unix_path) {
                let _ = std::fs::remove_file(path);
            }
        }
        if shutdown {
            // The queues' connections are served, not reset by the close, which follows at
            // once (a worker's copy may be the last): only a handshake completing in between
            // is reset; what comes after the close is refused.
            let queued = self.listeners.take_queued(QUEUED_AT_SHUTDOWN);
            let named: Vec<(Address, bool)> = self
                .listeners
                .iter()
                .map(|l| (l.local.clone(), l.tls))
                .collect();
            self.listeners = Listeners::new(Vec::new());
            for (index, accepted) in queued {
                let (local, tls) = &named[index];
                self.serve_accepted_from(local.clone(), *tls, index, accepted);
            }
        }
        if self.role == Role::Worker {
            self.listeners = Listeners::new(Vec::new());
        }
        if let Some(relay) = outbound.take() {
            self.drain
                .set_relay(std::sync::Arc::new(relay), self.config.max_held_bytes);
        }
        forward_inbound(&self.drain, &mut self.inbound.relays).await;
        self.inbound.prune_exited();
        if matches!(stop, Stop::Restart { .. }) {
            // Checked now, once the successor serves: a generation that had nothing to drain
            // has had the time to exit, and is not counted.
            self.bound_generations();
        }
        if let Some(relay) = self.drain.relay() {
            // The successor bounds the generations alive: tell it which are still draining.
            let mut pids = self.inbound.older.clone();
            pids.push(std::process::id());
            let _ = relay.send(Message::Generations(&pids)).await;
        }
        // Counted before the drain starts: once it has, connections move and end at once.
        let (connections, requests) = self.open();
        self.drain.start(shutdown);
        (self.emit)(&Event::Draining {
            connections,
            requests,
        });
        let deadline = Timer::after(self.config.drain_timeout);
        self.hooks.draining().await;
        let ending = self
            .drain_ending(&mut successor, deadline, from_supervisor)
            .await;
        let (cut, dropped, upgraded) = match ending {
            Ending::Drained => (0, 0, 0),
            Ending::Cut(_) => {
                let (connections, requests) = self.open();
                let all = self.earlier.iter().chain(std::iter::once(&self.drain));
                let upgraded = all.clone().map(|d| d.upgraded_open()).sum();
                // Let the cut connections say so (503, or a reset), briefly.
                for drain in all {
                    drain.give_up();
                }
                let said = async {
                    for drain in self.earlier.iter().chain(std::iter::once(&self.drain)) {
                        // Upgraded connections are not cut this way: they close at exit.
                        drain.below(drain.upgraded_open() + 1).await;
                    }
                };
                said.or(async {
                    Timer::after(CUT_GRACE).await;
                })
                .await;
                (requests, connections, upgraded)
            }
            Ending::SuccessorExited(pid, status) => {
                // The successor is gone and this process still holds the sockets: serve again.
                (self.emit)(&Event::SuccessorExited { pid, status });
                self.supervisor.resumed(pid, status);
                self.datagrams_given = false;
                let fresh = crate::drain::next_round();
                let given_up = std::mem::replace(&mut self.drain, fresh);
                self.earlier.push(given_up);
                return Phase::Serving;
            }
        };
        // Stop listening here (the sockets live on in the successor, if any).
        self.listeners = Listeners::new(Vec::new());
        let all = self.earlier.iter().chain(std::iter::once(&self.drain));
        let lost = all.map(Drain::lost_count).sum();
        let cut_by = match ending {
            Ending::Cut(by) => Some(by),
            _ => None,
        };
        (self.emit)(&Event::Exiting {
            cut,
            dropped,
            upgraded,
            lost,
            cut_by,
        });
        self.supervisor.exited(last);
        Phase::Done(Report {
            stop,
            cut,
            dropped,
            upgraded,
            lost,
            cut_by,
        })
    }

    /// Connections and requests open in this drain and the ones given up before it.
    fn open(&self) -> (usize, usize) {
        let all = self.earlier.iter().chain(std::iter::once(&self.drain));
        all.fold((0, 0), |(c, r), d| (c + d.connections(), r + d.requests()))
    }

    /// How the drain ends: every connection done, the timer, a second shutdown signal, or the
    /// successor exiting. `from_supervisor`: the supervising process started this drain.
    async fn drain_ending(
        &mut self,
        successor: &mut Option<Owned>,
        deadline: Timer,
        from_supervisor: bool,
    ) -> Ending {
        let state_wait = &self.config.state_wait;
        let max_state = &self.config.max_state_bytes;
        let Process {
            program,
            hooks,
            signals,
            control,
            emit,
            inbound,
            relay_buffer,
            drain,
            earlier,
            spawned,
            role: this_role,
            ..
        } = self;
        // A predecessor may still be handing connections over (a restart came before it was
        // gone). With a successor to forward its relay to, that is the successor's business
        // now (see `forward_inbound`); else keep taking them until it closes the relay, or
        // they would be lost in the relay's buffer when this process exits.
        let relaying = async {
            while !inbound.relays.is_empty() {
                let (index, message) = receive_any(&inbound.relays, relay_buffer).await;
                relayed(&**program, drain, emit, inbound, index, message);
                forward_inbound(drain, &mut inbound.relays).await;
            }
        };
        // The state, once what this process was answering is done: the successor serves
        // only once it has it, so it starts from the state after this process's last request.
        let state_sent = std::cell::Cell::new(false);
        let hand_state = async {
            if let Some(relay) = drain.relay() {
                if hooks.has_state() {
                    let wait = Timer::after(*state_wait);
                    drain
                        .requests_done()
                        .or(async {
                            wait.await;
                        })
                        .await;
                }
                // (Bounded by the relay: a successor that does not read it starts without.)
                let state = outgoing_state(hooks, *max_state, &**emit);
                send_state(&relay, &state, true, &**emit).await;
            }
            state_sent.set(true);
        };
        let finished = async {
            hand_state.await;
            relaying.await;
            for drain in earlier.iter().chain(std::iter::once(&*drain)) {
                drain.finished().await;
            }
            Ending::Drained
        };
        let timeout = async {
            deadline.await;
            Ending::Cut(CutBy::DrainTimeout)
        };
        // A worker retired by its supervising process takes a shutdown signal (a Ctrl-C to the
        // whole group reaches it too) as the one that started this drain; a second one, or the
        // supervisor's "stop at once", cuts it.
        let mut first_is_expected = from_supervisor;
        let signalled = async {
            loop {
                let Ok((signal, command)) = signals.next().await else {
                    std::future::pending::<()>().await;
                    continue;
                };
                let phase = role::Phase::Draining { first_is_expected };
                match role::action(*this_role, phase, command) {
                    Action::Reap => {
                        reap(spawned, &**emit);
                        if let Some(child) = successor.as_mut() {
                            match child.try_wait() {
                                // It failed (killed, crashed): serve again.
                                Ok(Some(status)) if !status.success() => {
                                    return Ending::SuccessorExited(child.id(), status);
                                }
                                // It drained and exited as it should (a later restart, or a
                                // shutdown): nothing to take back.
                                Ok(Some(_)) => *successor = None,
                                _ => {}
                            }
                        }
                    }
                    Action::Ignore(reason) => {
                        emit(&Event::Signal { signal });
                        first_is_expected &= command != Command::Shutdown;
                        emit(&Event::Ignored { signal, reason });
                    }
                    _ => {
                        emit(&Event::Signal { signal });
                        return Ending::Cut(CutBy::Signal);
                    }
                }
            }
        };
        let stop_now = async {
            let mut buffer = Vec::new();
            loop {
                match control.as_ref() {
                    Some(channel) => match channel.receive(&mut buffer).await {
                        Ok(Some(Received::StopNow(by))) => return Ending::Cut(by),
                        Ok(Some(_)) => {}
                        // The supervising process is gone: drain on.
                        _ => std::future::pending::<()>().await,
                    },
                    None => std::future::pending::<()>().await,
                }
            }
        };
        let ending = finished.or(signalled).or(stop_now).or(timeout).await;
        if !state_sent.get() {
            // Cut before the state went: the successor still gets it (best effort).
            if let Some(relay) = self.drain.relay() {
                let state = self.state();
                send_state(&relay, &state, false, &*self.emit).await;
            }
        }
        ending
    }

    /// The application's state, as a message for the successor.
    fn state(&self) -> Outgoing {
        outgoing_state(&self.hooks, self.config.max_state_bytes, &*self.emit)
    }

    fn reap(&mut self) {
        let had: Vec<u32> = self.spawned.iter().map(|c| c.id()).collect();
        reap(&mut self.spawned, &*self.emit);
        if self.drain.is_draining() {
            return;
        }
        let gone = had
            .iter()
            .filter(|&&pid| self.spawned.iter().all(|c| c.id() != pid));
        for &pid in gone {
            // A SIGUSR2 successor is gone: rolled back (this process is the service again), or
            // restarted itself into another process that has the PID file now.
            if !self.spawned.is_empty() {
                continue;
            }
            if let Some(serving) = self.supervisor.successor_gone(pid) {
                (self.emit)(&Event::SuccessorMovedOn { gone: pid, serving });
            }
        }
    }
}

impl Inbound {
    /// Keeps, of the older generations, those still running (oldest first).
    fn prune_exited(&mut self) {
        // Running, not a zombie: an exited generation waits for its (possibly new) parent to
        // reap it, and must not count.
        self.older.retain(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            matches!(state, Some(state) if state != 'Z' && state != 'X')
        });
    }
}

/// The next message on any of `relays`, with the relay's index.
async fn receive_any(
    relays: &[Relay],
    buffer: &mut Vec<u8>,
) -> (usize, io::Result<Option<Received>>) {
    if relays.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for (index, relay) in relays.iter().enumerate() {
            if let std::task::Poll::Ready(message) = relay.poll_receive(cx, buffer) {
                return std::task::Poll::Ready((index, message));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Acts on a message from inbound relay `index`: a connection for the program to resume, an
/// older relay to take connections from too, or the end of that relay.
fn relayed(
    program: &dyn Program,
    drain: &Drain,
    emit: &Rc<dyn Fn(&Event<'_>)>,
    inbound: &mut Inbound,
    index: usize,
    message: io::Result<Option<Received>>,
) {
    let resume =
        |fds: Vec<std::os::fd::OwnedFd>, kind: String, state: String, held: Vec<Vec<u8>>| {
            // Non-blocking already (the flag belongs to the open file each shares).
            let streams: io::Result<Vec<Stream>> = fds
                .into_iter()
                .zip(held)
                .map(|(fd, held)| Ok(Stream::register(fd)?.holding(held).counted(drain.work())))
                .collect();
            match streams {
                Ok(streams) => program.resumed(Resumed::new(
                    streams,
                    kind,
                    // (Written by the predecessor's encoder: JSON, unless it was malformed.)
                    serde_json::from_str(&state).unwrap_or_default(),
                    drain.clone(),
                    emit.clone(),
                )),
                Err(error) => drain.lose(&**emit, &kind, None, &error.to_string()),
            }
        };
    match message {
        Ok(Some(Received::Connection(handed))) => {
            resume(handed.fds, handed.name, handed.state, handed.held);
        }
        Ok(Some(Received::Relay(fd))) => {
            if let Ok(relay) = Relay::new(fd) {
                inbound.relays.push(relay);
            }
        }
        Ok(Some(Received::Generations(pids))) => inbound.older = pids,
        // A connection that came unusable (more held bytes than this process takes, a
        // memfd that does not match): lost, and said; the relay carries on (its messages
        // keep their boundaries).
        Err(error) if error.kind() == io::ErrorKind::InvalidData => {
            drain.lose(&**emit, "?", None, &error.to_string());
        }
        // State comes first, before serving; one later (or a control message) is not for a
        // relay that is serving: ignored.
        Ok(Some(Received::State(_) | Received::Retire(_) | Received::Quit(_))) => {}
        // The process on the other end is done handing over (or its relay broke).
        _ if index < inbound.relays.len() => {
            inbound.relays.swap_remove(index);
        }
        _ => {}
    }
}

/// Draining with a successor to hand connections to: forwards every inbound relay to it, so
/// that this process need not outlive the older processes still sending on them (restart
/// storms would otherwise keep every generation alive until the oldest is done). A relay that
/// cannot be forwarded stays, and this process goes on taking its connections.
async fn forward_inbound(drain: &Drain, inbound: &mut Vec<Relay>) {
    let Some(outbound) = drain.relay() else {
        return;
    };
    let mut kept = Vec::new();
    for relay in inbound.drain(..) {
        if outbound
            .send(Message::Relay(std::os::fd::AsFd::as_fd(&relay)))
            .await
            .is_err()
        {
            kept.push(relay);
        }
    }
    *inbound = kept;
}

/// The most connections taken from each listener's queue at a shutdown (a listen backlog's
/// worth): closing the socket would reset them.
const QUEUED_AT_SHUTDOWN: usize = 4096;

/// How a drain ended.
enum Ending {
    Drained,
    /// The drain timeout, a second shutdown signal, or the generation limit.
    Cut(CutBy),
    /// The successor this process handed over to exited during the drain.
    SuccessorExited(u32, ExitStatus),
}

/// Collects SIGUSR2 children that have exited, so none is left a zombie.
fn reap(children: &mut Vec<Owned>, emit: &dyn Fn(&Event<'_>)) {
    children.retain_mut(|child| match child.try_wait() {
        Ok(Some(status)) => {
            emit(&Event::ChildExited {
                pid: child.id(),
                status,
            });
            false
        }
        Ok(None) => true,
        Err(_) => false,
    });
}
