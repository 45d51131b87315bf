//! Draining: which connections are open, which are answering a request, and whether the
//! process has stopped taking new work.
//!
//! One [`Drain`] per serving round is shared by the core's loop, every connection of the
//! program and every handler, on any thread: atomics and channels. Streams count their
//! connection for their whole life; a [`Busy`] guard marks a request from the moment its head
//! is read until its response is written.
//!
//! The drain is the process's, not a thread's: `baton::drain()` gives the current round's
//! handle to code that was not handed one (an HTTP handler), and a task on any thread or
//! executor (smol's global executor, a thread of its own, another runtime) learns of the
//! drain as the core's thread does.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use smol::channel::{self, Receiver, Sender};

use std::os::fd::AsFd as _;

use crate::io::stream::Stream;

/// The serving round under way (or the next one, before serving starts).
static CURRENT: Mutex<Option<Drain>> = Mutex::new(None);

fn lock_current() -> std::sync::MutexGuard<'static, Option<Drain>> {
    CURRENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's current serving round's drain (made on first use: the round serving starts
/// with).
pub(crate) fn current() -> Drain {
    lock_current().get_or_insert_with(Drain::new).clone()
}

/// A new serving round, after a drain was given up (the successor died during it): handles
/// taken from now on are this round's.
pub(crate) fn next_round() -> Drain {
    let fresh = Drain::new();
    *lock_current() = Some(fresh.clone());
    fresh
}

/// The drain of one serving round: the handle the core gives a program with each connection
/// ([`crate::Connection::drain`], [`crate::Resumed::drain`]), and `baton::drain()` to any
/// other code. `Clone + Send + Sync`: use it, and await it, from any thread and executor.
///
/// - [`Drain::wait`] / [`Drain::is_draining`]: the drain has started (a restart handed over
///   to a successor, or a shutdown); stop taking new work on a connection, and hand it over
///   ([`Drain::hand_over`]) or close it. A streaming response ends, a WebSocket says 1012.
/// - [`Drain::busy`] marks a request in flight: the application's state goes to the
///   successor once none is (see `Config::state_wait`), and a drain cut short counts them.
/// - [`Drain::long_lived`] marks a long-lived connection (a WebSocket), which the report
///   counts apart.
/// - [`Drain::cut`]: the drain gave up (its timeout, a second signal): end what is left now.
///
/// A handle of a round whose drain was given up (the successor died during it, and the
/// process serves again) stays drained; take `baton::drain()` again for the new round.
#[derive(Debug, Clone)]
pub struct Drain(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    draining: AtomicBool,
    /// The drain ends the service (a shutdown), rather than hand over to a successor.
    shutdown: AtomicBool,
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Connections upgraded (101) or otherwise long-lived, and still open.
    upgraded: AtomicUsize,
    /// Connections lost: closed without being served or moved.
    lost: AtomicUsize,
    /// The most held bytes a connection may move with (`Config::max_held_bytes`).
    max_held: AtomicUsize,
    /// Closed when draining starts; every waiter wakes.
    started: (Sender<()>, Receiver<()>),
    /// Closed when the drain gives up on what is left (timeout, second signal).
    cut: (Sender<()>, Receiver<()>),
    /// Gets a message when a connection or a request ends (at most one waits unread: waiters
    /// recheck; one waiter at a time, `requests_done` then `finished`, each drain).
    ended: (Sender<()>, Receiver<()>),
    /// Where connections go instead of being closed, while the successor takes them.
    relay: Mutex<Option<Arc<crate::handoff::relay::Relay>>>,
}

impl Drain {
    pub(crate) fn new() -> Drain {
        Drain(Arc::new(Shared {
            draining: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            max_held: AtomicUsize::new(crate::config::DEFAULT_MAX_HELD),
            started: channel::bounded(1),
            cut: channel::bounded(1),
            ended: channel::bounded(1),
            relay: Mutex::new(None),
        }))
    }

    /// `true` once this serving round drains (a restart handed over to a successor, or a
    /// shutdown signal).
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    /// Draining for a shutdown (the service ends), not a restart.
    pub fn is_shutdown(&self) -> bool {
        self.0.shutdown.load(Ordering::SeqCst)
    }

    /// Open connections (work guards alive).
    pub fn connections(&self) -> usize {
        self.0.connections.load(Ordering::SeqCst)
    }

    /// Requests in flight (busy guards alive).
    pub fn requests(&self) -> usize {
        self.0.requests.load(Ordering::SeqCst)
    }

    /// Long-lived connections still open.
    pub fn upgraded_open(&self) -> usize {
        self.0.upgraded.load(Ordering::SeqCst)
    }

    /// Counts a connection (or a unit of the program's work) until the guard drops.
    pub(crate) fn work(&self) -> Work {
        self.0.connections.fetch_add(1, Ordering::SeqCst);
        Work(self.clone())
    }

    /// Marks a request in flight until the guard drops.
    pub fn busy(&self) -> Busy {
        self.0.requests.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Counts a long-lived connection (a WebSocket, say) until the guard drops, beside its
    /// work guard: a drain's cut reports these apart from cut requests.
    pub fn long_lived(&self) -> LongLived {
        self.0.upgraded.fetch_add(1, Ordering::SeqCst);
        LongLived(self.clone())
    }

    /// Completes once this serving round has started draining (at once if it has). The
    /// future is `Send + Sync + 'static`: await it on any thread.
    /// Polling it again is an atomic load while the task's waker stays the same (a
    /// connection's task may poll it beside every read).
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + Sync + use<> {
        let shared = self.0.clone();
        async move {
            let started = shared.started.1.clone();
            // The channel never carries a message: recv returns only when it is closed,
            // after `draining` is set.
            let mut closed = std::pin::pin!(started.recv());
            let mut registered: Option<std::task::Waker> = None;
            std::future::poll_fn(|cx| {
                if shared.draining.load(Ordering::SeqCst) {
                    return std::task::Poll::Ready(());
                }
                if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    return std::task::Poll::Pending;
                }
                registered = Some(cx.waker().clone());
                closed.as_mut().poll(cx).map(|_| ())
            })
            .await
        }
    }

    /// Resolves once the drain has given up on what is left (its timeout, a second shutdown
    /// signal): answer what can be answered at once (a 503), and close.
    pub async fn cut(&self) {
        let _ = self.0.cut.1.recv().await;
    }

    /// Whether a connection can move to the successor now: draining after a restart with
    /// connection hand-over, and the relay still works.
    pub fn can_hand_over(&self) -> bool {
        self.relay().is_some()
    }

    /// Moves `stream` to the successor, under `kind` (the successor's program resumes it:
    /// [`crate::Program::resumed`]), with `state` and the bytes `held` read from it and not
    /// yet used (after any the stream itself still holds). On success the
    /// successor owns the connection: this copy neither reads nor writes any more, and
    /// dropping it leaves the connection open. An error (no successor to hand it to, the
    /// relay failed or stalled for a second, or more held bytes than
    /// [`crate::Config::max_held_bytes`]) leaves it here, whole; finish it or close it as
    /// the protocol says.
    pub async fn hand_over(
        &self,
        stream: &Stream,
        kind: &str,
        state: &serde_json::Value,
        held: &[u8],
    ) -> io::Result<()> {
        self.hand_over_group(&[(stream, held)], kind, state).await
    }

    /// Moves several streams to the successor as one (a proxy's client and upstream, say):
    /// they arrive together as one [`crate::Resumed`] under `kind`, with one `state`, each
    /// with its held bytes; or, on an error, all stay here. At most 8 streams.
    pub async fn hand_over_group(
        &self,
        streams: &[(&Stream, &[u8])],
        kind: &str,
        state: &serde_json::Value,
    ) -> io::Result<()> {
        let Some(relay) = self.relay() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no successor to hand it to: not draining after a restart with connection \
                 hand-over",
            ));
        };
        // What each stream still holds from a predecessor goes first.
        let own: Vec<Vec<u8>> = streams.iter().map(|(s, _)| s.take_held()).collect();
        // (Copied together only where a stream still held some of its own.)
        let all: Vec<std::borrow::Cow<'_, [u8]>> = own
            .iter()
            .zip(streams)
            .map(|(own, (_, held))| match own.is_empty() {
                true => std::borrow::Cow::Borrowed(*held),
                false => std::borrow::Cow::Owned([&own[..], held].concat()),
            })
            .collect();
        let sockets: Vec<(std::os::fd::BorrowedFd<'_>, &[u8])> = streams
            .iter()
            .zip(&all)
            .map(|((stream, _), held)| (stream.as_fd(), &held[..]))
            .collect();
        for (stream, _) in streams {
            stream.sharing();
        }
        let max_held = self.0.max_held.load(Ordering::Relaxed);
        let state = crate::json::text(state);
        let sent = relay
            .send(crate::handoff::relay::Message::Connection {
                sockets: &sockets,
                kind,
                state: &state,
                max_held,
            })
            .await;
        match &sent {
            Ok(()) => {
                for (stream, _) in streams {
                    stream.set_moved();
                }
            }
            Err(error) => {
                for ((stream, _), own) in streams.iter().zip(own) {
                    stream.put_back_held(own);
                }
                // A relay that failed once is not tried again: the rest close as usual.
                if error.kind() != io::ErrorKind::InvalidInput {
                    self.relay_failed();
                }
            }
        }
        sent
    }

    /// Counts a connection this process lost: closed without being served or moved (a kind
    /// the program does not take). The report is then not clean.
    ///
    /// Closes nothing itself: the caller drops the connection. `kind` and `peer`, as far as
    /// they are known, and `why` go to `emit` as [`crate::Event::ResumeFailed`].
    pub(crate) fn lose(
        &self,
        emit: &dyn Fn(&crate::Event<'_>),
        kind: &str,
        peer: Option<&crate::Address>,
        why: &str,
    ) {
        self.0.lost.fetch_add(1, Ordering::SeqCst);
        emit(&crate::Event::ResumeFailed { kind, peer, why });
    }

    /// Connections this serving round lost (see [`Drain::lose`]).
    pub(crate) fn lost_count(&self) -> usize {
        self.0.lost.load(Ordering::SeqCst)
    }

    /// Marks the process as draining (for a `shutdown`, or a restart): connections answer
    /// with `Connection: close` from now on and idle ones close after their grace.
    pub(crate) fn start(&self, shutdown: bool) {
        self.0.shutdown.store(shutdown, Ordering::SeqCst);
        self.0.draining.store(true, Ordering::SeqCst);
        self.0.started.0.close();
    }

    /// Hand connections to `relay` during this drain (set before [`Drain::start`]), each
    /// with at most `max_held` held bytes.
    pub(crate) fn set_relay(&self, relay: Arc<crate::handoff::relay::Relay>, max_held: usize) {
        self.0.max_held.store(max_held, Ordering::Relaxed);
        *self.0.relay.lock().unwrap_or_else(|e| e.into_inner()) = Some(relay);
    }

    /// The relay to hand connections to, while it works.
    pub(crate) fn relay(&self) -> Option<Arc<crate::handoff::relay::Relay>> {
        self.0
            .relay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The relay failed (the successor stopped reading it): back to closing connections.
    pub(crate) fn relay_failed(&self) {
        *self.0.relay.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The drain gives up on what is left: requests still waiting for their handler are
    /// answered 503, responses still being written are reset (see `conn`).
    pub(crate) fn give_up(&self) {
        self.0.cut.0.close();
    }

    /// Resolves when no connection is left. Call after [`Drain::start`].
    pub(crate) async fn finished(&self) {
        self.below(1).await;
    }

    /// Resolves once fewer than `limit` connections are open.
    pub(crate) async fn below(&self, limit: usize) {
        while self.connections() >= limit {
            let _ = self.0.ended.1.recv().await;
        }
    }

    /// Resolves when no request is in flight. Call after [`Drain::start`].
    pub(crate) async fn requests_done(&self) {
        while self.requests() > 0 {
            let _ = self.0.ended.1.recv().await;
        }
    }
}

/// Counts one connection (or unit of work) for the drain until dropped.
#[derive(Debug)]
pub(crate) struct Work(Drain);

impl Drop for Work {
    fn drop(&mut self) {
        let shared = &(self.0).0;
        shared.connections.fetch_sub(1, Ordering::SeqCst);
        let _ = shared.ended.0.try_send(());
    }
}

/// Counts one long-lived connection until dropped.
#[derive(Debug)]
pub struct LongLived(Drain);

impl Drop for LongLived {
    fn drop(&mut self) {
        (self.0).0.upgraded.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct Busy(Drain);

impl Drop for Busy {
    fn drop(&mut self) {
        let shared = &(self.0).0;
        shared.requests.fetch_sub(1, Ordering::SeqCst);
        // Only a drain waits for requests to end (`requests_done`): serving, this would be a
        // channel send per request, and a spurious wake of an accept loop at its limit.
        if shared.draining.load(Ordering::SeqCst) {
            let _ = shared.ended.0.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::future::FutureExt as _;

    #[test]
    fn finishes_when_the_last_connection_ends() {
        smol::block_on(async {
            let drain = Drain::new();
            let a = drain.work();
            let b = drain.work();
            let request = drain.busy();
            assert_eq!((drain.connections(), drain.requests()), (2, 1));
            drain.start(false);
            drain.wait().await;
            drop(request);
            drop(a);
            let done = async {
                drain.finished().await;
                true
            };
            let not_yet = done.or(async {
                smol::future::yield_now().await;
                false
            });
            assert!(!not_yet.await, "finished while a connection was open");
            drop(b);
            drain.finished().await;
            assert_eq!((drain.connections(), drain.requests()), (0, 0));
        });
    }
}
