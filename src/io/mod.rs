//! The I/O layer under both the core and the HTTP server: what makes readiness and timeouts
//! cheap on Linux. Nothing here knows about restarts or HTTP.
//!
//! | module | owns |
//! |---|---|
//! | [`edge`] | plain TCP connections (and listeners) in an edge-triggered epoll of their own, registered once |
//! | [`deadline`] | idle connections' coarse deadlines in one heap per server thread, one sweeper |
//! | [`ready`] | no syscall on a source that said `EAGAIN` until the reactor reports it |
//!
//! `edge` is Linux's epoll; the crate builds on Linux only (see `lib.rs`).

pub(crate) mod deadline;
pub(crate) mod edge;
pub(crate) mod ready;
