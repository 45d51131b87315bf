//! Polling a source without a syscall when nothing happened to it.
//!
//! The serving loop waits on several sources at once (signals, relays, the control channel,
//! the listeners), and every wake-up of its task polls all of them. async-io's sources try
//! their syscall first on each poll, so each accept also made a `recv` on the signal pipe, on
//! each relay and on the control channel, only to learn `EAGAIN`; and the first poll after a
//! delivered readiness event reports it again, so each accepted connection was followed by
//! two `accept4` calls returning `EAGAIN` instead of one. [`Readiness`] remembers that a
//! source said `EAGAIN` and makes no syscall until the source's registration with the reactor
//! wakes (relays, the control channel, and listeners the connections' epoll cannot watch, see
//! `edge`); [`Gate`] does the same for a source whose syscall is hidden (async-signal's
//! stream), by polling it only once its own waker fired.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Whether a non-blocking source may have something: true until an attempt says
/// `WouldBlock`, then false until the source's registration with the reactor fires. (Atomics,
/// so that a relay can be shared with other threads; only one task receives on a source at a
/// time.)
///
/// The reactor is asked with a waker of the source's own, and any wake-up of it leads to an
/// attempt; `poll_readable`'s answer alone is not trusted. async-io counts an event delivered
/// in the reactor round during which the waker was registered as stale: registered from the
/// serving thread while async-io's own thread waits in that round, a message that arrives then
/// wakes the waker but `poll_readable` goes on saying `Pending`, and every new registration
/// made during the next round repeats it. A relay's connections then waited, unread, until
/// some unrelated wake-up fell between two rounds: up to tens of milliseconds under load, or
/// until the next restart forwarded the relay (seen as 20-60 ms stalls of the moved
/// connections in one to three restarts of ten, under 64 keep-alive clients).
#[derive(Debug)]
pub(crate) struct Readiness {
    ready: AtomicBool,
    /// The source's own waker: `woken` once the reactor woke it, `task` the waker of the task
    /// that polls the source.
    source: Arc<Woken>,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness {
            ready: AtomicBool::new(true),
            source: Arc::default(),
        }
    }
}

impl Readiness {
    /// Runs `attempt` if the source may be ready; on `WouldBlock`, registers with `readable`
    /// (async-io's `poll_readable` of the same source) and tries again once that registration
    /// wakes (or `readable` says ready).
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut readable: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
        mut attempt: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        if !self.ready.load(Ordering::Relaxed) {
            self.source.set_task(cx.waker());
            // (After storing the task's waker: a wake-up between the two is not lost.)
            if !self.source.woken.swap(false, Ordering::SeqCst) {
                // Registered, and not woken since: nothing to try.
                return Poll::Pending;
            }
            self.ready.store(true, Ordering::Relaxed);
        }
        loop {
            match attempt() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
            self.ready.store(false, Ordering::Relaxed);
            self.source.set_task(cx.waker());
            self.source.woken.store(false, Ordering::SeqCst);
            let waker = Waker::from(self.source.clone());
            match readable(&mut Context::from_waker(&waker)) {
                // Registered: the source's waker says when to try again.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => self.ready.store(true, Ordering::Relaxed),
            }
        }
    }
}

/// Polls an inner future or stream only after its own waker fired (and on the first poll):
/// the other wake-ups of the task that polls it cost nothing.
#[derive(Debug, Default)]
pub(crate) struct Gate(Arc<Woken>);

