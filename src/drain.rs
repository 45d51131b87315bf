//! Draining: which connections are open, which are answering a request, and whether the
//! process has stopped taking new work.
//!
//! One [`Drain`] is shared by the server loop and every connection task on the one executor
//! thread, so plain `Cell`s suffice. Connections hold a [`ConnectionGuard`] for their whole
//! life and a [`RequestGuard`] from the moment a request head is read until its response is
//! written.
//!
//! The drain notice the application sees ([`DrainNotice`], `baton::draining()`) is the
//! process's, not a thread's: a task on any thread or executor (smol's global executor, a
//! thread of its own, another runtime) learns of the drain as the server's thread does.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use smol::channel::{self, Receiver, Sender};

/// Whether this process is draining (see [`DrainNotice::is_draining`]).
static DRAINING: AtomicBool = AtomicBool::new(false);
/// Closed when this process starts draining; replaced if it serves again. Made on first use.
static NOTICE: Mutex<Option<(Sender<()>, Receiver<()>)>> = Mutex::new(None);

/// The current notice channel's receiver (made on first use).
fn receiver() -> Receiver<()> {
    let mut notice = NOTICE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    notice.get_or_insert_with(|| channel::bounded(1)).1.clone()
}

/// Serving again after a drain was given up (the successor died during it).
pub(crate) fn resume() {
    let mut notice = NOTICE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *notice = Some(channel::bounded(1));
    DRAINING.store(false, Ordering::SeqCst);
}

/// Tells every [`DrainNotice`] that this process drains.
fn announce() {
    let mut notice = NOTICE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    DRAINING.store(true, Ordering::SeqCst);
    notice.get_or_insert_with(|| channel::bounded(1)).0.close();
}

/// The drain notice: cheap to clone, `Send + Sync`, usable from any thread and any executor.
/// Take one with [`crate::drain_notice`]; [`DrainNotice::wait`] completes once this process
/// starts draining (at once if it already is), [`DrainNotice::is_draining`] says whether it
/// has. A streaming response or a long-lived connection ends (or moves) when it fires.
///
/// A notice taken before a drain that was given up (the successor died during it, and this
/// process serves again) has fired; take a new one to wait for the next drain.
#[derive(Debug, Clone)]
pub struct DrainNotice {
    receiver: Receiver<()>,
}

impl DrainNotice {
    pub(crate) fn new() -> DrainNotice {
        DrainNotice {
            receiver: receiver(),
        }
    }

    /// `true` once this process has started draining (a restart handed over to a successor,
    /// or a shutdown signal), and until it serves again.
    pub fn is_draining(&self) -> bool {
        DRAINING.load(Ordering::SeqCst)
    }

    /// Completes when this process starts draining. The future is `Send + Sync + 'static`:
    /// await it on any thread.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + Sync + use<> {
        let receiver = self.receiver.clone();
        async move {
            // Never carries a message: recv returns when the sender is closed.
            let _ = receiver.recv().await;
        }
    }
}

/// `true` once this process has started draining.
pub(crate) fn is_draining() -> bool {
    DRAINING.load(Ordering::SeqCst)
}

#[derive(Debug)]
pub(crate) struct Drain {
    draining: Cell<bool>,
    /// The drain ends the service (a shutdown), rather than hand over to a successor.
    shutdown: Cell<bool>,
    connections: Cell<usize>,
    requests: Cell<usize>,
    /// Connections upgraded (101) and still open.
    upgraded: Cell<usize>,
    /// Closed when draining starts; every waiter wakes.
    started: (Sender<()>, Receiver<()>),
    /// Closed when the drain gives up on what is left (timeout, second signal).
    cut: (Sender<()>, Receiver<()>),
    /// Gets a message when a connection or a request ends (at most one waits unread: waiters
    /// recheck; one waiter at a time, `requests_done` then `finished`, each drain).
    ended: (Sender<()>, Receiver<()>),
    /// Where idle connections go instead of being closed, while the successor takes them.
    relay: std::cell::RefCell<Option<Rc<crate::handoff::relay::Relay>>>,
    /// Where the connections' events go (a handler's error answered 5xx).
    events: Events,
}

