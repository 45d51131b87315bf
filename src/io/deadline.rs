//! Coarse deadlines for idle connections: the keep-alive timeout and the first head's.
//!
//! An async-io timer costs a write to the reactor's eventfd each time one is armed (to wake
//! the reactor and recompute its timeout), and the next wait of the reactor then returns at
//! once to read it back: with a connection per request, most connections armed one for the
//! wait before their first request. These deadlines are entries in one heap per server
//! thread instead, and one sweeper task sleeps until the earliest of them, sweeping at most
//! once a [`GRAIN`]: arming one is a heap push, no syscall; a deadline fires up to [`GRAIN`]
//! late, which is nothing next to timeouts counted in seconds.
//!
//! Without a sweeper on the thread (unit tests, a server not started by baton's loop) a
//! deadline is an ordinary async-io timer.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_io::Timer;

pub(crate) use crate::config::timing::DEADLINE_GRAIN as GRAIN;

thread_local! {
    static SHARED: RefCell<Option<Rc<Deadlines>>> = const { RefCell::new(None) };
}

/// The deadlines of one serving thread: install its sweeper
/// ([`Deadlines::install`]) as a task on the thread's executor (the one given to
/// [`crate::Baton::serve_local`]), and every [`Deadline`] made on that thread is an entry in
/// one heap, checked at most once a 50 ms grain, instead of an async-io timer. The HTTP server
/// does this for its keep-alive and first-head timeouts.
#[derive(Default)]
pub struct Deadlines {
    /// (when, slot, generation). An entry of a dropped or re-armed deadline is stale: it stays
    /// until due, or until stale entries outnumber live ones (see [`Deadlines::compact`]).
    heap: RefCell<BinaryHeap<Reverse<(Instant, u32, u32)>>>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// The sweeper, parked while nothing waits or until its timer fires.
    sweeper: RefCell<Option<Waker>>,
    live: Cell<usize>,
    /// When the sweeper's timer fires next (`None`: it is not set).
    target: Cell<Option<Instant>>,
    /// A deadline earlier than `target` was armed: the sweeper sets its timer again.
    replan: Cell<bool>,
    /// Times the sweeper's timer fired.
    sweeps: Cell<u64>,
    /// The sweeper is gone (its server ended): deadlines armed here become ordinary timers.
    closed: Cell<bool>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    armed: bool,
    waker: Option<Waker>,
}

impl Deadlines {
    /// Makes deadlines on this thread coarse; returns the sweeper to run as a task on it.
    /// Dropping the sweeper (with its executor) makes them ordinary timers again.
    pub fn install() -> impl Future<Output = ()> {
        let shared = Rc::new(Deadlines::default());
        SHARED.with(|s| *s.borrow_mut() = Some(shared.clone()));
        let installed = Installed(shared.clone());
        async move {
            let _installed = installed;
            shared.sweep().await
        }
    }

