//! The core's public face: [`Baton`], created once per process, gives a program its listeners
//! (created or inherited), restarts and shuts it down on signals, in either process model, and
//! hands its connections and state to the successor. It knows no protocol: the program says
//! what a connection is ([`Program`]); the HTTP server ([`crate::Server`]) is one such
//! program, the echo example another.
//!
//! ```no_run
//! use baton::{Baton, Connection, Program, Stream};
//!
//! struct Echo;
//!
//! impl Program for Echo {
//!     fn accepted(&self, connection: Connection) {
//!         // Serve it on any executor; the stream counts the connection for the drain until
//!         // it drops.
//!         smol::spawn(echo(connection.stream)).detach();
//!     }
//! }
//!
//! async fn echo(stream: Stream) {
//!     let mut buf = [0u8; 4096];
//!     while let Ok(n @ 1..) = stream.read(&mut buf).await {
//!         if stream.write_all(&buf[..n]).await.is_err() {
//!             break;
//!         }
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let baton = Baton::bind("127.0.0.1:7000")?;
//!     let report = smol::block_on(baton.serve(Echo))?;
//!     std::process::exit(if report.is_clean() { 0 } else { 1 })
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::config::Config;
use crate::event::Event;
use crate::handoff::Exec;
use crate::hooks::Hooks;
use crate::io::local::Local;
use crate::listener::{Address, Inheritance, Listener, ListenerInfo, Origin};
use crate::program::Program;
use crate::report::Report;
use crate::restart::{Alone, Setup};
use crate::signals::Signals;

/// The restart core, one per process: its listeners, its signals, its successor, its drain.
///
/// Create it first thing in `main` ([`Baton::bind`]: it reads and takes the inherited
/// variables while the process has one thread), set what the defaults do not suit, then
/// [`Baton::serve`] a [`Program`]. SIGHUP restarts (the successor takes the listeners, then
/// this process drains: the drain notice fires, connections move or close, the state goes
/// once the requests in flight are done); SIGINT, SIGQUIT, SIGTERM shut down (the listeners
/// close at once, then the drain). As PID 1, or behind a PID namespace's init, or with
/// [`Baton::workers`], `serve` runs a supervising process instead, whose workers each run
/// the program.
pub struct Baton {
    /// What a serving process (or a supervising one) starts with.
    setup: Setup,
}

impl fmt::Debug for Baton {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Baton")
            .field("listeners", &self.setup.listeners)
            .field("program", &self.setup.exec.program())
            .field("config", &self.setup.config)
            .finish_non_exhaustive()
    }
}

impl Baton {
    /// Listens on `addr` (`host:port`, `:port` for every interface, or `unix:/path`), or takes
    /// over the listener for that address that the parent process passed through `LISTENER`
    /// or systemd passed through `LISTEN_FDS`.
    ///
    /// A successor starts with SIGHUP and SIGUSR2 blocked; `bind` installs the handlers and
    /// then unblocks them, so one sent while the process was still starting is acted on once
    /// it serves, however long the application took before calling `bind`. A malformed
    /// `LISTENER`, or one whose fd is not a listening socket on `addr`, is an error that says
    /// what is wrong.
    ///
    /// Call it first thing in `main`, before starting threads or a runtime: it takes `LISTENER`
    /// and `LISTEN_*` out of the environment so processes the handler starts do not inherit
    /// them, which is only sound while this is the process's one thread. If other threads are
    /// running, the variables stay and serving starts with [`Event::EnvironmentKept`].
    pub fn bind(addr: &str) -> io::Result<Baton> {
        Baton::bind_all([addr])
    }

