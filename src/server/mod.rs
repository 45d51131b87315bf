//! The public [`Server`] builder. What happens once it serves is in [`run`]: start-up, then the
//! phases `Serving -> Upgrading -> Serving | Draining -> Report`.

mod run;

pub(crate) use run::{announce, load_tls};

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use http_types::{Request, Response};
use smol::LocalExecutor;
use smol::future::FutureExt as _;

use crate::config::Config;
use crate::config::timing::{IO_LOOKS_BETWEEN_REACTOR_ROUNDS, TASKS_BETWEEN_IO_CHECKS};
use crate::event::Event;
use crate::handoff::Exec;
use crate::hooks::Hooks;
use crate::io::deadline::Deadlines;
use crate::io::edge::Edge;
use crate::listener::{Address, Inheritance, Listener, Origin};
use crate::report::Report;
use crate::signals::Signals;

/// An HTTP/1.1 server that hands its listening socket to a new copy of itself on SIGHUP.
///
/// ```no_run
/// use http_types::{Response, StatusCode};
///
/// # fn main() -> std::io::Result<()> {
/// let server = baton::Server::bind("127.0.0.1:8080")?;
/// let report = smol::block_on(server.serve(|_req| async {
///     Ok(Response::from("Hello!\n"))
/// }))?;
/// assert_eq!(report.cut, 0);
/// # Ok(())
/// # }
/// ```
pub struct Server {
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
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("program", &self.exec.program())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
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
    pub fn bind(addr: &str) -> io::Result<Server> {
        Server::bind_all([addr])
    }

