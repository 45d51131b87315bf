//! What a server does once it serves, as phases:
//!
//! ```text
//! start ─> Serving ──SIGHUP/SIGUSR2──> Restarting ──ready (SIGHUP)──> Draining ──> Report
//!             ^                            │  failed, or ready (SIGUSR2)    │
//!             └────────────────────────────┘                                │
//!             └───────────────────── the successor exited ──────────────────┘
//! ```
//!
//! The phases of the core's serving process, for any [`Program`], driven by the restart
//! machines' one loop ([`super::drive`]), one file per phase: `start` runs the
//! program's checks ([`crate::Baton::before_ready`]), writes the pid file, takes the
//! predecessor's state and reports ready; `serving` is the select loop of both `Serving` and
//! `Restarting` (accept, relayed connections, signals, control messages, and, while upgrading,
//! the successor's readiness); `upgrade` starts a successor and acts on its outcome;
//! `draining` stops accepting and waits for the program's work under the drain timer;
//! `inbound` takes what older processes relay. What a signal does is the role's table's
//! ([`super::role`]). Nothing here knows the program's protocol.

use std::future::Future;
use std::io;
use std::process::ExitStatus;

use crate::reap::Owned;
use crate::report::CutBy;
use std::rc::Rc;
use std::sync::Arc;

use async_io::Timer;
use smol::future::FutureExt as _;

use super::drive::{self, Machine, Step};
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

mod draining;
mod inbound;
mod serving;
mod start;
#[cfg(test)]
mod tests;
mod upgrade;

use inbound::{Inbound, forward_inbound, receive_any, relayed};
use start::start;

/// Where the server is (see [`super::drive`]): restarting while a successor starts, which
/// this process serves beside meanwhile.
type Phase = Step<Upgrade, Draining>;

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
        drive::drive(&mut process, Step::Serving).await
    };
    phases.or(edge_failed).await
}

/// The phases of a process that serves and replaces itself, or a worker: `serving` (and
/// `upgrade`), `draining`.
impl Machine for Process {
    type Restart = Upgrade;
    type Drain = Draining;

    async fn serving(&mut self, upgrade: Option<Upgrade>) -> io::Result<Phase> {
        Process::serving(self, upgrade).await
    }

    async fn draining(&mut self, draining: Draining) -> Phase {
        Process::draining(self, draining).await
    }

    async fn ending(&mut self, report: &Report) {
        self.hooks.exiting(report).await;
    }
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