#[derive(Debug)]
struct Woken {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Default for Woken {
    fn default() -> Woken {
        Woken {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }
}

impl Woken {
    /// `waker` is the one to wake when this fires (kept if it would wake the same task).
    fn set_task(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl Gate {
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        inner: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.0.set_task(cx.waker());
        // After storing the task's waker: a wake-up between the two is not lost.
        if !self.0.woken.swap(false, Ordering::SeqCst) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.0.clone());
        let polled = inner(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            // It may have more: poll it again next time without waiting for a wake-up.
            self.0.woken.store(true, Ordering::SeqCst);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;

    /// A future that counts its polls and is ready on the third.
    struct Counted<'a>(&'a AtomicUsize, Option<Waker>);

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 2 {
                return Poll::Ready(());
            }
            self.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_gate_polls_only_after_its_own_wake_up() {
        let polls = AtomicUsize::new(0);
        let gate = Gate::default();
        let mut inner = pin!(Counted(&polls, None));
        let task = Waker::noop();
        let cx = &mut Context::from_waker(task);
        assert!(gate.poll(cx, |cx| inner.as_mut().poll(cx)).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll goes through"
        );
        for _ in 0..5 {
            assert!(gate.poll(cx, |cx| inner.as_mut().poll(cx)).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: not polled");
        inner.1.take().expect("a waker").wake();
        assert!(gate.poll(cx, |cx| inner.as_mut().poll(cx)).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2, "woken: polled once");
        inner.1.take().expect("a waker").wake();
        assert!(gate.poll(cx, |cx| inner.as_mut().poll(cx)).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    /// A source as async-io shows it: `poll_readable` keeps the waker it is given, and the
    /// reactor wakes it on an event, whether or not `poll_readable` then says ready (an event
    /// in the round the waker was registered in counts as stale there).
    #[derive(Default)]
    struct Source {
        registered: std::cell::RefCell<Option<Waker>>,
        says_ready: Cell<bool>,
        tries: Cell<usize>,
        has_message: Cell<bool>,
    }

    impl Source {
        fn poll(&self, readiness: &Readiness, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            readiness.poll(
                cx,
                |cx| {
                    *self.registered.borrow_mut() = Some(cx.waker().clone());
                    match self.says_ready.replace(false) {
                        true => Poll::Ready(Ok(())),
                        false => Poll::Pending,
                    }
                },
                || {
                    self.tries.set(self.tries.get() + 1);
                    match self.has_message.replace(false) {
                        true => Ok(()),
                        false => Err(io::ErrorKind::WouldBlock.into()),
                    }
                },
            )
        }

        /// The reactor delivers an event: the registered waker is woken (and dropped).
        fn fire(&self) {
            self.registered
                .borrow_mut()
                .take()
                .expect("registered")
                .wake();
        }
    }

    /// The task's waker, counting its wake-ups.
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn readiness_tries_again_only_once_the_source_fires() {
        let (readiness, source) = (Readiness::default(), Source::default());
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let cx = &mut Context::from_waker(&waker);
        assert!(source.poll(&readiness, cx).is_pending());
        assert!(source.poll(&readiness, cx).is_pending());
        assert_eq!(
            source.tries.get(),
            1,
            "after WouldBlock no attempt until it fires"
        );
        source.has_message.set(true);
        source.fire();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert!(source.poll(&readiness, cx).is_ready());
        assert_eq!(source.tries.get(), 2);
    }

    /// The class of the hand-over stalls: the reactor wakes the registration, but asked again
    /// `poll_readable` says `Pending` (a stale tick to async-io). The message is taken anyway.
    #[test]
    fn readiness_tries_when_the_source_fires_even_if_poll_readable_says_pending() {
        let (readiness, source) = (Readiness::default(), Source::default());
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(source.poll(&readiness, cx).is_pending());
        source.has_message.set(true);
        source.fire();
        assert!(
            source.poll(&readiness, cx).is_ready(),
            "woken, the message is taken without poll_readable's Ready"
        );
        // Empty again: one attempt, then registered again.
        assert!(source.poll(&readiness, cx).is_pending());
        assert_eq!(source.tries.get(), 3);
        assert!(source.registered.borrow().is_some(), "registered again");
    }

    /// `poll_readable` saying ready at registration (an event of a newer round) is tried at
    /// once.
    #[test]
    fn readiness_tries_again_when_poll_readable_says_ready() {
        let (readiness, source) = (Readiness::default(), Source::default());
        let cx = &mut Context::from_waker(Waker::noop());
        source.says_ready.set(true);
        assert!(source.poll(&readiness, cx).is_pending());
        assert_eq!(
            source.tries.get(),
            2,
            "tried again after the ready registration"
        );
    }
}