    /// Like [`Baton::bind`], for several addresses at once; a restart hands all of them over
    /// (as fds 3, 4, ... in the order given).
    ///
    /// A `LISTENER` (or endless's `ENDLESS_SOCKET_ORDER`) that hands over an address none of
    /// `addrs` names is an error naming both, rather than a second listener beside it: see
    /// [`Baton::bind_inherited_or`] to take whatever was handed over.
    pub fn bind_all<I, S>(addrs: I) -> io::Result<Baton>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let addrs: Vec<String> = addrs.into_iter().map(|a| a.as_ref().to_owned()).collect();
        Baton::bind_from(Some(addrs), None)
    }

    /// Takes over every listener the parent process handed over (`LISTENER`, from baton, the
    /// Go original or a Go server doing the same, or endless's `ENDLESS_SOCKET_ORDER`),
    /// whatever their addresses; with none, listens on `default` as [`Baton::bind`] does.
    /// For a binary that takes the place of one started without arguments (the Go original
    /// re-executes itself with none).
    pub fn bind_inherited_or(default: &str) -> io::Result<Baton> {
        Baton::bind_from(None, Some(default))
    }

    fn bind_from(addrs: Option<Vec<String>>, default: Option<&str>) -> io::Result<Baton> {
        // Read and take the inherited variables while this may still be the only thread:
        // signal registration below starts async-io's thread.
        let inheritance = Inheritance::from_env()?;
        let environment_kept = crate::listener::scrub_environment();
        let signals = Signals::register()?;
        let exec = Exec::capture()?;
        let addrs = match (addrs, default) {
            (Some(addrs), _) => addrs,
            (None, default) if inheritance.descriptions.is_empty() => {
                default.into_iter().map(str::to_owned).collect()
            }
            (None, _) => inheritance
                .descriptions
                .iter()
                .map(|d| d.addr.clone())
                .collect(),
        };
        let bound = Listener::bind_all(&addrs, &inheritance)?;
        let pid = std::process::id();
        let setup = Setup {
            before_ready: Vec::new(),
            config: Config::default(),
            listeners: bound.listeners,
            ready: bound.ready,
            relay: bound.relay,
            control: bound.control,
            supervisor_state: inheritance.supervisor,
            endless_parent: inheritance.endless_parent,
            environment_kept,
            signals,
            exec,
            hooks: Hooks::default(),
            on_event: Rc::new(move |event: &Event<'_>| {
                // One write per line: successors share stderr, and lines must not interleave.
                let line = format!("baton[{pid}]: {event}\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            }),
        };
        Ok(Baton { setup })
    }

    /// What this hands a restart machine (the phases' unit tests drive one in-process).
    #[cfg(test)]
    pub(crate) fn into_setup(self) -> Setup {
        self.setup
    }

    /// The first TCP listener's address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.setup.listeners.iter().find_map(|l| match l.local {
            Address::Tcp(addr) => Some(addr),
            Address::Unix(_) | Address::Udp(_) => None,
        })
    }

    /// Every listener's address, in the order requested.
    pub fn addresses(&self) -> Vec<Address> {
        self.setup
            .listeners
            .iter()
            .map(|l| l.local.clone())
            .collect()
    }

    /// `true` if the listeners came from the parent process.
    pub fn is_inherited(&self) -> bool {
        self.setup
            .listeners
            .iter()
            .any(|l| l.origin == Origin::Inherited)
    }

    /// All settings at once, replacing any set before (each builder method below sets one
    /// field of it). Default: [`Config::default()`].
    pub fn with_config(mut self, config: Config) -> Self {
        self.setup.config = config;
        self
    }

    /// The settings as they stand.
    pub fn config(&self) -> &Config {
        &self.setup.config
    }

    /// Run as a supervising process with `n` workers (see [`Config::workers`]); 0 forces
    /// today's single-process model. Default: [`Config::workers`].
    pub fn workers(mut self, n: usize) -> Self {
        self.setup.config.workers = Some(n);
        self
    }

    /// Counts a successor that cannot report readiness as ready after it has run `settle`
    /// without exiting. Default: [`Config::successor_ready_after`].
    pub fn successor_ready_after(mut self, settle: Duration) -> Self {
        self.setup.config.successor_ready_after = Some(settle);
        self
    }

    /// The longest a drain waits for in-flight requests before it drops them. Default: [`Config::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.setup.config.drain_timeout = timeout;
        self
    }

    /// The longest a restart waits for the new process to report ready before it kills it
    /// and keeps serving. Default: [`Config::ready_timeout`].
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.setup.config.ready_timeout = timeout;
        self
    }

    /// The most connections served at once; at the limit, new ones wait in the kernel's
    /// accept queue until one closes. Default: [`Config::max_connections`].
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.setup.config.max_connections = limit;
        self
    }

    /// Runs `hook` before each successor is spawned (SIGHUP or SIGUSR2); connections go on
    /// being served meanwhile. Hooks are async and run on the server's thread; for synchronous
    /// work, do it and return `async {}`.
    pub fn on_spawn<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.setup.hooks.set_spawn(hook);
        self
    }

    /// Runs `hook` with the successor's pid once it is ready, before this process drains.
    pub fn on_ready<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(u32) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.setup.hooks.set_ready(hook);
        self
    }

    /// Runs `hook` when draining starts (after a restart or a shutdown signal), while the
    /// drain timer runs: close a database pool, flush logs.
    pub fn on_drain<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.setup.hooks.set_drain(hook);
        self
    }

    /// On a restart with connection hand-over, `hook`'s value goes to the successor before it
    /// serves: warm caches, counters, a session table. It is called once this process has
    /// stopped serving and finished its requests in flight (up to [`Config::state_wait`]), so
    /// the successor starts from the state after this process's last request. Any size up to
    /// [`Config::max_state_bytes`] (64 MiB by default; over 64 KiB it travels in a sealed
    /// memfd); a larger one is not sent, and an event says so. With workers, each new worker
    /// gets the state of the worker whose place it takes; a worker that crashed leaves none.
    /// A synchronous closure on the server's thread. Default: none.
    pub fn on_hand_over_state(mut self, hook: impl Fn() -> serde_json::Value + 'static) -> Self {
        self.setup.hooks.set_give(hook);
        self
    }

    /// Receives the state the previous process handed over (see
    /// [`Baton::on_hand_over_state`]), before this process serves; not called if none came
    /// (the event `StateInherited` says why). A synchronous closure. Default: none.
    pub fn on_inherit_state(mut self, hook: impl Fn(serde_json::Value) + 'static) -> Self {
        self.setup.hooks.set_take(hook);
        self
    }

    /// Runs `hook` with the final [`Report`] just before [`Baton::serve`] returns, in every
    /// process model: a single process, each worker, and the supervising process (whose only
    /// hook this is; its report is a shutdown's).
    pub fn on_exit<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Report) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.setup.hooks.set_exit(hook);
        self
    }

    /// On a restart, hand each keep-alive connection (plain TCP) to the successor over a Unix
    /// socket at its next request boundary, with whatever it already sent, instead of answering
    /// `Connection: close`: clients keep their connection and never reconnect. A connection
    /// that cannot be handed over is closed as before. Default: [`Config::hand_over_connections`].
    pub fn hand_over_connections(mut self, on: bool) -> Self {
        self.setup.config.hand_over_connections = on;
        self
    }

    /// The largest state a restart carries to the successor (see
    /// [`Baton::on_hand_over_state`]). Default: [`Config::max_state_bytes`].
    pub fn max_state_bytes(mut self, bytes: usize) -> Self {
        self.setup.config.max_state_bytes = bytes;
        self
    }

    /// Keep a PID file at `path`: written (atomically) by whichever process serves, rewritten
    /// by each successor before it reports ready, removed at the final shutdown if it still
    /// names this process. Default: [`Config::pid_file`].
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.setup.config.pid_file = Some(path.into());
        self
    }

    /// Where events go. Default: one line per event on stderr, `baton[<pid>]: <event>`.
    pub fn on_event(mut self, sink: impl Fn(&Event<'_>) + 'static) -> Self {
        self.setup.on_event = Rc::new(sink);
        self
    }

    /// How many workers a supervising process runs: as configured, else one when this
    /// process is PID 1 (a container's init) or behind the init of a PID namespace (see
    /// [`crate::restart::Alone`]), else none (single-process model).
    fn worker_count(&self) -> usize {
        self.setup
            .config
            .workers
            .unwrap_or_else(|| usize::from(Alone::here().is_some()))
    }

    /// The settings, to change one that has no builder method of its own here.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.setup.config
    }

    /// The listeners, as a program may know them before serving.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.setup.listeners.iter().map(Listener::info).collect()
    }

    /// Runs `check` before this process reports ready (and, in a supervising process, before
    /// it starts workers): an error ends start-up with it, so a successor whose configuration
    /// is broken (unreadable certificates, say) is never taken for ready, and the old process
    /// serves on. Default: none.
    pub fn before_ready(
        mut self,
        check: impl Fn(&[ListenerInfo]) -> io::Result<()> + 'static,
    ) -> Self {
        self.setup.before_ready.push(Rc::new(check));
        self
    }

    /// Where events go (see [`Baton::on_event`]): a program reports its own there.
    pub fn events(&self) -> Rc<dyn Fn(&Event<'_>)> {
        self.setup.on_event.clone()
    }

    /// Whether [`Baton::serve`] runs a supervising process here (which never calls the
    /// program: its workers do) rather than serving.
    fn supervises(&self) -> bool {
        self.setup.control.is_none()
            && (self.setup.supervisor_state.is_some() || self.worker_count() > 0)
    }

    /// Serves `program` until a restart hands over to a successor or a shutdown signal
    /// arrives, then drains, and returns what the drain cut short; or, as a supervising
    /// process (see [`Baton::workers`]), runs the workers until a shutdown. Everything of the
    /// core runs in this future, on the calling thread; the program's connections may run
    /// anywhere.
    pub async fn serve(self, program: impl Program) -> io::Result<Report> {
        let supervises = self.supervises();
        let setup = self.setup;
        match supervises {
            true => crate::restart::supervising::supervise(setup).await,
            false => crate::restart::single::run(setup, Rc::new(program)).await,
        }
    }

    /// Serves as [`Baton::serve`] does, and runs `local`'s tasks on this thread beside the
    /// core: a program that spawns its connections there (from [`Program::accepted`] and
    /// [`Program::resumed`], which run on this thread) gets tokio `current_thread`'s shape.
    /// When neither the core nor a task has anything to do, this thread waits on the
    /// connections' epoll itself, one `epoll_wait` and nothing else; async-io's reactor runs on
    /// a thread of its own meanwhile, for signals, timers and child processes, whose wake-ups
    /// reach this thread through an eventfd. A [`Stream`](crate::Stream) woken here costs no
    /// thread switch and no syscall besides its reads and writes. Give it a thread of its own
    /// (`smol::block_on` in `main`), not a task on an executor other tasks share: it blocks that
    /// thread while it waits. Streams still work from other threads' tasks too.
    pub async fn serve_local(self, program: impl Program, local: Local) -> io::Result<Report> {
        crate::io::driver::drive(self.serve(program), local).await
    }
}
