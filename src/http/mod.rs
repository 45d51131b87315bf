//! The HTTP/1.1 server (feature `http`), one program of the core ([`crate::Baton`]): it adds
//! the codec, the connection loop, the lean path, TLS and upgrades, and uses nothing of the
//! core but what every program gets ([`crate::Program`], [`crate::Stream`], [`crate::Drain`]).
//! Its settings are [`Options`]; the core's stay on the [`crate::Baton`] it serves on.
//!
//! | module | owns |
//! |---|---|
//! | `program` | the HTTP program: accepted and resumed connections to connection tasks, TLS certificates |
//! | `options` | [`Options`], the HTTP settings |
//! | `codec` | the HTTP/1.1 wire format as pure functions |
//! | `conn` | one connection's loop and what follows each response |
//! | [`lean`] | the lean handler path |
//! | `h1` | (feature `async-h1`) the same loop on async-h1 |
//! | `tls` | (feature `tls`) rustls sessions |
//! | `stream` | a connected client: the core's [`crate::Stream`], or a TLS session over one |
//! | [`websocket`] | [`websocket::Boundary`]: a WebSocket library fed one frame at a time, so a socket can move between messages |

pub(crate) mod codec;
pub(crate) mod conn;
#[cfg(feature = "async-h1")]
pub(crate) mod h1;
pub mod lean;
mod options;
mod program;
pub(crate) mod stream;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub mod websocket;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use http_types::{Request, Response};

use crate::Deadlines;
use crate::baton::Baton;
use crate::report::Report;
pub use options::Options;

