//! hyper's runtime, on the core: the connection as hyper's `Read`/`Write` (baton's [`Stream`],
//! with the bytes read before hyper took it first; or a TLS session over one), an executor
//! for HTTP/2's streams on the serving thread's `Local`, and a timer: one heap swept
//! by a task on that thread.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use smol::future::FutureExt as _;

use hyper::rt::{ReadBufCursor, Sleep};

use crate::Stream;
use crate::config::timing::DEADLINE_GRAIN as GRAIN;

/// A connection as hyper reads and writes it: `before` (bytes read to tell the protocol, or
/// held from a predecessor) first, then the stream.
pub(super) struct Io {
    pub(super) stream: Stream,
    pub(super) before: Vec<u8>,
    /// How much of `before` hyper has read.
    pub(super) used: usize,
    /// hyper's shutdown at the end of the connection leaves the socket as it is: it moves.
    pub(super) keep_open: Arc<AtomicBool>,
}

impl Io {
    pub(super) fn new(stream: Stream, before: Vec<u8>) -> Io {
        Io {
            stream,
            before,
            used: 0,
            keep_open: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The bytes of `before` hyper has not read.
    pub(super) fn unread(&self) -> &[u8] {
        &self.before[self.used..]
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.used < this.before.len() {
            let n = buf.remaining().min(this.before.len() - this.used);
            buf.put_slice(&this.before[this.used..this.used + n]);
            this.used += n;
            return Poll::Ready(Ok(()));
        }
        // SAFETY: the slice is only written (by `recv`), never read uninitialised, and
        // `advance` below counts exactly the bytes `recv` reported written.
        let unfilled = unsafe { buf.as_mut() };
        match this.stream.poll_read_uninit(cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: `poll_read_uninit` wrote the first `n` bytes of the cursor's slice.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.keep_open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(self.stream.shutdown_write())
    }
}

/// A futures-io connection (a TLS session over a [`Stream`]) as hyper reads and writes it.
#[cfg(feature = "tls")]
pub(super) struct FuturesIo<T>(pub(super) T);

#[cfg(feature = "tls")]
impl<T: smol::io::AsyncRead + Unpin> hyper::rt::Read for FuturesIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // (Decrypted into a copy: a session yields at most a record, 16 KiB, at a time.)
        let mut chunk = [0u8; 16 * 1024];
        let room = buf.remaining().min(chunk.len());
        match Pin::new(&mut self.0).poll_read(cx, &mut chunk[..room]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&chunk[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(feature = "tls")]
impl<T: smol::io::AsyncWrite + Unpin> hyper::rt::Write for FuturesIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// HTTP/2's stream tasks, on the serving thread's `Local`.
#[derive(Clone)]
pub(super) struct Exec(pub(super) crate::Local);

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        self.0
            .spawn(async move {
                future.await;
            })
            .detach();
    }
}

/// hyper's timer: the HTTP/1 header read timeout (which also bounds an idle keep-alive
/// connection), HTTP/2's keep-alive. hyper arms one per request; an async-io timer costs a
/// write to the reactor's eventfd each time, and a round of the reactor on another thread to
/// take it back. These are entries in one heap instead, swept by one task on the serving
/// thread ([`Timer::sweep`]) that sleeps until the earliest, at most once a [`GRAIN`]:
/// arming one is a push under an uncontended lock, and a timeout fires up to a [`GRAIN`] late.
#[derive(Clone, Default)]
pub(super) struct Timer(Arc<Wheel>);

#[derive(Default)]
struct Wheel {
    state: Mutex<WheelState>,
    /// Entries alive (for compaction: stale ones may not outnumber them by much). Not under
    /// the lock: an entry may drop while the lock is held.
    live: AtomicUsize,
}

#[derive(Default)]
struct WheelState {
    /// Due times, earliest first: stale once their entry is gone or re-armed.
    heap: BinaryHeap<Reverse<Due>>,
    /// When the sweeper wakes next, and its waker.
    planned: Option<Instant>,
    sweeper: Option<Waker>,
}

struct Due {
    at: Instant,
    entry: Weak<Entry>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// One sleep: when it is due, whether it fired, and who waits.
struct Entry {
    wheel: Arc<Wheel>,
    at: Mutex<Instant>,
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.wheel.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Timer {
    fn arm(&self, entry: &Arc<Entry>, at: Instant) {
        *lock(&entry.at) = at;
        entry.fired.store(false, Ordering::SeqCst);
        let mut state = lock(&self.0.state);
        state.heap.push(Reverse(Due {
            at,
            entry: Arc::downgrade(entry),
        }));
        // Stale entries (dropped or re-armed sleeps) stay until due: drop them once they
        // outnumber live ones, so a busy server's heap stays the size of its connections.
        if state.heap.len() > 2 * self.0.live.load(Ordering::SeqCst) + 1024 {
            let heap = std::mem::take(&mut state.heap);
            state.heap = heap
                .into_iter()
                .filter(|Reverse(due)| due.current())
                .collect();
        }
        if state.planned.is_none_or(|planned| at < planned) {
            // (Planned anew, so that the sweeper's wait for an earlier one ends.)
            state.planned = Some(at);
            if let Some(sweeper) = state.sweeper.take() {
                sweeper.wake();
            }
        }
    }

    /// Wakes the sleeps that are due, for as long as the serving thread runs.
    pub(super) async fn sweep(self) {
        let mut timer = async_io::Timer::never();
        let mut last: Option<Instant> = None;
        loop {
            let next = std::future::poll_fn(|cx| {
                let now = Instant::now();
                let mut state = lock(&self.0.state);
                let mut due = Vec::new();
                while let Some(Reverse(first)) = state.heap.peek() {
                    if first.at > now {
                        break;
                    }
                    let Some(Reverse(first)) = state.heap.pop() else {
                        break;
                    };
                    if first.current() {
                        due.extend(first.entry.upgrade());
                    }
                }
                let next = state.heap.peek().map(|Reverse(first)| first.at);
                state.planned = next;
                if next.is_none() {
                    state.sweeper = Some(cx.waker().clone());
                }
                drop(state);
                for entry in due {
                    entry.fired.store(true, Ordering::SeqCst);
                    if let Some(waker) = lock(&entry.waker).take() {
                        waker.wake();
                    }
                }
                match next {
                    Some(at) => Poll::Ready(at),
                    None => Poll::Pending,
                }
            })
            .await;
            let at = match last {
                Some(last) => next.max(last + GRAIN),
                None => next,
            };
            timer.set_at(at);
            let armed_earlier = std::future::poll_fn(|cx| {
                let mut state = lock(&self.0.state);
                match state.planned.is_some_and(|planned| planned == next) {
                    true => {
                        state.sweeper = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    false => Poll::Ready(()),
                }
            });
            let fired = async {
                (&mut timer).await;
            };
            fired.or(armed_earlier).await;
            last = Some(Instant::now());
        }
    }
}

impl Due {
    /// Whether this is its entry's due time still (not re-armed, not dropped).
    fn current(&self) -> bool {
        self.entry
            .upgrade()
            .is_some_and(|entry| *lock(&entry.at) == self.at)
    }
}

struct Sleeping(Arc<Entry>);

impl Future for Sleeping {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        *lock(&self.0.waker) = Some(cx.waker().clone());
        // (Fired meanwhile: the sweeper may have missed the waker.)
        match self.0.fired.load(Ordering::SeqCst) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Sleep for Sleeping {}

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.0.live.fetch_add(1, Ordering::SeqCst);
        let entry = Arc::new(Entry {
            wheel: self.0.clone(),
            at: Mutex::new(deadline),
            fired: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        self.arm(&entry, deadline);
        Box::pin(Sleeping(entry))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleeping>() {
            Some(sleeping) => self.arm(&sleeping.0, new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer as _;

    #[test]
    fn sleeps_fire_once_due_and_a_reset_moves_one() {
        let executor = smol::LocalExecutor::new();
        let timer = Timer::default();
        executor.spawn(timer.clone().sweep()).detach();
        smol::block_on(executor.run(async {
            let start = Instant::now();
            let mut later = timer.sleep(Duration::from_millis(30));
            let sooner = timer.sleep(Duration::from_millis(10));
            sooner.await;
            assert!(start.elapsed() >= Duration::from_millis(10));
            // Moved past its first time: it does not fire then.
            timer.reset(&mut later, start + Duration::from_millis(150));
            later.await;
            assert!(start.elapsed() >= Duration::from_millis(150));
            // A sleep armed while the sweeper waits for a later one fires first.
            let long = timer.sleep(Duration::from_secs(60));
            let short = timer.sleep(Duration::from_millis(5));
            let begun = Instant::now();
            short.await;
            assert!(begun.elapsed() < Duration::from_secs(10));
            drop(long);
        }));
    }

    #[test]
    fn stale_entries_are_dropped_so_the_heap_stays_small() {
        let timer = Timer::default();
        let mut sleep = timer.sleep(Duration::from_secs(60));
        for n in 0..10_000 {
            timer.reset(&mut sleep, Instant::now() + Duration::from_secs(60 + n));
        }
        assert!(lock(&timer.0.state).heap.len() <= 1026);
        drop(sleep);
        assert_eq!(timer.0.live.load(Ordering::SeqCst), 0);
    }
}
