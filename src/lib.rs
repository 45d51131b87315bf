//! Zero-downtime restarts for HTTP/1.1 servers on smol.
//!
//! On SIGHUP the running process starts a fresh copy of its own binary and hands it the
//! listening socket (the baton). Once the copy reports that it is serving, the old process stops
//! accepting, finishes its in-flight requests under a timer, and exits. The socket, and every
//! connection waiting in its accept queue, is never closed, so no client is refused.
//!
//! ```no_run
//! use std::time::Duration;
//! use http_types::Response;
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
//! | SIGUSR2 | start a successor and keep serving beside it |
//! | SIGINT, SIGQUIT, SIGTERM | drain and return; a second one returns at once |
//!
//! The successor learns about the socket from the `LISTENER` environment variable,
//! `{"addr":"127.0.0.1:8080","fd":3,"filename":"tcp:127.0.0.1:8080->"}`, the format of the Go
//! original, so Go and Rust servers can hand over to each other.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

#[cfg(not(unix))]
compile_error!(
    "baton hands sockets between processes with Unix fd semantics; it builds on Unix only"
);

mod codec;
mod conn;
mod drain;
mod event;
#[cfg(feature = "async-h1")]
mod h1;
mod handoff;
mod listener;
mod server;
mod signals;

pub use event::Event;
pub use listener::LISTENER_ENV;
pub use server::{Report, Server, Stop};
