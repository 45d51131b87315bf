//! Zero-downtime restarts for servers on smol: [`Baton`], a core that restarts any program
//! ([`Program`]: an echo, a proxy, an RPC server) with its live connections, and (feature
//! `http`, on by default) [`Server`], the HTTP/1.1 server built on it.
//!
//! On SIGHUP the running process starts a fresh copy of its own binary and hands it the
//! listening sockets (the baton). Once the copy reports that it is serving, the old process stops
//! accepting, moves its connections over (or finishes them) under a timer, and exits. The
//! sockets, and every connection waiting in their accept queues, are never closed, so no client
//! is refused.
//!
//! ```no_run
//! use std::time::Duration;
//! use baton::http_types::Response;
//!
//! fn main() -> std::io::Result<()> {
//!     let baton = baton::Baton::bind("127.0.0.1:8080")?.drain_timeout(Duration::from_secs(5));
//!     let report = smol::block_on(baton::Server::on(baton).serve(|_req| async {
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
//! A program gets each connection as a [`Stream`] (edge-triggered, `Send`, futures-io), each
//! UDP listener as [`Datagrams`], and the serving round's [`Drain`]: at the drain it moves a
//! connection to the successor ([`Drain::hand_over`], a proxy's pair with
//! [`Drain::hand_over_group`]) under a kind the successor's [`Program::resumed`] takes, or
//! closes it. Hooks (`on_spawn`, `on_ready`, `on_drain`, `on_exit`) run the application's code
//! at those turning points, on the core's thread. Code that was handed no [`Drain`] (an HTTP
//! handler) takes the process's with [`drain()`].
//!
//! With [`Baton::workers`] (the default as PID 1 or behind a container's init), the process
//! becomes a supervising process that keeps the PID and the sockets and serves through worker
//! processes, each running the program; a restart replaces every worker and then re-executes
//! the supervising process in place. [`reload`] restarts a server by its pid file and says
//! whether the new code serves.
//!
//! The successor learns about the sockets from the `LISTENER` environment variable,
//! `{"addr":"127.0.0.1:8080","fd":3,"filename":"tcp:127.0.0.1:8080->"}`, the format of the Go
//! original, so Go and Rust servers can hand over to each other (see
//! [`Baton::bind_inherited_or`] and [`Config::successor_ready_after`]). [`Baton::bind`] reads
//! it and takes it (and systemd's `LISTEN_*`) out of the process environment, so processes the
//! program starts never inherit it; call `bind` before starting threads, because the
//! environment can only be changed soundly while the process has one thread (otherwise the
//! variables stay and an event says so).
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
pub mod http;
#[cfg(feature = "hyper")]
pub mod hyper;
mod io;
mod json;
mod listener;
mod program;
mod reap;
mod reload;
mod report;
mod restart;
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

pub use baton::Baton;
pub use config::Config;
#[cfg(feature = "log")]
pub use event::log_event;
pub use event::{Event, Level};
#[cfg(feature = "http")]
pub use http::conn::{UpgradeReceiver, Upgraded, upgrade};
#[cfg(feature = "http")]
pub use http::{Server, lean, websocket};
pub use io::datagram::Datagrams;
pub use io::deadline::{Deadline, Deadlines};
pub use io::local::Local;
pub use io::stream::Stream;
pub use listener::ListenerInfo;
pub use program::{Connection, Program, Resumed};

/// The drain of this process's current serving round: [`Drain::wait`] completes when the
/// process starts draining (a restart handed over to a successor, or a shutdown signal),
/// [`Drain::is_draining`] says whether it has; on any thread and any executor. A handler (a
/// health check, a streaming response, a WebSocket) uses it to end cleanly or to move.
pub fn drain() -> Drain {
    drain::current()
}

pub use drain::{Busy, Drain, LongLived};
/// http-types, as baton uses it (without its default `fs` feature, which would pull in
/// async-std): `baton::http_types::Response` needs no dependency of the application's own.
#[cfg(feature = "http")]
pub use http_types;
pub use io::Address;
pub use listener::{LISTENER_ENV, Origin};
pub use reload::reload;
pub use report::{CutBy, Report, Stop};
pub use signals::Signal;

/// The README's Rust examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