    /// Like [`Server::bind`], for several addresses at once; a restart hands all of them over
    /// (as fds 3, 4, ... in the order given).
    ///
    /// A `LISTENER` (or endless's `ENDLESS_SOCKET_ORDER`) that hands over an address none of
    /// `addrs` names is an error naming both, rather than a second listener beside it: see
    /// [`Server::bind_inherited_or`] to take whatever was handed over.
    pub fn bind_all<I, S>(addrs: I) -> io::Result<Server>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let addrs: Vec<String> = addrs.into_iter().map(|a| a.as_ref().to_owned()).collect();
        Server::bind_from(Some(addrs), None)
    }

    /// Takes over every listener the parent process handed over (`LISTENER`, from baton, the
    /// Go original or a Go server doing the same, or endless's `ENDLESS_SOCKET_ORDER`),
    /// whatever their addresses; with none, listens on `default` as [`Server::bind`] does.
    /// For a binary that takes the place of one started without arguments (the Go original
    /// re-executes itself with none).
    pub fn bind_inherited_or(default: &str) -> io::Result<Server> {
        Server::bind_from(None, Some(default))
    }

    fn bind_from(addrs: Option<Vec<String>>, default: Option<&str>) -> io::Result<Server> {
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
        Ok(Server {
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
        })
    }

    /// The first TCP listener's address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listeners.iter().find_map(|l| match l.local {
            Address::Tcp(addr) => Some(addr),
            Address::Unix(_) => None,
        })
    }

    /// Every listener's address, in the order requested.
    pub fn addresses(&self) -> Vec<Address> {
        self.listeners.iter().map(|l| l.local.clone()).collect()
    }

    /// `true` if the listeners came from the parent process.
    pub fn is_inherited(&self) -> bool {
        self.listeners.iter().any(|l| l.origin == Origin::Inherited)
    }

    /// All settings at once, replacing any set before (each builder method below sets one
    /// field of it). Default: [`Config::default()`].
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The settings as they stand.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Run as a supervising process with `n` workers (see [`Config::workers`]); 0 forces
    /// today's single-process model. Default: [`Config::workers`].
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = Some(n);
        self
    }

    /// Counts a successor that cannot report readiness as ready after it has run `settle`
    /// without exiting. Default: [`Config::successor_ready_after`].
    pub fn successor_ready_after(mut self, settle: Duration) -> Self {
        self.config.successor_ready_after = Some(settle);
        self
    }

    /// The longest a drain waits for in-flight requests before it drops them. Default: [`Config::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// The longest a restart waits for the new process to report ready before it kills it
    /// and keeps serving. Default: [`Config::upgrade_timeout`].
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.config.upgrade_timeout = timeout;
        self
    }

    /// The longest a client may take to send a request head once it started one. Default: [`Config::header_timeout`].
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_timeout = timeout;
        self
    }

    /// How long a keep-alive connection may sit idle between requests. Default: [`Config::keep_alive_timeout`].
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.config.keep_alive_timeout = timeout;
        self
    }

    /// How long a drain leaves an idle keep-alive connection open before closing it, so that a
    /// request the client already sent is still answered. Default: [`Config::idle_grace`].
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.config.idle_grace = grace;
        self
    }

    /// The largest request head (request line and header fields) accepted; larger ones are
    /// answered 431. Default: [`Config::max_head_bytes`].
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.config.max_head_bytes = bytes;
        self
    }

    /// The largest request body accepted; larger ones are answered 413. Default: [`Config::max_body_bytes`].
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.config.max_body_bytes = bytes;
        self
    }

    /// Serve connections with async-h1's decoder and encoder instead of baton's own codec
    /// (for comparison; see the crate's `async-h1` feature). Default: [`Config::async_h1`].
    #[cfg(feature = "async-h1")]
    pub fn async_h1(mut self, on: bool) -> Self {
        self.config.async_h1 = on;
        self
    }

    /// The most connections served at once; at the limit, new ones wait in the kernel's
    /// accept queue until one closes. Default: [`Config::max_connections`].
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.config.max_connections = limit;
        self
    }

    /// How long a client may keep a response write waiting (it stopped reading) before the
    /// connection is reset. Default: [`Config::write_timeout`].
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// How long a request body may stall (no byte arrives) while it is read, by the handler or
    /// by the server skipping what the handler left. The request then fails with 408 and the
    /// connection closes. Default: [`Config::body_timeout`].
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config.body_timeout = timeout;
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
        self.hooks.set_spawn(hook);
        self
    }

    /// Runs `hook` with the successor's pid once it is ready, before this process drains.
    pub fn on_ready<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(u32) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.hooks.set_ready(hook);
        self
    }

    /// Runs `hook` when draining starts (after a restart or a shutdown signal), while the
    /// drain timer runs: close a database pool, flush logs.
    pub fn on_drain<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.hooks.set_drain(hook);
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
        self.hooks.set_give(hook);
        self
    }

    /// Receives the state the previous process handed over (see
    /// [`Server::on_hand_over_state`]), before this process serves; not called if none came
    /// (the event `StateInherited` says why). A synchronous closure. Default: none.
    pub fn on_inherit_state(mut self, hook: impl Fn(serde_json::Value) + 'static) -> Self {
        self.hooks.set_take(hook);
        self
    }

    /// Resumes upgraded connections that the previous process moved here under `name` (see
    /// [`crate::Upgraded::hand_over`]): `hook` gets each one, with the bytes it held first in
    /// its reads, and the JSON state it was handed over with. It runs on the server's thread;
    /// spawn the connection's work from it. A connection under a name with no handler is
    /// closed. Default: none.
    pub fn on_upgraded(
        mut self,
        name: &str,
        hook: impl Fn(crate::Upgraded, serde_json::Value) + 'static,
    ) -> Self {
        self.hooks.set_resume(name, hook);
        self
    }

    /// A lean handler (see [`crate::lean`]), tried before the http-types handler for requests
    /// with no body or a small one already read: it answers from the parsed head, writing
    /// status, fields and body straight into the response buffer, and returns `true`; or
    /// `false`, and the request goes to the http-types handler. Default: none.
    pub fn lean(
        mut self,
        handler: impl Fn(&crate::lean::Request<'_>, &mut crate::lean::Response<'_>) -> bool + 'static,
    ) -> Self {
        self.hooks.set_lean(handler);
        self
    }

    /// Runs `hook` with the final [`Report`] just before [`Server::serve`] returns, in every
    /// process model: a single process, each worker, and the supervising process (whose only
    /// hook this is; its report is a shutdown's).
    pub fn on_exit<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Report) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.hooks.set_exit(hook);
        self
    }

    /// The PEM certificate chain (leaf first) and private key for `tls:` listeners (cargo
    /// feature `tls`). The files are read when serving starts, in every process, so a restart
    /// after replacing them rotates the certificate. Default: [`Config::tls_files`].
    #[cfg(feature = "tls")]
    pub fn tls_files(
        mut self,
        certificate: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.tls_files = Some((certificate.into(), key.into()));
        self
    }

    /// On a restart, hand each keep-alive connection (plain TCP) to the successor over a Unix
    /// socket at its next request boundary, with whatever it already sent, instead of answering
    /// `Connection: close`: clients keep their connection and never reconnect. A connection
    /// that cannot be handed over is closed as before. Default: [`Config::hand_over_connections`].
    pub fn hand_over_connections(mut self, on: bool) -> Self {
        self.config.hand_over_connections = on;
        self
    }

    /// The largest state a restart carries to the successor (see
    /// [`Server::on_hand_over_state`]). Default: [`Config::max_state_bytes`].
    pub fn max_state_bytes(mut self, bytes: usize) -> Self {
        self.config.max_state_bytes = bytes;
        self
    }

    /// Keep a PID file at `path`: written (atomically) by whichever process serves, rewritten
    /// by each successor before it reports ready, removed at the final shutdown if it still
    /// names this process. Default: [`Config::pid_file`].
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.pid_file = Some(path.into());
        self
    }

    /// Where events go. Default: one line per event on stderr, `baton[<pid>]: <event>`.
    pub fn on_event(mut self, sink: impl Fn(&Event<'_>) + 'static) -> Self {
        self.on_event = Rc::new(sink);
        self
    }

    /// Serves until a restart hands over to a successor or a shutdown signal arrives, then
    /// drains and returns what the drain cut short. Runs on one thread: every connection is a
    /// task on a local executor inside this future.
    pub async fn serve<F, Fut>(self, handler: F) -> io::Result<Report>
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = http_types::Result<Response>> + 'static,
    {
        let executor = LocalExecutor::new();
        if self.control.is_none() && (self.supervisor_state.is_some() || self.worker_count() > 0) {
            // The supervising process: it never serves, so the handler is for its workers.
            let tasks = run_tasks(&executor, None);
            return crate::process::supervise(self).or(tasks).await;
        }
        // Connections' readiness comes from their own epoll (see `edge`), their idle
        // timeouts from one sweeper (see `deadline`).
        let edge = Edge::new()?;
        executor.spawn(edge.clone().drive()).detach();
        executor.spawn(Deadlines::install()).detach();
        let tasks = run_tasks(&executor, Some(&edge));
        run::run(self, &executor, edge.clone(), Rc::new(handler))
            .or(tasks)
            .await
    }

    /// How many workers a supervising process runs: as configured, else one when this
    /// process is PID 1 (a container's init) or behind the init of a PID namespace (see
    /// [`crate::process::Alone`]), else none (single-process model).
    fn worker_count(&self) -> usize {
        self.config
            .workers
            .unwrap_or_else(|| usize::from(crate::process::Alone::here().is_some()))
    }
}