/// The server's event sink, as the connections see it.
#[derive(Clone)]
pub(crate) struct Events(pub(crate) Rc<dyn Fn(&crate::Event<'_>)>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Drain {
    pub(crate) fn new(events: Events) -> Rc<Drain> {
        Rc::new(Drain {
            events,
            draining: Cell::new(false),
            shutdown: Cell::new(false),
            connections: Cell::new(0),
            requests: Cell::new(0),
            upgraded: Cell::new(0),
            started: channel::bounded(1),
            cut: channel::bounded(1),
            ended: channel::bounded(1),
            relay: std::cell::RefCell::new(None),
        })
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Reports `event` (from a connection) to the server's sink.
    pub(crate) fn report(&self, event: &crate::Event<'_>) {
        (self.events.0)(event);
    }

    /// Draining for a shutdown (not a restart).
    pub(crate) fn is_shutdown(&self) -> bool {
        self.shutdown.get()
    }

    /// Open connections.
    pub(crate) fn connections(&self) -> usize {
        self.connections.get()
    }

    /// Requests between head read and response written.
    pub(crate) fn requests(&self) -> usize {
        self.requests.get()
    }

    pub(crate) fn upgraded_open(&self) -> usize {
        self.upgraded.get()
    }

    /// Counts an upgraded connection (beside its connection guard) until the guard drops.
    pub(crate) fn upgraded(self: &Rc<Self>) -> UpgradedGuard {
        self.upgraded.set(self.upgraded.get() + 1);
        UpgradedGuard(self.clone())
    }

    /// Marks the process as draining (for a `shutdown`, or a restart): connections answer
    /// with `Connection: close` from now on and idle ones close after their grace.
    pub(crate) fn start(&self, shutdown: bool) {
        self.shutdown.set(shutdown);
        self.draining.set(true);
        announce();
        self.started.0.close();
    }

    /// Hand idle connections to `relay` during this drain (set before [`Drain::start`]).
    pub(crate) fn set_relay(&self, relay: Rc<crate::handoff::relay::Relay>) {
        *self.relay.borrow_mut() = Some(relay);
    }

    /// The relay to hand connections to, while it works.
    pub(crate) fn relay(&self) -> Option<Rc<crate::handoff::relay::Relay>> {
        self.relay.borrow().clone()
    }

    /// The relay failed (the successor stopped reading it): back to closing connections.
    pub(crate) fn relay_failed(&self) {
        *self.relay.borrow_mut() = None;
    }

    /// The drain gives up on what is left: requests still waiting for their handler are
    /// answered 503, responses still being written are reset (see `conn`).
    pub(crate) fn cut(&self) {
        self.cut.0.close();
    }

    /// Resolves once [`Drain::cut`] was called.
    pub(crate) async fn cut_off(&self) {
        let _ = self.cut.1.recv().await;
    }

    /// Resolves once draining has started.
    pub(crate) async fn started(&self) {
        // The channel never carries a message: recv returns only when it is closed.
        let _ = self.started.1.recv().await;
    }

    /// Resolves when no connection is left. Call after [`Drain::start`].
    pub(crate) async fn finished(&self) {
        self.below(1).await;
    }

    /// Resolves once fewer than `limit` connections are open.
    pub(crate) async fn below(&self, limit: usize) {
        while self.connections.get() >= limit {
            let _ = self.ended.1.recv().await;
        }
    }

    /// Resolves when no request is in flight. Call after [`Drain::start`].
    pub(crate) async fn requests_done(&self) {
        while self.requests.get() > 0 {
            let _ = self.ended.1.recv().await;
        }
    }

    pub(crate) fn connection(self: &Rc<Self>) -> ConnectionGuard {
        self.connections.set(self.connections.get() + 1);
        ConnectionGuard(self.clone())
    }

    pub(crate) fn request(self: &Rc<Self>) -> RequestGuard {
        self.requests.set(self.requests.get() + 1);
        RequestGuard(self.clone())
    }
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(Rc<Drain>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let drain = &self.0;
        drain.connections.set(drain.connections.get() - 1);
        let _ = drain.ended.0.try_send(());
    }
}

/// Counts one upgraded connection until dropped.
#[derive(Debug)]
pub(crate) struct UpgradedGuard(Rc<Drain>);

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.0.upgraded.set(self.0.upgraded.get() - 1);
    }
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub(crate) struct RequestGuard(Rc<Drain>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests.set(self.0.requests.get() - 1);
        // Only a drain waits for requests to end (`requests_done`): serving, this would be a
        // channel send per request, and a spurious wake of an accept loop at its limit.
        if self.0.draining.get() {
            let _ = self.0.ended.0.try_send(());
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
            let drain = Drain::new(Events(Rc::new(|_| {})));
            let a = drain.connection();
            let b = drain.connection();
            let request = drain.request();
            assert_eq!((drain.connections(), drain.requests()), (2, 1));
            drain.start(false);
            drain.started().await;
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
