//! The I/O layer under both the core and the HTTP server: what makes readiness and timeouts
//! cheap on Linux. Nothing here knows about restarts or HTTP.
//!
//! | module | owns |
//! |---|---|
//! | [`driver`] | a serving thread that runs the core and a [`local::Local`], and waits on `edge` itself when idle |
//! | [`local`] | [`local::Local`], the serving thread's tasks in one queue it runs between looks at `edge` |
//! | [`edge`] | plain TCP connections (and listeners) in an edge-triggered epoll of their own, registered once |
//! | [`deadline`] | `Deadline`: idle connections' coarse deadlines in one heap per serving thread, one sweeper (`Deadlines`) |
//! | [`ready`] | no syscall on a source that said `EAGAIN` until the reactor reports it |
//! | [`datagram`] | [`datagram::Datagrams`], a UDP listener as a program gets it, on `edge` |
//! | [`stream`] | [`stream::Stream`], the public connection: a socket on `edge`, the bytes a predecessor held first, its count for the drain |
//!
//! `edge` is Linux's epoll; the crate builds on Linux only (see `lib.rs`).

pub(crate) mod datagram;
pub(crate) mod deadline;
pub(crate) mod driver;
pub(crate) mod edge;
pub(crate) mod local;
pub(crate) mod ready;
pub(crate) mod stream;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a socket is: a listener's address, or either end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A UDP socket address (a `udp:host:port` listener's).
    Udp(SocketAddr),
    /// A Unix socket's path (empty for an unnamed socket, as a connecting client's usually
    /// is; abstract names start with `@`).
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Udp(addr) => write!(f, "udp:{addr}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}
