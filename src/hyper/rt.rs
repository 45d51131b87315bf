//! hyper's runtime, on the core: the connection as hyper's `Read`/`Write` (baton's [`Stream`],
//! with the bytes read before hyper took it first), an executor for HTTP/2's streams on the
//! serving thread's local executor, and a timer on async-io.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{ReadBufCursor, Sleep};
use smol::LocalExecutor;

use crate::Stream;

/// A connection as hyper reads and writes it: `before` (bytes read to tell the protocol, or
/// held from a predecessor) first, then the stream.
pub(super) struct Io {
    pub(super) stream: Stream,
    pub(super) before: Vec<u8>,
    /// How much of `before` hyper has read.
    pub(super) used: usize,
}

impl Io {
    pub(super) fn new(stream: Stream, before: Vec<u8>) -> Io {
        Io {
            stream,
            before,
            used: 0,
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
        Poll::Ready(self.stream.shutdown_write())
    }
}

/// HTTP/2's stream tasks, on the serving thread's local executor.
#[derive(Clone)]
pub(super) struct Exec(pub(super) Rc<LocalExecutor<'static>>);

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

/// hyper's timer (header read timeout, HTTP/2 keep-alive) on async-io's timers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timer;

struct Sleeping(async_io::Timer);

impl Future for Sleeping {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Sleep for Sleeping {}

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(Sleeping(async_io::Timer::after(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(Sleeping(async_io::Timer::at(deadline)))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleeping>() {
            Some(mut sleeping) => sleeping.0.set_at(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}
