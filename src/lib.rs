//! Zero-downtime restarts for servers on smol: [`Baton`], a core that restarts any program
//! ([`Program`]: an echo, a proxy, an RPC server), and [`Server`], the HTTP/1.1 server built on
//! it.
//!
//! On SIGHUP the running process starts a fresh copy of its own binary and hands it the
//! listening socket (the baton). Once the copy reports that it is serving, the old process stops
//! accepting, finishes its in-flight requests under a timer, and exits. The socket, and every
//! connection waiting in its accept queue, is never closed, so no client is refused.
//!
//! ```no_run
//! use std::time::Duration;
//! use baton::http_types::Response;
//!
//! fn main() -> std::io::Result<()> {
//!     let server = baton::Server::bind("127.0.0.1:8080")?.drain_timeout(Duration::from_secs(5));
//!     let report = smol::block_on(server.serve(|_req| async {
//!         Ok(Response::from(format!("Hello from {}!\n", std::process::id())))
//!     }))?;
//!     std::process::exit(if report.is_clean() { 0 } else { 1 })
//! }
//! ```
//!
//! | signal | effect |
//! |---|---|
//! | SIGHUP | restart: start a successor, wait until it is ready, then drain and return |
//! | SIGUSR2 | nginx's binary upgrade: start a successor and serve beside it (`<pid file>.oldbin`) |
//! | SIGINT, SIGQUIT, SIGTERM | close the listening sockets (new connections are refused), drain and return; a second one returns at once |
//!
//! Hooks (`on_spawn`, `on_ready`, `on_drain`, `on_exit`) run the application's code at those
//! turning points; they are async and run on the server's thread (for synchronous work, do it
//! and return `async {}`). Handlers can ask [`is_draining`] (a health check, say) or await
//! [`draining`]; an upgraded connection ([`upgrade`], a WebSocket say) can move to the
//! successor ([`Upgraded::hand_over`], [`Server::on_upgraded`]).
//!
//! With [`Server::workers`] (the default as PID 1 or behind a container's init), the process becomes a
//! supervising process that keeps the PID and the sockets and serves through worker
//! processes, each exactly such a server; a restart replaces every worker and then
//! re-executes the supervising process in place. [`reload`] restarts a server by its pid file
//! and says whether the new code serves.
//!
//! The successor learns about the socket from the `LISTENER` environment variable,
//! `{"addr":"127.0.0.1:8080","fd":3,"filename":"tcp:127.0.0.1:8080->"}`, the format of the Go
//! original, so Go and Rust servers can hand over to each other (see
//! [`Server::bind_inherited_or`] and [`Config::successor_ready_after`]). `Server::bind` reads it and
//! takes it (and systemd's `LISTEN_*`) out of the process environment, so processes the
//! handler starts never inherit it; call `bind` before starting threads, because the
//! environment can only be changed soundly while the process has one thread (otherwise the
//! variables stay and the server logs that they did).
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "baton builds on Linux only: it relies on epoll (src/io/edge.rs), SOCK_CLOEXEC and \
     SOCK_NONBLOCK at accept, MSG_NOSIGNAL, SO_ACCEPTCONN, abstract Unix sockets, memfd and \
     PR_SET_CHILD_SUBREAPER"
);

mod baton;
mod config;
mod drain;
mod error;
mod event;
mod handoff;
mod hooks;
#[cfg(feature = "http")]
mod http;
mod io;
mod listener;
mod process;
mod reap;
mod reload;
mod report;
mod serve;
mod signals;
mod supervisor;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    //! The request decoder, for the fuzz target in `fuzz/`. Not a public API.

    /// Decodes `data` as a request head and chunked body, whole and split in two at a point
    /// `data` chooses, and panics if the two ways disagree.
    pub fn request(data: &[u8]) {
        let Some((&split, data)) = data.split_first() else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; crate::http::codec::MAX_HEADERS];
        let whole =
            crate::http::codec::parse_head(data, &mut headers, 8192).map(|h| h.map(|h| h.len));
        let cut = usize::from(split) % (data.len() + 1);
        let mut headers = [httparse::EMPTY_HEADER; crate::http::codec::MAX_HEADERS];
        let prefix = crate::http::codec::parse_head(&data[..cut], &mut headers, 8192)
            .map(|h| h.map(|h| h.len));
        // A prefix can only be partial, an error, or the same complete head.
        if let (Ok(Some(a)), Ok(Some(b))) = (prefix, whole) {
            assert_eq!(a, b, "a prefix parsed to a different head");
        }
        let body = match whole {
            Ok(Some(len)) => &data[len..],
            _ => data,
        };
        let decode = |chunk: usize| {
            let mut state = crate::http::codec::Chunked::new();
            let mut out = vec![0u8; 64];
            let mut decoded = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let end = (at + chunk).min(body.len());
                match state.decode(&body[at..end], &mut out, &mut Vec::new()) {
                    Ok((0, 0)) => break,
                    Ok((used, produced)) => {
                        decoded.extend_from_slice(&out[..produced]);
                        at += used;
                    }
                    Err(_) => return None,
                }
            }
            Some((decoded, state))
        };
        let (a, b) = (
            decode(body.len().max(1)),
            decode(1 + usize::from(split) % 7),
        );
        if let (Some(a), Some(b)) = (&a, &b) {
            assert_eq!(a, b, "chunked decoding depends on how the input is split");
        }
    }
}

pub use baton::{Baton, Connection, ListenerInfo, Program, Resumed};
pub use config::Config;
#[cfg(feature = "log")]
pub use event::log_event;
pub use event::{Event, Level};
#[cfg(feature = "http")]
pub use http::conn::{UpgradeReceiver, Upgraded, upgrade};
#[cfg(feature = "http")]
pub use http::{Server, lean, websocket};
pub use io::datagram::Datagrams;
pub use io::stream::Stream;

/// `true` once this process has started draining (after a restart handed over, or a shutdown
/// signal), on any thread: a health check can report it.
pub fn is_draining() -> bool {
    drain::is_draining()
}

/// Completes when this process starts draining (at once if it already is), awaited on any
/// thread and any executor: a streaming response or an upgraded connection (a WebSocket)
/// uses it to end cleanly (end the body, or send close code 1012, service restart), or to
/// move. Same as `drain_notice().wait()`.
pub fn draining() -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    drain::DrainNotice::new().wait()
}

/// This process's drain notice, to keep and clone into tasks on any thread (see
/// [`DrainNotice`]).
pub fn drain_notice() -> DrainNotice {
    drain::DrainNotice::new()
}

pub use drain::{Busy, DrainNotice, LongLived, Service, Work};
/// http-types, as baton uses it (without its default `fs` feature, which would pull in
/// async-std): `baton::http_types::Response` needs no dependency of the application's own.
#[cfg(feature = "http")]
pub use http_types;
pub use io::Address;
pub use listener::{LISTENER_ENV, Origin};
pub use reload::reload;
pub use report::{Report, Stop};
pub use signals::Signal;
