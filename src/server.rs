//! The public [`Server`] builder and its one select loop: accept, signals, and the upgrade
//! state machine `Serving -> Spawning(child) -> Serving | Draining -> Exit`.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::Child;
use std::rc::Rc;
use std::time::Duration;

use async_io::Timer;
use http_types::{Request, Response};
use smol::future::FutureExt as _;
use smol::{LocalExecutor, Task};

use crate::conn;
use crate::drain::Drain;
use crate::event::Event;
use crate::handoff::{self, Exec, NotReady};
use crate::hooks::Hooks;
use crate::listener::{Address, Inheritance, Listener, Origin, Socket};
use crate::signals::{Command, Signals};
use crate::stream::Stream;
use crate::supervisor::Supervisor;

/// How long a successor waits for its predecessor's state before it serves cold.
const STATE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after an accept error that a retry cannot fix at once (out of fds or memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How many tasks run between two checks for I/O readiness while tasks are ready to run.
/// `LocalExecutor::run` checks every 200; connections that read their next request without
/// waiting (see `conn`) keep the executor busy under load, so a connection that does wait for
/// readiness would wait up to ~200 requests' time, about 1 ms. Under `wrk -c16`, five runs
/// each: p99 0.72-0.93 ms checking every 200 tasks, 0.19-0.27 ms (one run 0.7) every 16, for
/// ~3% of throughput.
const TASKS_BETWEEN_IO_CHECKS: usize = 16;

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
    listeners: Vec<Listener>,
    /// The parent's readiness pipe, written once this process serves.
    ready: Option<std::os::fd::OwnedFd>,
    /// This process's end of the relay its parent hands connections over on, if it does.
    relay: Option<std::os::fd::OwnedFd>,
    /// Hand live connections to successors instead of closing them.
    hand_over: bool,
    /// `Some(threads)` if `LISTENER`/`LISTEN_*` had to stay in the environment.
    environment_kept: Option<Option<usize>>,
    signals: Signals,
    exec: Exec,
    drain_timeout: Duration,
    upgrade_timeout: Duration,
    options: conn::Options,
    on_event: Rc<dyn Fn(&Event<'_>)>,
    pid_file: Option<std::path::PathBuf>,
    max_connections: usize,
    hooks: Hooks,
    /// Certificate chain and key for `tls:` listeners.
    tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    #[cfg(feature = "async-h1")]
    async_h1: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("program", &self.exec.program())
            .field("drain_timeout", &self.drain_timeout)
            .field("upgrade_timeout", &self.upgrade_timeout)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why [`Server::serve`] returned, and what the drain cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// What ended serving.
    pub stop: Stop,
    /// Requests still in flight when the drain ended early (timeout or a second shutdown
    /// signal). 0 for a clean drain.
    pub cut: usize,
    /// Connections still open at that point.
    pub dropped: usize,
}

impl Report {
    /// `true` if every accepted request was answered.
    pub fn is_clean(&self) -> bool {
        self.cut == 0
    }
}

/// What ended serving.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// SIGHUP: the successor with this pid took over.
    Restart {
        /// The successor's pid.
        successor: u32,
    },
    /// SIGINT, SIGQUIT or SIGTERM.
    Shutdown {
        /// The signal's name.
        signal: &'static str,
    },
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
    pub fn bind_all<I, S>(addrs: I) -> io::Result<Server>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // Read and take the inherited variables while this may still be the only thread:
        // signal registration below starts async-io's thread.
        let inheritance = Inheritance::from_env()?;
        let environment_kept = crate::listener::scrub_environment();
        let signals = Signals::register()?;
        let exec = Exec::capture()?;
        let addrs: Vec<String> = addrs.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let (listeners, ready, relay) = Listener::bind_all(&addrs, &inheritance)?;
        let pid = std::process::id();
        Ok(Server {
            listeners,
            ready,
            relay,
            environment_kept,
            signals,
            exec,
            drain_timeout: Duration::from_secs(5),
            upgrade_timeout: Duration::from_secs(10),
            options: conn::Options {
                header_timeout: Duration::from_secs(10),
                keep_alive_timeout: Duration::from_secs(60),
                idle_grace: Duration::from_millis(500),
                max_head: 16 * 1024,
                max_body: 16 * 1024 * 1024,
                write_timeout: Duration::from_secs(30),
                body_timeout: Duration::from_secs(30),
            },
            max_connections: 10_000,
            pid_file: None,
            hooks: Hooks::default(),
            tls_files: None,
            hand_over: true,
            #[cfg(feature = "async-h1")]
            async_h1: false,
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

    /// The longest a drain waits for in-flight requests before it drops them. Default: 5 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The longest a restart waits for the new process to report ready before it kills it
    /// and keeps serving. Default: 10 s.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// The longest a client may take to send a request head once it started one. Default: 10 s.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.options.header_timeout = timeout;
        self
    }

    /// How long a keep-alive connection may sit idle between requests. Default: 60 s.
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.options.keep_alive_timeout = timeout;
        self
    }

    /// How long a drain leaves an idle keep-alive connection open before closing it, so that a
    /// request the client already sent is still answered. Default: 500 ms.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.options.idle_grace = grace;
        self
    }

    /// The largest request head (request line and header fields) accepted; larger ones are
    /// answered 431. Default: 16 KiB.
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.options.max_head = bytes.max(64);
        self
    }

    /// The largest request body accepted; larger ones are answered 413. Default: 16 MiB.
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.options.max_body = bytes;
        self
    }

    /// Serve connections with async-h1's decoder and encoder instead of baton's own codec
    /// (for comparison; see the crate's `async-h1` feature). Default: `false`.
    #[cfg(feature = "async-h1")]
    pub fn async_h1(mut self, on: bool) -> Self {
        self.async_h1 = on;
        self
    }

    /// The most connections served at once; at the limit, new ones wait in the kernel's
    /// accept queue until one closes. Default: 10 000.
    pub fn max_connections(mut self, limit: usize) -> Self {
        self.max_connections = limit.max(1);
        self
    }

    /// How long a client may keep a response write waiting (it stopped reading) before the
    /// connection is reset. Default: 30 s.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.options.write_timeout = timeout;
        self
    }

    /// How long a request body may stall (no byte arrives) while it is read, by the handler or
    /// by the server skipping what the handler left. The request then fails with 408 and the
    /// connection closes. Default: 30 s.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.options.body_timeout = timeout;
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

    /// On a restart with connection hand-over, `hook`'s value (at most 64 KiB of JSON) goes to
    /// the successor before it serves: warm caches, counters. Default: none.
    pub fn on_hand_over_state(mut self, hook: impl Fn() -> serde_json::Value + 'static) -> Self {
        self.hooks.set_give(hook);
        self
    }

    /// Receives the state the previous process handed over (see
    /// [`Server::on_hand_over_state`]), before this process serves; not called if it sent none
    /// or took over a second to send it. Default: none.
    pub fn on_inherit_state(mut self, hook: impl Fn(serde_json::Value) + 'static) -> Self {
        self.hooks.set_take(hook);
        self
    }

    /// Runs `hook` with the final [`Report`] just before [`Server::serve`] returns.
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
    /// after replacing them rotates the certificate. Default: none.
    #[cfg(feature = "tls")]
    pub fn tls_files(
        mut self,
        certificate: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls_files = Some((certificate.into(), key.into()));
        self
    }

    /// On a restart, hand each keep-alive connection (plain TCP) to the successor over a Unix
    /// socket at its next request boundary, with whatever it already sent, instead of answering
    /// `Connection: close`: clients keep their connection and never reconnect. A connection
    /// that cannot be handed over is closed as before. Default: `true`.
    pub fn hand_over_connections(mut self, on: bool) -> Self {
        self.hand_over = on;
        self
    }

    /// Keep a PID file at `path`: written (atomically) by whichever process serves, rewritten
    /// by each successor before it reports ready, removed at the final shutdown if it still
    /// names this process. Default: none.
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.pid_file = Some(path.into());
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
        let tasks = async {
            loop {
                for _ in 0..TASKS_BETWEEN_IO_CHECKS {
                    if !executor.try_tick() {
                        executor.tick().await;
                    }
                }
                // Back to `block_on`, which polls the reactor (without blocking) before
                // polling this future again.
                smol::future::yield_now().await;
            }
        };
        self.run(&executor, Rc::new(handler)).or(tasks).await
    }

    async fn run<F, Fut>(
        self,
        executor: &LocalExecutor<'static>,
        handler: Rc<F>,
    ) -> io::Result<Report>
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = http_types::Result<Response>> + 'static,
    {
        let Server {
            listeners,
            ready,
            mut signals,
            exec,
            drain_timeout,
            upgrade_timeout,
            options,
            on_event: emit,
            pid_file,
            max_connections,
            hooks,
            tls_files,
            relay,
            hand_over,
            environment_kept,
            #[cfg(feature = "async-h1")]
            async_h1,
        } = self;
        // Certificates load before anything reports ready: a successor whose files are broken
        // fails here, and its parent serves on with the old ones.
        let tls = load_tls(&listeners, &tls_files)?;
        // The PID file names this process before its parent hears that it is ready.
        let supervisor = Supervisor::new(pid_file);
        supervisor.serving(ready.is_some())?;
        for listener in &listeners {
            emit(&Event::Listening {
                addr: &listener.local,
                fd: listener.fd(),
                origin: listener.origin.as_str(),
                tls: listener.tls,
            });
        }
        if let Some(threads) = environment_kept {
            emit(&Event::EnvironmentKept { threads });
        }
        // Connections the previous process hands over, if it does; first, before this process
        // serves, its state (possibly none), awaited for a bounded time.
        let mut inbound = relay.map(crate::relay::Relay::new).transpose()?;
        let mut relay_buffer = Vec::new();
        if let Some(relay) = &inbound {
            let first = async { relay.receive(&mut relay_buffer).await.ok().flatten() };
            let late = async {
                Timer::after(STATE_TIMEOUT).await;
                None
            };
            match first.or(late).await {
                Some(crate::relay::Received::State(state)) => hooks.inherit(&state),
                // Anything else breaks the protocol: no connections from that relay.
                _ => inbound = None,
            }
        }
        if let Some(pipe) = ready {
            // Unannounced, the parent would kill this process at its upgrade timeout anyway.
            handoff::announce_ready(pipe).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot tell the parent process this one is ready: {e}"),
                )
            })?;
        }
        let mut drain = Drain::new();
        // Drains given up when a successor died during them; their connections still count.
        let mut earlier: Vec<Rc<Drain>> = Vec::new();
        let mut upgrade: Option<Upgrade> = None;
        let mut spawned: Vec<Child> = Vec::new();
        let mut backoff = false;
        // Where the next accept starts looking, so that no listener starves the others.
        let mut next_listener = 0;

        let report = loop {
            let mut successor: Option<Child> = None;
            // This process's end of the successor's relay, once a restart is ready.
            let mut outbound: Option<crate::relay::Relay> = None;
            let stop = loop {
                let accept = async {
                    if backoff {
                        Timer::after(ACCEPT_BACKOFF).await;
                    }
                    // At the limit, leave new connections in the kernel's queue until one ends.
                    drain.below(max_connections).await;
                    let accepted =
                        std::future::poll_fn(|cx| accept_any(&listeners, &mut next_listener, cx))
                            .await;
                    Wake::Accepted(accepted)
                };
                let signal = async { Wake::Signal(signals.next().await) };
                let relayed = async {
                    match inbound.as_ref() {
                        Some(relay) => Wake::Relayed(relay.receive(&mut relay_buffer).await),
                        None => std::future::pending().await,
                    }
                };
                let upgraded = async {
                    match upgrade.as_mut() {
                        Some(upgrade) => Wake::Upgraded((&mut upgrade.task).await),
                        None => std::future::pending().await,
                    }
                };
                match signal.or(upgraded).or(relayed).or(accept).await {
                    Wake::Relayed(Ok(Some(crate::relay::Received::Connection(handed)))) => {
                        serve_handed(handed, executor, &handler, &drain, options);
                    }
                    // The previous process is done handing over (or its relay broke).
                    Wake::Relayed(_) => inbound = None,
                    Wake::Accepted(Ok((index, (stream, peer)))) => {
                        backoff = false;
                        let local = listeners[index].local_text.clone();
                        // Counted from the accept on, so the connection limit holds exactly.
                        let counted = drain.connection();
                        #[cfg(feature = "async-h1")]
                        if async_h1 {
                            let task = crate::h1::serve(
                                stream,
                                handler.clone(),
                                drain.clone(),
                                counted,
                                options,
                            );
                            executor.spawn(task).detach();
                            continue;
                        }
                        // Without the `tls` feature the acceptor type is uninhabited (and Copy).
                        #[cfg_attr(not(feature = "tls"), allow(clippy::clone_on_copy))]
                        let tls = if listeners[index].tls {
                            tls.clone()
                        } else {
                            None
                        };
                        let pending = Vec::new();
                        let incoming = conn::Incoming {
                            stream,
                            peer,
                            local,
                            tls,
                            pending,
                        };
                        let task =
                            conn::serve(incoming, handler.clone(), drain.clone(), counted, options);
                        executor.spawn(task).detach();
                    }
                    Wake::Accepted(Err(error)) => {
                        backoff = needs_backoff(&error);
                        if backoff {
                            emit(&Event::AcceptFailed { error: &error });
                        }
                    }
                    Wake::Signal(signal) => {
                        let (name, command) = signal?;
                        if command != Command::Reap {
                            emit(&Event::Signal { name });
                        }
                        match command {
                            Command::Restart | Command::Spawn if upgrade.is_some() => {
                                emit(&Event::Ignored {
                                    name,
                                    reason: "an upgrade is already in progress",
                                });
                            }
                            Command::Restart | Command::Spawn => {
                                let restart = command == Command::Restart;
                                if restart {
                                    supervisor.reloading();
                                }
                                match upgrade_task(
                                    &exec,
                                    &listeners,
                                    upgrade_timeout,
                                    &emit,
                                    &hooks,
                                    hand_over,
                                ) {
                                    Ok(task) => {
                                        let task = executor.spawn(task);
                                        upgrade = Some(Upgrade { restart, task });
                                    }
                                    Err(error) => {
                                        let reason = error.to_string();
                                        if restart {
                                            supervisor.upgrade_failed(&reason);
                                        }
                                        emit(&Event::SpawnFailed { pid: None, reason });
                                    }
                                }
                            }
                            Command::Shutdown => break Stop::Shutdown { signal: name },
                            Command::Reap => reap(&mut spawned, &*emit),
                        }
                    }
                    Wake::Upgraded(outcome) => {
                        let restart = upgrade.take().is_some_and(|upgrade| upgrade.restart);
                        match outcome {
                            Ok((child, relay)) if restart => {
                                emit(&Event::Ready { pid: child.id() });
                                supervisor.successor_ready(child.id());
                                hooks.ready(child.id()).await;
                                let pid = child.id();
                                successor = Some(child);
                                outbound = relay;
                                break Stop::Restart { successor: pid };
                            }
                            // A SIGUSR2 successor gets no connections: its relay closes here.
                            Ok((child, _)) => {
                                emit(&Event::Ready { pid: child.id() });
                                hooks.ready(child.id()).await;
                                spawned.push(child);
                            }
                            Err((pid, reason)) => {
                                if restart {
                                    supervisor.upgrade_failed(&reason);
                                }
                                emit(&Event::SpawnFailed { pid, reason });
                            }
                        }
                    }
                }
            };

            // A successor still starting when a shutdown arrives is killed with its task.
            upgrade = None;
            // Stop accepting. After a restart this process keeps its copy of the listeners, unused,
            // until it exits: should the successor die during the drain, it serves again. The
            // sockets, and every connection waiting in their accept queues, live on in the
            // successor either way.
            reap(&mut spawned, &*emit);
            let last = matches!(stop, Stop::Shutdown { .. }) && spawned.is_empty();
            if last {
                supervisor.stopping();
                // A Unix socket's file goes only when serving ends for good: never in a restart
                // (the successor serves on it), nor while a SIGUSR2 child still does.
                for path in listeners.iter().filter_map(Listener::unix_path) {
                    let _ = std::fs::remove_file(path);
                }
            }
            // (async-h1's loop cannot hand connections over; with it they close as usual.)
            #[cfg(feature = "async-h1")]
            if async_h1 {
                outbound = None;
            }
            if let Some(relay) = outbound.take() {
                drain.set_relay(Rc::new(relay));
            }
            drain.start();
            emit(&Event::Draining {
                connections: drain.connections()
                    + earlier.iter().map(|d| d.connections()).sum::<usize>(),
                requests: drain.requests() + earlier.iter().map(|d| d.requests()).sum::<usize>(),
            });
            let deadline = Timer::after(drain_timeout);
            hooks.draining().await;

            // A predecessor may still be handing connections over (a restart came before it
            // was gone): keep taking them until it closes the relay, else they would be lost
            // in the relay's buffer when this process exits.
            let relaying = async {
                while let Some(relay) = inbound.as_ref() {
                    match relay.receive(&mut relay_buffer).await {
                        Ok(Some(crate::relay::Received::Connection(handed))) => {
                            serve_handed(handed, executor, &handler, &drain, options);
                        }
                        _ => inbound = None,
                    }
                }
            };
            let finished = async {
                relaying.await;
                for drain in earlier.iter().chain(std::iter::once(&drain)) {
                    drain.finished().await;
                }
                Ending::Drained
            };
            let timeout = async {
                deadline.await;
                Ending::Cut
            };
            let signalled = async {
                loop {
                    match signals.next().await {
                        Ok((name, Command::Shutdown)) => {
                            emit(&Event::Signal { name });
                            return Ending::Cut;
                        }
                        Ok((_, Command::Reap)) => {
                            reap(&mut spawned, &*emit);
                            if let Some(child) = successor.as_mut() {
                                if let Ok(Some(status)) = child.try_wait() {
                                    return Ending::SuccessorExited(child.id(), status);
                                }
                            }
                        }
                        Ok((name, _)) => {
                            emit(&Event::Signal { name });
                            emit(&Event::Ignored {
                                name,
                                reason: "draining",
                            });
                        }
                        Err(_) => std::future::pending::<()>().await,
                    }
                }
            };
            let (cut, dropped) = match finished.or(signalled).or(timeout).await {
                Ending::Drained => (0, 0),
                Ending::Cut => {
                    let all = earlier.iter().chain(std::iter::once(&drain));
                    all.fold((0, 0), |(r, c), d| (r + d.requests(), c + d.connections()))
                }
                Ending::SuccessorExited(pid, status) => {
                    // The successor is gone and this process still holds the sockets: serve again.
                    emit(&Event::SuccessorExited { pid, status });
                    supervisor.resumed(pid, status);
                    crate::drain::resume();
                    earlier.push(std::mem::replace(&mut drain, Drain::new()));
                    continue;
                }
            };
            drop(listeners);
            emit(&Event::Exiting { cut, dropped });
            if last {
                supervisor.exited();
            }
            break Report { stop, cut, dropped };
        };
        hooks.exiting(&report).await;
        Ok(report)
    }
}

