//! hyper services on baton (feature `hyper`): a hyper 1.x [`Service`] served on the core,
//! HTTP/1.1 and HTTP/2 (without TLS: h2c, told apart by the HTTP/2 connection preface; with
//! it: by ALPN) on the same listeners, restarted with zero downtime.
//!
//! At a restart's drain:
//! - an idle HTTP/1 keep-alive connection moves to the successor with the bytes hyper read
//!   and had not used (any size, up to `Config::max_held_bytes`); a busy one moves once its
//!   response is written. Where no successor takes it (a shutdown), a request already
//!   arriving is answered with `Connection: close`, and an idle connection closes;
//! - an HTTP/2 connection gets hyper's graceful GOAWAY (the last stream id at the maximum,
//!   then the real one): open streams finish, and the client sends new ones to a new
//!   connection, which the successor accepts;
//! - every request counts for the drain from its head until its body's end is written: the
//!   report says how many the drain timeout cut, and a cut request whose response had not
//!   started gets a 503 with `Connection: close` (HTTP/1) or its stream refused
//!   (`REFUSED_STREAM`, which a client may retry: it was never processed) (HTTP/2).
//!
//! Everything runs on the thread that awaits [`serve`] ([`crate::Baton::serve_local`]): the
//! core, each connection's task and HTTP/2's stream tasks, on one `Local`; hyper's
//! timer (the header read timeout it arms per request) is one heap swept by a task there.
//! The service need not be `Send`.
//!
//! HTTP upgrades go through hyper's `hyper::upgrade::on`: the upgraded connection is the
//! application's, which hears of the drain from [`crate::drain()`].
//!
//! With the `tls` feature, `tls:` listeners ([`Server::tls_files`]) offer `h2` and
//! `http/1.1` by ALPN. A TLS session cannot move: at the drain an HTTP/1 connection over TLS
//! finishes what it answers and closes; HTTP/2 over TLS gets its GOAWAY as without.

mod conn;
mod rt;

use std::cell::RefCell;
use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};

use crate::{Baton, Connection, ListenerInfo, Program, Report, Resumed};

pub use conn::Body;

/// What every connection of the process shares.
struct Shared<S> {
    service: Rc<S>,
    http1: http1::Builder,
    /// `http1` with keep-alive off: for a connection that answers what arrives, then closes.
    http1_last: http1::Builder,
    http2: http2::Builder<rt::Exec>,
}

/// The program: each connection a task on the serving thread's executor.
struct Hyper<S> {
    shared: Rc<Shared<S>>,
    executor: crate::Local,
    /// Loaded before this process reports ready, if a listener is a `tls:` one.
    tls: Rc<RefCell<Option<Acceptor>>>,
}

/// Serves `service` on `baton`'s listeners until a restart hands over to a successor or a
/// shutdown signal arrives, then drains (see the module's notes) and returns what the drain
/// cut short. Blocks its thread while idle: give it a thread of its own (`smol::block_on`
/// in `main`). The same as `Server::new(baton).serve(service)`.
pub async fn serve<S, B>(baton: Baton, service: S) -> io::Result<Report>
where
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    Server::new(baton).serve(service).await
}

/// A hyper service's server on a [`Baton`], with its options.
pub struct Server {
    baton: Baton,
    tls_files: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("tls_files", &self.tls_files)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves on `baton` (its listeners, settings and hooks).
    pub fn new(baton: Baton) -> Server {
        Server {
            baton,
            tls_files: None,
        }
    }

    /// The PEM certificate chain (leaf first) and private key for `tls:` listeners (cargo
    /// feature `tls`), which offer `h2` and `http/1.1` by ALPN. The files are read when
    /// serving starts, in every process: a restart after replacing them rotates the
    /// certificate, and a successor whose files do not load never reports ready.
    #[cfg(feature = "tls")]
    pub fn tls_files(mut self, certificate: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_files = Some((certificate.into(), key.into()));
        self
    }