/// Resumes an upgraded connection with its state.
pub(crate) type Resume = Rc<dyn Fn(crate::Upgraded, serde_json::Value)>;

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
    /// The core: listeners, signals, restarts, the drain.
    baton: Baton,
    /// The HTTP settings.
    options: Options,
    /// The lean handler, tried before the http-types one.
    lean: Option<lean::Handler>,
    /// Handlers resuming upgraded connections the previous process handed over, by name.
    resumers: Vec<(String, Resume)>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("baton", &self.baton)
            .field(
                "resumers",
                &self
                    .resumers
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Listens on `addr` (`host:port`, `:port` for every interface, `unix:/path`, or
    /// `tls:host:port`), or takes over the listener for that address that the parent process
    /// passed through `LISTENER` or systemd through `LISTEN_FDS`: see [`Baton::bind`]. Call it
    /// first thing in `main`, before starting threads or a runtime.
    pub fn bind(addr: &str) -> io::Result<Server> {
        Baton::bind(addr).map(Server::on)
    }

    /// Like [`Server::bind`], for several addresses at once: see [`Baton::bind_all`].
    pub fn bind_all<I, S>(addrs: I) -> io::Result<Server>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Baton::bind_all(addrs).map(Server::on)
    }

    /// Takes over every listener the parent process handed over, whatever their addresses;
    /// with none, listens on `default`: see [`Baton::bind_inherited_or`].
    pub fn bind_inherited_or(default: &str) -> io::Result<Server> {
        Baton::bind_inherited_or(default).map(Server::on)
    }

    /// An HTTP server on `baton`'s listeners.
    pub fn on(baton: Baton) -> Server {
        Server {
            baton,
            options: Options::default(),
            lean: None,
            resumers: Vec::new(),
        }
    }

    /// The core under this server, to set what it offers every program (hooks, the process
    /// model, the drain): `server.core(|baton| baton.workers(2).on_drain(..))`. Everything
    /// the core offers is set there, on [`Baton`]; the HTTP settings are here.
    pub fn core(mut self, set: impl FnOnce(Baton) -> Baton) -> Self {
        self.baton = set(self.baton);
        self
    }

    /// The core under this server, as it stands: its listeners' addresses, its settings.
    pub fn baton(&self) -> &Baton {
        &self.baton
    }

    /// The first TCP listener's address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.baton.local_addr()
    }

    /// The HTTP settings as they stand.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// All HTTP settings at once, replacing any set before (each method below sets one field
    /// of it). Default: [`Options::default()`].
    pub fn with_options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The longest a client may take to send a request head once it started one. Default:
    /// [`Options::header_timeout`].
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.options.header_timeout = timeout;
        self
    }

    /// How long a keep-alive connection may sit idle between requests. Default:
    /// [`Options::keep_alive_timeout`].
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.options.keep_alive_timeout = timeout;
        self
    }

    /// How long a drain leaves an idle keep-alive connection open before closing it, so that a
    /// request the client already sent is still answered. Default: [`Options::idle_grace`].
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.options.idle_grace = grace;
        self
    }

    /// The largest request head (request line and header fields) accepted; larger ones are
    /// answered 431. Default: [`Options::max_head_bytes`].
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.options.max_head_bytes = bytes;
        self
    }

    /// The largest request body accepted; larger ones are answered 413. Default:
    /// [`Options::max_body_bytes`].
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.options.max_body_bytes = bytes;
        self
    }

    /// Serve connections with async-h1's decoder and encoder instead of baton's own codec
    /// (for comparison; see the crate's `async-h1` feature). Default: [`Options::async_h1`].
    #[cfg(feature = "async-h1")]
    pub fn async_h1(mut self, on: bool) -> Self {
        self.options.async_h1 = on;
        self
    }

    /// How long a client may keep a response write waiting (it stopped reading) before the
    /// connection is reset. Default: [`Options::write_timeout`].
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.options.write_timeout = timeout;
        self
    }

    /// How long a request body may stall (no byte arrives) while it is read, by the handler or
    /// by the server skipping what the handler left. The request then fails with 408 and the
    /// connection closes. Default: [`Options::body_timeout`].
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.options.body_timeout = timeout;
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
        self.resumers.retain(|(n, _)| n != name);
        self.resumers.push((name.to_owned(), Rc::new(hook)));
        self
    }

    /// A lean handler (see [`crate::lean`]), tried before the http-types handler for requests
    /// with no body or a small one already read: it answers from the parsed head, writing
    /// status, fields and body straight into the response buffer, and returns `true`; or
    /// `false`, and the request goes to the http-types handler. Default: none.
    pub fn lean(
        mut self,
        handler: impl Fn(&crate::http::lean::Request<'_>, &mut crate::http::lean::Response<'_>) -> bool
        + 'static,
    ) -> Self {
        self.lean = Some(Rc::new(handler));
        self
    }

    /// The PEM certificate chain (leaf first) and private key for `tls:` listeners (cargo
    /// feature `tls`). The files are read when serving starts, in every process, so a restart
    /// after replacing them rotates the certificate. Default: [`Options::tls_files`].
    #[cfg(feature = "tls")]
    pub fn tls_files(
        mut self,
        certificate: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.options.tls_files = Some((certificate.into(), key.into()));
        self
    }

    /// Serves until a restart hands over to a successor or a shutdown signal arrives, then
    /// drains and returns what the drain cut short (see [`Baton::serve`]). Runs on one
    /// thread: every connection is a task on a `Local` inside this future, and when
    /// there is nothing to do the future blocks that thread in `epoll_wait` on the
    /// connections' epoll (async-io's reactor runs on its own thread meanwhile, for signals
    /// and timers). Give it a thread of its own (`smol::block_on` in `main`, as the examples
    /// do), not a task on an executor other tasks share.
    pub async fn serve<F, Fut>(self, handler: F) -> io::Result<Report>
    where
        F: Fn(Request) -> Fut + 'static,
        Fut: Future<Output = http_types::Result<Response>> + 'static,
    {
        let Server {
            baton,
            lean,
            resumers,
            options,
        } = self;
        // Certificates load before this process reports ready (in a supervising process
        // too, which never serves: a broken set fails at start-up), so a successor whose files
        // are broken fails, and its parent serves on with the old ones.
        let tls = Rc::new(std::cell::RefCell::new(None));
        let loaded = tls.clone();
        let files = options.tls_files.clone();
        let baton = baton.before_ready(move |listeners| {
            *loaded.borrow_mut() = program::load_tls(listeners, &files)?;
            Ok(())
        });
        // Connections' readiness comes from the core's edge (see `crate::Stream`), their
        // idle timeouts from one sweeper (see `deadline`).
        let executor = crate::io::local::Local::new();
        executor.spawn(Deadlines::install()).detach();
        let program = program::Http {
            executor: executor.clone(),
            handler: Rc::new(handler),
            lean,
            resumers,
            tls,
            options: conn::Options::from(&options),
            async_h1: options.async_h1,
            events: baton.events(),
        };
        baton.serve_local(program, executor).await
    }
}