/// Runs `executor`'s tasks for ever, checking for I/O every [`TASKS_BETWEEN_IO_CHECKS`]
/// tasks: with `edge`, by one look at the connections' epoll (and before waiting, when the
/// executor runs out of tasks), and a whole round of the reactor every
/// [`IO_LOOKS_BETWEEN_REACTOR_ROUNDS`] looks; without, by a round of the reactor each time.
async fn run_tasks<T>(executor: &LocalExecutor<'static>, edge: Option<&Edge>) -> T {
    // One look at the connections and listeners (one epoll_wait): whether it found any.
    let look = || edge.is_some_and(|edge| edge.poll_now().is_ok_and(|n| n > 0));
    let looks = if edge.is_some() {
        IO_LOOKS_BETWEEN_REACTOR_ROUNDS
    } else {
        1
    };
    loop {
        for _ in 0..looks {
            for _ in 0..TASKS_BETWEEN_IO_CHECKS {
                // Out of tasks: look first, and wait in the reactor only if nothing is ready.
                if !executor.try_tick() && !look() {
                    executor.tick().await;
                }
            }
            look();
        }
        // Back to `block_on`, which polls the reactor (without blocking) before polling this
        // future again: signals, listeners, relays, timers.
        smol::future::yield_now().await;
    }
}