/// A successor on its way up, and what to do once it is ready.
struct Upgrade {
    /// SIGHUP (drain once ready) rather than SIGUSR2 (keep serving beside it).
    restart: bool,
    task: Task<Upgraded>,
}

/// The successor, serving (with this process's end of the relay, if any); or its pid (if it
/// got one) and why it is not.
type Upgraded = Result<(Child, Option<crate::relay::Relay>), (Option<u32>, String)>;

/// Starts a successor and waits until it is ready: the part of an upgrade that runs beside
/// the select loop.
fn upgrade_task(
    exec: &Exec,
    listeners: &[Listener],
    timeout: Duration,
    emit: &Rc<dyn Fn(&Event<'_>)>,
    hooks: &Hooks,
    hand_over: bool,
) -> io::Result<impl Future<Output = Upgraded> + 'static> {
    let spawn = handoff::prepare(exec, listeners, hand_over)?;
    let emit = emit.clone();
    let hooks = hooks.clone();
    Ok(async move {
        hooks.spawning().await;
        let successor = spawn
            .start(&hooks.state())
            .await
            .map_err(|e| (None, e.to_string()))?;
        emit(&Event::Spawned {
            pid: successor.pid(),
        });
        successor
            .ready(timeout)
            .await
            .map_err(|(pid, why): (u32, NotReady)| (Some(pid), why.to_string()))
    })
}