    /// Sleeps until the earliest deadline (at most once a [`GRAIN`]), wakes what is due,
    /// and parks while nothing waits: an idle server with open connections wakes only when
    /// one of them is due.
    async fn sweep(self: Rc<Self>) {
        let mut timer = Timer::never();
        let mut last: Option<Instant> = None;
        loop {
            // The earliest entry (perhaps one released since: then this wakes for nothing).
            let earliest = std::future::poll_fn(|cx| {
                if self.live.get() > 0 {
                    if let Some(Reverse((at, ..))) = self.heap.borrow().peek() {
                        return Poll::Ready(*at);
                    }
                }
                *self.sweeper.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            let next = last.map_or(earliest, |last| earliest.max(last + GRAIN));
            self.target.set(Some(next));
            self.replan.set(false);
            timer.set_at(next);
            let fired = std::future::poll_fn(|cx| {
                if Pin::new(&mut timer).poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                if self.replan.replace(false) {
                    return Poll::Ready(false);
                }
                *self.sweeper.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            self.target.set(None);
            if !fired {
                continue;
            }
            let now = Instant::now();
            last = Some(now);
            self.sweeps.set(self.sweeps.get() + 1);
            let mut due = Vec::new();
            {
                let mut heap = self.heap.borrow_mut();
                let mut slots = self.slots.borrow_mut();
                while let Some(Reverse((at, index, generation))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    let slot = &mut slots[index as usize];
                    if slot.generation == generation && slot.armed {
                        slot.armed = false;
                        self.live.set(self.live.get() - 1);
                        due.extend(slot.waker.take());
                    }
                }
            }
            for waker in due {
                waker.wake();
            }
        }
    }

    fn arm(&self, slot: Option<u32>, at: Instant) -> u32 {
        let mut slots = self.slots.borrow_mut();
        let index = slot.unwrap_or_else(|| match self.free.borrow_mut().pop() {
            Some(index) => index,
            None => {
                slots.push(Slot::default());
                (slots.len() - 1) as u32
            }
        });
        let entry = &mut slots[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        if !entry.armed {
            entry.armed = true;
            self.live.set(self.live.get() + 1);
        }
        let mut heap = self.heap.borrow_mut();
        heap.push(Reverse((at, index, entry.generation)));
        if heap.len() > COMPACT_FLOOR && heap.len() > 2 * self.live.get() {
            compact(&mut heap, &slots);
        }
        drop(heap);
        // Earlier than the sweeper's timer (or it has none): it must look again. Usually not:
        // a new deadline is a timeout from now, later than those armed before it.
        if self.target.get().is_none_or(|target| at < target) {
            self.replan.set(true);
            if let Some(sweeper) = self.sweeper.borrow_mut().take() {
                sweeper.wake();
            }
        }
        index
    }

    /// The sweeper is gone: every deadline armed here is woken, and becomes an ordinary
    /// timer (see [`Deadline`]'s poll), so none waits on a heap nobody sweeps.
    fn close(&self) {
        self.closed.set(true);
        let wakers: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(|slot| slot.waker.take())
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    fn release(&self, index: u32) {
        let mut slots = self.slots.borrow_mut();
        let entry = &mut slots[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        if entry.armed {
            entry.armed = false;
            self.live.set(self.live.get() - 1);
        }
        entry.waker = None;
        self.free.borrow_mut().push(index);
    }
}

/// Below this many entries the heap is never compacted.
const COMPACT_FLOOR: usize = 64;

/// Drops the stale entries of `heap` (their slot re-armed or released since), and gives back
/// the memory of a burst: under connection churn each connection leaves an entry that is due
/// only a header timeout later, so without this the heap holds the timeout times the
/// connection rate, and keeps its peak size for good.
fn compact(heap: &mut BinaryHeap<Reverse<(Instant, u32, u32)>>, slots: &[Slot]) {
    heap.retain(|Reverse((_, index, generation))| {
        let slot = &slots[*index as usize];
        slot.armed && slot.generation == *generation
    });
    if heap.capacity() > 4 * heap.len().max(COMPACT_FLOOR) {
        heap.shrink_to(2 * heap.len().max(COMPACT_FLOOR));
    }
}

/// Uninstalls its deadlines from the thread when dropped (if still the installed ones), and
/// turns the deadlines armed there into ordinary timers.
struct Installed(Rc<Deadlines>);

impl Drop for Installed {
    fn drop(&mut self) {
        self.0.close();
        SHARED.with(|s| {
            let mut installed = s.borrow_mut();
            if installed.as_ref().is_some_and(|d| Rc::ptr_eq(d, &self.0)) {
                *installed = None;
            }
        });
    }
}

/// A deadline that can be moved, like async-io's `Timer::at` (which it is on a thread without
/// a [`Deadlines`] sweeper): a future that completes once `at` has passed, up to a grain
/// (50 ms) late. For idle timeouts counted in seconds, armed and moved for every request:
/// arming one is a heap push, no syscall and no wake-up of another thread. Not `Send`: it
/// belongs to the thread that made it.
pub struct Deadline(Kind);

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let coarse = matches!(self.0, Kind::Coarse { .. });
        f.debug_struct("Deadline").field("coarse", &coarse).finish()
    }
}

impl std::fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("live", &self.live.get())
            .finish()
    }
}

enum Kind {
    Coarse {
        shared: Rc<Deadlines>,
        at: Instant,
        /// Its slot while armed (an entry in the heap is due at `at`).
        slot: Option<u32>,
        /// Whether the heap holds an entry for `at` in `slot`.
        queued: bool,
    },
    Timer(Timer),
}

impl Deadline {
    /// Completes once `at` has passed.
    pub fn at(at: Instant) -> Deadline {
        match SHARED.with(|s| s.borrow().clone()) {
            Some(shared) => Deadline(Kind::Coarse {
                shared,
                at,
                slot: None,
                queued: false,
            }),
            None => Deadline(Kind::Timer(Timer::at(at))),
        }
    }

    /// Moves it to `when` (earlier or later).
    pub fn set_at(&mut self, when: Instant) {
        match &mut self.0 {
            Kind::Coarse { at, queued, .. } => {
                *at = when;
                *queued = false;
            }
            Kind::Timer(timer) => timer.set_at(when),
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut self.get_mut().0;
        if let Kind::Coarse {
            shared, at, slot, ..
        } = this
        {
            if shared.closed.get() {
                // Its sweeper is gone (that server ended): an ordinary timer from here on.
                if let Some(index) = slot.take() {
                    shared.release(index);
                }
                *this = Kind::Timer(Timer::at(*at));
            }
        }
        match this {
            Kind::Timer(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            Kind::Coarse {
                shared,
                at,
                slot,
                queued,
            } => {
                if Instant::now() >= *at {
                    if let Some(index) = slot.take() {
                        shared.release(index);
                    }
                    *queued = false;
                    return Poll::Ready(());
                }
                if !*queued {
                    *slot = Some(shared.arm(*slot, *at));
                    *queued = true;
                }
                let index = slot.expect("armed above") as usize;
                let mut slots = shared.slots.borrow_mut();
                let entry = &mut slots[index];
                if !entry.armed {
                    // Fired (it is due by now, give or take the grain): the next poll sees
                    // the time; arm again if the clock says otherwise.
                    drop(slots);
                    *queued = false;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if !entry
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    entry.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Kind::Coarse {
            shared,
            slot: Some(index),
            ..
        } = &self.0
        {
            shared.release(*index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// With a sweeper: a deadline fires no earlier than it is due, within the grain (and
    /// a generous margin for a busy machine); one moved later fires at the later time; one
    /// far off does not wake the sweeper meanwhile; a dropped one leaves nothing live.
    #[test]
    fn coarse_deadlines_fire_when_due() {
        let executor = smol::LocalExecutor::new();
        smol::block_on(executor.run(async {
            executor.spawn(Deadlines::install()).detach();
            let shared = SHARED.with(|s| s.borrow().clone()).expect("installed");
            let start = Instant::now();
            let mut deadline = Deadline::at(start + Duration::from_millis(120));
            assert!(matches!(deadline.0, Kind::Coarse { .. }));
            (&mut deadline).await;
            let fired = start.elapsed();
            assert!(fired >= Duration::from_millis(120), "{fired:?}");
            assert!(fired < Duration::from_millis(120) + GRAIN + Duration::from_secs(1));
            deadline.set_at(Instant::now() + Duration::from_millis(80));
            let again = Instant::now();
            (&mut deadline).await;
            assert!(again.elapsed() >= Duration::from_millis(80));
            let pending = Deadline::at(Instant::now() + Duration::from_secs(60));
            let mut pending = Box::pin(pending);
            assert!(futures_poll(&mut pending).is_pending());
            assert_eq!(shared.live.get(), 1);
            // Nothing is due for a minute: the sweeper sleeps until then, not every grain
            // (once the entries of the deadlines before, if any is left, are gone).
            Timer::after(GRAIN * 2).await;
            let sweeps = shared.sweeps.get();
            Timer::after(GRAIN * 6).await;
            assert_eq!(shared.sweeps.get(), sweeps, "woke with nothing due");
            drop(pending);
            assert_eq!(shared.live.get(), 0);
        }));
        drop(executor);
        // The executor is gone with its sweeper: deadlines are plain timers again.
        assert!(matches!(Deadline::at(Instant::now()).0, Kind::Timer(_)));
    }

    /// Connection churn: every connection arms a deadline and goes. The heap holds no more
    /// than twice the live deadlines (plus a floor), and gives the memory of a burst back.
    #[test]
    fn stale_entries_never_outnumber_live_ones_for_long() {
        let executor = smol::LocalExecutor::new();
        smol::block_on(executor.run(async {
            executor.spawn(Deadlines::install()).detach();
            let shared = SHARED.with(|s| s.borrow().clone()).expect("installed");
            let far = Instant::now() + Duration::from_secs(600);
            let keep: Vec<_> = (0..10)
                .map(|_| {
                    let mut d = Box::pin(Deadline::at(far));
                    assert!(futures_poll(&mut d).is_pending());
                    d
                })
                .collect();
            for i in 0..100_000u64 {
                // A connection's first-head deadline, then gone before it is due.
                let mut d = Box::pin(Deadline::at(far + Duration::from_nanos(i)));
                assert!(futures_poll(&mut d).is_pending());
                drop(d);
                let len = shared.heap.borrow().len();
                assert!(len <= 2 * 11 + COMPACT_FLOOR + 1, "{len} entries, 11 live");
            }
            assert!(shared.heap.borrow().capacity() <= 8 * COMPACT_FLOOR);
            assert_eq!(shared.live.get(), keep.len());
        }));
    }

    /// Two servers on one thread: deadlines armed on the heap of one whose sweeper is gone
    /// still fire (as ordinary timers), and new ones do too.
    #[test]
    fn a_deadline_outlives_the_sweeper_it_was_armed_with() {
        let outer = smol::LocalExecutor::new();
        smol::block_on(outer.run(async {
            outer.spawn(Deadlines::install()).detach();
            let inner = smol::LocalExecutor::new();
            let second = inner.spawn(Deadlines::install());
            // Armed on the second server's heap (the one installed last).
            let mut deadline = Box::pin(Deadline::at(Instant::now() + Duration::from_millis(100)));
            assert!(futures_poll(&mut deadline).is_pending());
            // The second server ends: its executor, sweeper and all.
            drop(second);
            drop(inner);
            let start = Instant::now();
            let fired = smol::future::or(
                async {
                    deadline.as_mut().await;
                    true
                },
                async {
                    Timer::after(Duration::from_secs(5)).await;
                    false
                },
            );
            assert!(fired.await, "the deadline never fired");
            assert!(start.elapsed() < Duration::from_secs(2));
            let later = Deadline::at(Instant::now() + Duration::from_millis(50));
            let fired = smol::future::or(
                async {
                    later.await;
                    true
                },
                async {
                    Timer::after(Duration::from_secs(5)).await;
                    false
                },
            );
            assert!(fired.await, "a deadline armed after it never fired");
        }));
    }

    fn futures_poll(deadline: &mut Pin<Box<Deadline>>) -> Poll<()> {
        deadline
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }
}
