//! The restart machines: a process that serves and replaces itself (the single-process model,
//! or a worker told by its supervising process), and a supervising process that keeps the
//! PID and the sockets while its workers come and go. Both run one loop over the same phases
//! ([`drive`]), and ask one table what a signal does ([`role`]). [`Setup`] is what
//! [`crate::Baton`] hands to either.

use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use crate::config::Config;
use crate::event::Event;
use crate::handoff::Exec;
use crate::hooks::Hooks;
use crate::listener::{Listener, ListenerInfo};
use crate::signals::Signals;

mod carried;
pub(crate) mod drive;
pub(crate) mod role;
pub(crate) mod single;
pub(crate) mod supervising;

/// A check before this process reports ready.
pub(crate) type Check = Rc<dyn Fn(&[ListenerInfo]) -> io::Result<()>>;

/// What a process serves with: its listeners, settings, signals, hooks, and what its parent
/// handed it.
pub(crate) struct Setup {
    pub(crate) config: Config,
    pub(crate) listeners: Vec<Listener>,
    /// The parent's readiness pipe, written once this process serves.
    pub(crate) ready: Option<OwnedFd>,
    /// This process's end of the relay its parent hands connections over on, if it does.
    pub(crate) relay: Option<OwnedFd>,
    /// A worker's end of the control channel to its supervising process.
    pub(crate) control: Option<OwnedFd>,
    /// A supervising process's state from before it re-executed itself.
    pub(crate) supervisor_state: Option<String>,
    /// The endless parent that handed the sockets over: told (SIGTERM) once this serves.
    pub(crate) endless_parent: Option<u32>,
    /// `Some(threads)` if `LISTENER`/`LISTEN_*` had to stay in the environment.
    pub(crate) environment_kept: Option<Option<usize>>,
    pub(crate) signals: Signals,
    pub(crate) exec: Exec,
    pub(crate) on_event: Rc<dyn Fn(&Event<'_>)>,
    pub(crate) hooks: Hooks,
    /// Checks that must pass before this process reports ready (see [`Baton::before_ready`]).
    pub(crate) before_ready: Vec<Check>,
}

impl Setup {
    /// Runs the checks of [`crate::Baton::before_ready`].
    pub(crate) fn check_before_ready(&self) -> io::Result<()> {
        let listeners: Vec<ListenerInfo> = self.listeners.iter().map(Listener::info).collect();
        self.before_ready
            .iter()
            .try_for_each(|check| check(&listeners))
    }
}

/// Where a process that replaces itself on a restart would take the service down with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alone {
    /// It is PID 1 of its namespace: when it exits, the kernel kills every process left in
    /// the namespace, the successor included.
    Pid1,
    /// Its parent is the init of a PID namespace that is not the host's (tini as `docker run
    /// --init`, dumb-init, catatonit, a pod's shared namespace), which exits when its only
    /// child does, and the kernel then kills the successor.
    BehindInit,
}

impl Alone {
    /// This process's situation, if it is one of those. Detected, not guessed from a name:
    /// the parent is PID 1 and this PID namespace is not the host's (the initial namespace
    /// has a fixed inode, `PROC_PID_INIT_INO`). Under the host's init (systemd, or a daemon
    /// reparented to it) there is no such risk.
    pub(crate) fn here() -> Option<Alone> {
        /// The inode of the initial PID namespace (the kernel's `PROC_PID_INIT_INO`).
        const HOST_PID_NAMESPACE: &str = "pid:[4026531836]";
        if std::process::id() == 1 {
            return Some(Alone::Pid1);
        }
        let parent_is_init = rustix::process::getppid().is_some_and(|p| p.is_init());
        let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
        (parent_is_init && namespace.as_os_str() != HOST_PID_NAMESPACE).then_some(Alone::BehindInit)
    }

    /// Why a single process here must not restart by replacing itself.
    pub(crate) fn why_no_restart(self) -> &'static str {
        match self {
            Alone::Pid1 => {
                "this process is PID 1: once it exits the kernel ends its PID namespace, the \
                 successor with it; run a supervising process (Server::workers, hello \
                 --workers N; the default as PID 1)"
            }
            Alone::BehindInit => {
                "this process's parent is the init of its PID namespace, which exits with its \
                 only child and ends the namespace, the successor with it; run a supervising \
                 process (Server::workers, hello --workers N; the default here)"
            }
        }
    }
}

/// Reports each listener, and whether the inherited variables had to stay in the environment.
pub(crate) fn announce(
    listeners: &[Listener],
    environment_kept: Option<Option<usize>>,
    emit: &dyn Fn(&Event<'_>),
) {
    for listener in listeners {
        emit(&Event::Listening {
            addr: &listener.local,
            fd: listener.fd(),
            origin: listener.origin,
            tls: listener.tls,
        });
    }
    if let Some(threads) = environment_kept {
        emit(&Event::EnvironmentKept { threads });
    }
}