/// Serves a connection the previous process handed over, as if this one had accepted it.
fn serve_handed<F, Fut>(
    handed: crate::relay::Handed,
    executor: &LocalExecutor<'static>,
    handler: &Rc<F>,
    drain: &Rc<Drain>,
    options: conn::Options,
) where
    F: Fn(Request) -> Fut + 'static,
    Fut: Future<Output = http_types::Result<Response>> + 'static,
{
    let Ok(stream) = async_io::Async::new(std::net::TcpStream::from(handed.fd)) else {
        return;
    };
    let incoming = conn::Incoming {
        stream: Stream::Tcp(stream),
        peer: handed.peer,
        local: handed.local,
        tls: None,
        pending: handed.pending,
    };
    let counted = drain.connection();
    executor
        .spawn(conn::serve(
            incoming,
            handler.clone(),
            drain.clone(),
            counted,
            options,
        ))
        .detach();
}

/// How a drain ended.
enum Ending {
    Drained,
    /// The drain timeout, or a second shutdown signal.
    Cut,
    /// The successor this process handed over to exited during the drain.
    SuccessorExited(u32, std::process::ExitStatus),
}

enum Wake {
    /// A connection the previous process handed over, or the end of its relay.
    Relayed(io::Result<Option<crate::relay::Received>>),
    /// The index of the listener, and the connection.
    Accepted(io::Result<(usize, (Stream, String))>),
    Signal(io::Result<(&'static str, Command)>),
    Upgraded(Upgraded),
}

/// The acceptor for `tls:` listeners, loaded from the configured files; `None` if no listener
/// needs one.
fn load_tls(
    listeners: &[Listener],
    files: &Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> io::Result<Option<conn::Tls>> {
    if !listeners.iter().any(|l| l.tls) {
        return Ok(None);
    }
    #[cfg(feature = "tls")]
    match files {
        Some((certificate, key)) => crate::tls::acceptor(certificate, key).map(Some),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a tls: listener needs a certificate and key (Server::tls_files, hello --tls-cert --tls-key)",
        )),
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = files;
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "tls: listeners need baton's `tls` feature",
        ))
    }
}

/// Accepts from whichever listener has a connection waiting, starting after the last one used.
fn accept_any(
    listeners: &[Listener],
    next: &mut usize,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<(usize, (Stream, String))>> {
    for offset in 0..listeners.len() {
        let index = (*next + offset) % listeners.len();
        let socket: &Socket = &listeners[index].socket;
        if let std::task::Poll::Ready(accepted) = socket.poll_accept(cx) {
            *next = index + 1;
            return std::task::Poll::Ready(accepted.map(|connection| (index, connection)));
        }
    }
    std::task::Poll::Pending
}

/// Out of fds or buffers: retrying at once would spin. Anything else (a connection aborted
/// before it was accepted, say) concerns one connection only.
fn needs_backoff(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Collects SIGUSR2 children that have exited, so none is left a zombie.
fn reap(children: &mut Vec<Child>, emit: &dyn Fn(&Event<'_>)) {
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
