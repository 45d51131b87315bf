//! Polling a source without a syscall when nothing happened to it.
//!
//! The serving loop waits on several sources at once (signals, relays, the control channel,
//! the listeners), and every wake-up of its task polls all of them. async-io's sources try
//! their syscall first on each poll, so each accept also made a `recv` on the signal pipe, on
//! each relay and on the control channel, only to learn `EAGAIN`; and the first poll after a
//! delivered readiness event reports it again, so each accepted connection was followed by
//! two `accept4` calls returning `EAGAIN` instead of one. [`Readiness`] remembers that a
//! source said `EAGAIN` and asks the reactor (no syscall) until it reports the source ready
//! (relays, the control channel, and listeners the connections' epoll cannot watch, see
//! `edge`); [`Gate`] does the same for a source whose syscall is hidden (async-signal's
//! stream), by polling it only once its own waker fired.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Whether a non-blocking source may have something: true until an attempt says
/// `WouldBlock`, then false until the reactor reports it readable. (An atomic, so that a
/// relay can be shared with other threads; only one task receives on a source at a time.)
#[derive(Debug)]
pub(crate) struct Readiness(AtomicBool);

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness(AtomicBool::new(true))
    }
}

impl Readiness {
    /// Runs `attempt` if the source may be ready; on `WouldBlock`, waits with `readable`
    /// (async-io's `poll_readable` of the same source) and tries again once it fires.
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut readable: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
        mut attempt: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            if !self.0.load(Ordering::Relaxed) {
                match readable(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => self.0.store(true, Ordering::Relaxed),
                }
            }
            match attempt() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.0.store(false, Ordering::Relaxed)
                }
                other => return Poll::Ready(other),
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
        {
            let mut task = self.0.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
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

    #[test]
    fn readiness_tries_again_only_once_readable() {
        let readiness = Readiness::default();
        let tries = Cell::new(0);
        let readable = Cell::new(false);
        let cx = &mut Context::from_waker(Waker::noop());
        let mut poll = || {
            readiness.poll(
                cx,
                |_| match readable.replace(false) {
                    true => Poll::Ready(Ok(())),
                    false => Poll::Pending,
                },
                || {
                    tries.set(tries.get() + 1);
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                },
            )
        };
        assert!(poll().is_pending());
        assert!(poll().is_pending());
        assert_eq!(tries.get(), 1, "after WouldBlock no attempt until readable");
        readable.set(true);
        assert!(poll().is_pending());
        assert_eq!(tries.get(), 2);
    }
}