    /// Serves `service` (see [`serve`]).
    pub async fn serve<S, B>(self, service: S) -> io::Result<Report>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: http_body::Body<Data = Bytes> + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let tls = Rc::new(RefCell::new(None));
        let loaded = tls.clone();
        let files = self.tls_files;
        let baton = self.baton.before_ready(move |listeners| {
            *loaded.borrow_mut() = load_tls(listeners, files.as_ref())?;
            Ok(())
        });
        let executor = crate::Local::new();
        let timer = rt::Timer::default();
        executor.spawn(timer.clone().sweep()).detach();
        let mut http1 = http1::Builder::new();
        http1.timer(timer.clone());
        let mut http1_last = http1.clone();
        http1_last.keep_alive(false);
        let mut http2 = http2::Builder::new(rt::Exec(executor.clone()));
        http2.timer(timer);
        let program = Hyper {
            shared: Rc::new(Shared {
                service: Rc::new(service),
                http1,
                http1_last,
                http2,
            }),
            executor: executor.clone(),
            tls,
        };
        baton.serve_local(program, executor).await
    }
}

#[cfg(feature = "tls")]
type Acceptor = futures_rustls::TlsAcceptor;
/// (Without the `tls` feature there is never an acceptor.)
#[cfg(not(feature = "tls"))]
type Acceptor = std::convert::Infallible;

/// The acceptor for `tls:` listeners, offering `h2` then `http/1.1`; `None` if no listener is
/// one. Files without a `tls:` listener, or such a listener without files (or without the
/// `tls` feature), are refused before the process reports ready.
fn load_tls(
    listeners: &[ListenerInfo],
    files: Option<&(PathBuf, PathBuf)>,
) -> io::Result<Option<Acceptor>> {
    let refuse = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()));
    if !listeners.iter().any(|l| l.tls) {
        return match files {
            Some(_) => refuse(
                "a TLS certificate and key are set (hyper::Server::tls_files) but no address is \
                 a tls: one: add one such as tls:127.0.0.1:8443",
            ),
            None => Ok(None),
        };
    }
    #[cfg(feature = "tls")]
    match files {
        Some((certificate, key)) => {
            crate::http::tls::acceptor(certificate, key, &[b"h2", b"http/1.1"]).map(Some)
        }
        None => refuse("a tls: listener needs a certificate and key (hyper::Server::tls_files)"),
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = files;
        refuse("tls: listeners need baton's `tls` feature")
    }
}

impl<S, B> Program for Hyper<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn accepted(&self, connection: Connection) {
        if connection.tls {
            // (Loaded before ready: a tls: listener without an acceptor never serves.)
            // (Without the `tls` feature the acceptor type is uninhabited, and Copy.)
            #[cfg_attr(not(feature = "tls"), allow(clippy::clone_on_copy))]
            let acceptor = self.tls.borrow().clone();
            #[cfg(not(feature = "tls"))]
            let _ = acceptor;
            #[cfg(feature = "tls")]
            if let Some(acceptor) = acceptor {
                let shared = self.shared.clone();
                let task = conn::serve_tls(shared, acceptor, connection.stream, connection.drain);
                self.executor.spawn(task).detach();
            }
            return;
        }
        let task = conn::serve(self.shared.clone(), connection.stream, connection.drain);
        self.executor.spawn(task).detach();
    }

    fn resumed(&self, resumed: Resumed) {
        let shared = self.shared.clone();
        let drain = resumed.drain().clone();
        match resumed.kind() {
            conn::HTTP1 => {
                // (Its held bytes, hyper's unread buffer, come first from the stream.)
                let io = rt::Io::new(resumed.take(), Vec::new());
                self.executor.spawn(conn::http1(shared, io, drain)).detach();
            }
            conn::UNKNOWN => {
                let task = conn::serve(shared, resumed.take(), drain);
                self.executor.spawn(task).detach();
            }
            // Another program's kind: dropped untaken, which baton reports.
            _ => {}
        }
    }
}
