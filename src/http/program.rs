//! The HTTP server as a program of the core: each accepted connection (registered with the
//! connections' epoll, or wrapped for TLS or a Unix socket) becomes a connection task on the
//! server's executor; each resumed one is a keep-alive connection (kind `baton/http`, or a
//! build's before kinds) or an upgraded connection resumed by the handler its name has.

use std::future::Future;
use std::io;
use std::rc::Rc;

use http_types::{Request, Response};

use super::Resume;
use super::conn;
use super::stream::Stream;
use crate::event::Event;
use crate::listener::ListenerInfo;
use crate::program::{Connection, Program, Resumed};

/// What every connection of the server shares: the handlers and the settings.
pub(super) struct Http<F> {
    pub(super) executor: crate::io::local::Local,
    pub(super) handler: Rc<F>,
    pub(super) lean: Option<super::lean::Handler>,
    pub(super) resumers: Vec<(String, Resume)>,
    /// The acceptor for `tls:` listeners, loaded before this process reports ready.
    pub(super) tls: Rc<std::cell::RefCell<Option<conn::Tls>>>,
    pub(super) options: conn::Options,
    /// Serve with async-h1's codec (feature `async-h1`).
    pub(super) async_h1: bool,
    /// Where connections report (a handler's error answered 5xx).
    pub(super) events: Rc<dyn Fn(&Event<'_>)>,
}

impl<F, Fut> Program for Http<F>
where
    F: Fn(Request) -> Fut + 'static,
    Fut: Future<Output = http_types::Result<Response>> + 'static,
{
    fn accepted(&self, connection: Connection) {
        let Connection {
            stream,
            tls,
            drain: service,
            ..
        } = connection;
        #[cfg(feature = "async-h1")]
        if self.async_h1 {
            let task = super::h1::serve(
                Stream::Plain(stream),
                self.handler.clone(),
                service,
                self.options,
                self.events.clone(),
            );
            self.executor.spawn(task).detach();
            return;
        }
        let _ = self.async_h1;
        // Without the `tls` feature the acceptor type is uninhabited (and Copy).
        #[cfg_attr(not(feature = "tls"), allow(clippy::clone_on_copy))]
        let tls = if tls { self.tls.borrow().clone() } else { None };
        self.spawn(stream, tls, Vec::new(), true, service);
    }

    fn resumed(&self, resumed: Resumed) {
        let kind = resumed.kind();
        if kind == conn::KEEP_ALIVE {
            // A keep-alive connection: served as if accepted here, the bytes it held first.
            let service = resumed.drain().clone();
            let stream = resumed.take();
            let held = stream.take_held();
            return self.spawn(stream, None, held, false, service);
        }
        // An upgraded connection, resumed by the handler registered for its kind; refused
        // (closed, warned about, counted) if there is none.
        let found = self.resumers.iter().find(|(name, _)| name == kind);
        let Some(resume) = found.map(|(_, hook)| hook.clone()) else {
            return drop(resumed);
        };
        let state = resumed.state().clone();
        let service = resumed.drain().clone();
        let stream = resumed.take();
        let held = stream.take_held();
        let task = conn::resume_upgraded(
            Stream::Plain(stream),
            held,
            move |upgraded| resume(upgraded, state),
            service,
        );
        self.executor.spawn(task).detach();
    }
}

impl<F, Fut> Http<F>
where
    F: Fn(Request) -> Fut + 'static,
    Fut: Future<Output = http_types::Result<Response>> + 'static,
{
    /// Serves `stream` as a task on the server's executor: `pending`, bytes already read,
    /// first; `fresh` if accepted here (its first head is bounded from the accept).
    fn spawn(
        &self,
        stream: crate::Stream,
        tls: Option<conn::Tls>,
        pending: Vec<u8>,
        fresh: bool,
        service: crate::Drain,
    ) {
        let (peer, local) = (stream.peer().clone(), stream.local().clone());
        let incoming = conn::Incoming {
            stream: Stream::Plain(stream),
            peer,
            local,
            tls,
            pending,
            fresh,
        };
        let task = conn::serve(
            incoming,
            self.handler.clone(),
            self.lean.clone(),
            service,
            self.options,
            self.events.clone(),
        );
        self.executor.spawn(task).detach();
    }
}

/// The acceptor for `tls:` listeners, loaded from the configured files; `None` if no listener
/// needs one. Certificate files without a `tls:` listener are refused too: the user asked for
/// TLS and would otherwise get plain HTTP without a word.
pub(super) fn load_tls(
    listeners: &[ListenerInfo],
    files: &Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> io::Result<Option<conn::Tls>> {
    if !listeners.iter().any(|l| l.tls) {
        return match files {
            Some(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a TLS certificate and key are set (Server::tls_files) but no address is a \
                 tls: one: add one such as tls:127.0.0.1:8443",
            )),
            None => Ok(None),
        };
    }
    #[cfg(feature = "tls")]
    match files {
        Some((certificate, key)) => {
            super::tls::acceptor(certificate, key, &[b"http/1.1"]).map(Some)
        }
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a tls: listener needs a certificate and key (Server::tls_files)",
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
