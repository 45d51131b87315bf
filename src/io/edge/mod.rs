//! Edge-triggered readiness for plain TCP client connections.
//!
//! async-io registers every source in one-shot mode: each wait on a socket re-arms it with an
//! `epoll_ctl`, so a keep-alive connection whose next request has not arrived yet costs one
//! `epoll_ctl` per request, and every connection one more to register and one to deregister.
//! Here client sockets go into an epoll instance of their own, once, edge-triggered (as tokio
//! and the raw limit do); that epoll fd is itself one source of async-io's reactor, so a batch
//! of ready connections costs one `epoll_wait` and one re-arm, whatever its size. A socket's
//! registration goes with its close (the kernel removes it), unless its fd was handed to
//! another process, which keeps the file open: then it is deleted explicitly.
//!
//! Readiness follows tokio's rule: a direction is ready until an attempt returns
//! `WouldBlock` (unless an event arrived meanwhile, which the tick tells); a waiter parks its
//! waker until the next event for that direction.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use async_io::Async;
use rustix::event::epoll;

/// Events taken per `epoll_wait`.
const BATCH: usize = 256;

/// The epoll instance of this process's client connections.
#[derive(Debug)]
pub(crate) struct Edge {
    epoll: Async<OwnedFd>,
    /// Wakes a thread blocked in [`Edge::wait`] (registered in the epoll under [`NOTIFY`]);
    /// made when a thread first drives the edge, so a process that never does holds no more.
    notifier: OnceLock<OwnedFd>,
    /// A thread waits on the epoll itself ([`Edge::wait`]): async-io's reactor is not asked.
    thread_driven: AtomicBool,
    slots: Mutex<Slots>,
    /// An error of the epoll, and the driver waiting to hear of one.
    failure: Mutex<(Option<io::Error>, Option<Waker>)>,
}

/// The epoll data of the notifier's registration (a slot's is its index and generation, whose
/// index is never `u32::MAX`).
const NOTIFY: u64 = u64::MAX;

/// The reactor saw the epoll readable.
impl std::task::Wake for Edge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // A thread waits on the epoll itself now: it takes the events, not the reactor.
        if self.thread_driven.load(Ordering::SeqCst) {
            return;
        }
        match self.poll_now() {
            Ok(_) => self.arm(),
            Err(error) => self.fail(error),
        }
    }
}

thread_local! {
    /// Reused by every look at the events (on the server's thread).
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers {
        events: Vec::with_capacity(BATCH),
        wake: Vec::new(),
    });
}

struct Buffers {
    events: Vec<epoll::Event>,
    wake: Vec<Waker>,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Entry>,
    free: Vec<u32>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Bumped each time the entry is reused: an event for an earlier socket is ignored.
    generation: u32,
    live: bool,
    read: Direction,
    write: Direction,
}

#[derive(Debug, Default)]
struct Direction {
    ready: bool,
    /// The peer closed this direction (or the socket failed): an edge-triggered epoll
    /// reports that once, so a short read does not mark it drained (the next read finds the
    /// end, a write the error); only a `WouldBlock` from the kernel does.
    closed: bool,
    /// Events seen for this direction: a `WouldBlock` clears `ready` only if none came since
    /// the attempt began.
    tick: u64,
    waker: Option<Waker>,
}

impl Direction {
    fn fire(&mut self) -> Option<Waker> {
        self.ready = true;
        self.tick += 1;
        self.waker.take()
    }

    /// Parks this task's waker. Another task's waiting here is woken (as async-io does), so
    /// that it polls again and parks its own: two waiters alternate, neither is lost.
    fn park(&mut self, cx: &Context<'_>) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            if let Some(previous) = self.waker.replace(cx.waker().clone()) {
                previous.wake();
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Way {
    Read,
    Write,
}

impl Entry {
    fn way(&mut self, way: Way) -> &mut Direction {
        match way {
            Way::Read => &mut self.read,
            Way::Write => &mut self.write,
        }
    }
}

/// The process's edge, made on first use (see [`Edge::global`]).
static GLOBAL: OnceLock<Arc<Edge>> = OnceLock::new();

impl Edge {
    /// The process's one edge, which every connection stream is registered with and the core
    /// drives while it serves; made on first use.
    pub(crate) fn global() -> io::Result<&'static Arc<Edge>> {
        if let Some(edge) = GLOBAL.get() {
            return Ok(edge);
        }
        let made = Edge::new()?;
        // Two threads may race here: one epoll is kept, the other closed.
        Ok(GLOBAL.get_or_init(|| made))
    }

    pub(crate) fn new() -> io::Result<Arc<Edge>> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        Ok(Arc::new(Edge {
            epoll: Async::new(fd)?,
            notifier: OnceLock::new(),
            thread_driven: AtomicBool::new(false),
            slots: Mutex::new(Slots::default()),
            failure: Mutex::new((None, None)),
        }))
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the epoll's events out for as long as the process serves, from the reactor itself:
    /// when async-io's reactor (on whichever thread runs it) sees the epoll readable, the
    /// edge's own waker takes the events and wakes their connections right there, then
    /// registers again; no task of the core's thread is woken in between, so a connection
    /// whose task runs on the reactor's thread is woken without a thread switch. Returns only
    /// if the epoll fails (its fd broken): then no connection registered here is woken any
    /// more, and the caller must not go on as if they were (the core stops, saying so).
    pub(crate) async fn drive(self: Arc<Edge>) -> io::Error {
        self.arm();
        std::future::poll_fn(|cx| {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            match failure.0.take() {
                Some(error) => Poll::Ready(error),
                None => {
                    failure.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Registers the edge's waker for the epoll's next readiness, handing out what is ready
    /// meanwhile.
    fn arm(self: &Arc<Edge>) {
        if self.thread_driven.load(Ordering::SeqCst) {
            return;
        }
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            match self.epoll.poll_readable(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(Ok(())) => {
                    if let Err(error) = self.poll_now() {
                        return self.fail(error);
                    }
                }
                Poll::Ready(Err(error)) => return self.fail(error),
            }
        }
    }

    /// The epoll failed: the driver reports it.
    pub(crate) fn fail(&self, error: io::Error) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.0 = Some(error);
        if let Some(waker) = failure.1.take() {
            waker.wake();
        }
    }

    /// Takes the events there are now, without waiting, and wakes their connections; how
    /// many there were. One `epoll_wait`: a cheaper look for ready connections than a round
    /// of the reactor (which costs four more syscalls), for a busy executor between tasks.
    pub(crate) fn poll_now(&self) -> io::Result<usize> {
        BUFFERS.with(|buffers| self.poll_into(&mut buffers.borrow_mut(), None))
    }

    /// Makes the calling thread the one that takes the epoll's events ([`Edge::wait`]),
    /// instead of async-io's reactor (`on`; it needs the notifier, made here the first time),
    /// or gives them back to the reactor.
    pub(crate) fn set_thread_driven(self: &Arc<Edge>, on: bool) -> io::Result<()> {
        if on && self.notifier.get().is_none() {
            let flags =
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
            let notifier = rustix::event::eventfd(0, flags)?;
            let interest = epoll::EventFlags::IN | epoll::EventFlags::ET;
            let data = epoll::EventData::new_u64(NOTIFY);
            epoll::add(self.epoll.as_fd(), &notifier, data, interest)?;
            // (One driving thread per process: no other can have set it meanwhile.)
            let _ = self.notifier.set(notifier);
        }
        self.thread_driven.store(on, Ordering::SeqCst);
        if !on {
            self.arm();
        }
        Ok(())
    }

    /// Blocks until there are events (or [`Edge::notify`]), calls `woke` (the waiter is no
    /// longer waiting: the wakers about to run need not notify it), then takes them as
    /// [`Edge::poll_now`] does; how many connection events there were.
    pub(crate) fn wait(&self, woke: &dyn Fn()) -> io::Result<usize> {
        BUFFERS.with(|buffers| self.poll_into(&mut buffers.borrow_mut(), Some(woke)))
    }

    /// Wakes the thread blocked in [`Edge::wait`], if one is (else its next wait returns at
    /// once).
    pub(crate) fn notify(&self) {
        if let Some(notifier) = self.notifier.get() {
            let _ = rustix::io::write(notifier, &1u64.to_ne_bytes());
        }
    }

    /// One look (or, with `block`, a wait and then `block` called), then the events handed
    /// out; looks again while a batch came full.
    fn poll_into(&self, buffers: &mut Buffers, block: Option<&dyn Fn()>) -> io::Result<usize> {
        let Buffers { events, wake } = buffers;
        let mut total = 0;
        let mut block = block;
        loop {
            events.clear();
            let zero = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let woke = block.take();
            let timeout = woke.is_none().then_some(&zero);
            let spare = rustix::buffer::spare_capacity(&mut *events);
            let waited = epoll::wait(self.epoll.as_fd(), spare, timeout);
            if let Some(woke) = woke {
                woke();
            }
            match waited {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            total += events.len();
            {
                let mut slots = self.slots();
                for event in events.iter() {
                    let data = event.data.u64();
                    if data == NOTIFY {
                        // Cleared, so its counter never fills; one wake-up, whatever its count.
                        if let Some(notifier) = self.notifier.get() {
                            let _ = rustix::io::read(notifier, &mut [0u8; 8]);
                        }
                        total -= 1;
                        continue;
                    }
                    let (index, generation) = (data as u32 as usize, (data >> 32) as u32);
                    let Some(entry) = slots.entries.get_mut(index) else {
                        continue;
                    };
                    if !entry.live || entry.generation != generation {
                        continue;
                    }
                    let flags = event.flags;
                    let broken = epoll::EventFlags::ERR | epoll::EventFlags::HUP;
                    let read_closed = broken | epoll::EventFlags::RDHUP;
                    if flags.intersects(epoll::EventFlags::IN | read_closed) {
                        entry.read.closed |= flags.intersects(read_closed);
                        wake.extend(entry.read.fire());
                    }
                    if flags.intersects(epoll::EventFlags::OUT | broken) {
                        entry.write.closed |= flags.intersects(broken);
                        wake.extend(entry.write.fire());
                    }
                }
            }
            // Woken outside the lock: a waker may poll (and lock) at once.
            for waker in wake.drain(..) {
                waker.wake();
            }
            if events.len() < BATCH {
                return Ok(total);
            }
        }
    }

    /// Runs `attempt` while `way` of slot `index` may be ready; once it says `WouldBlock`
    /// (unless an event came meanwhile: then it tries again), `Pending`, with the waker of
    /// `cx` parked if there is one (none: a try that never waits).
    fn poll_slot<T>(
        &self,
        index: u32,
        cx: Option<&Context<'_>>,
        way: Way,
        mut attempt: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            let tick = {
                let mut slots = self.slots();
                let direction = slots.entries[index as usize].way(way);
                if !direction.ready {
                    if let Some(cx) = cx {
                        direction.park(cx);
                    }
                    return Poll::Pending;
                }
                direction.tick
            };
            match attempt() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut slots = self.slots();
                    let direction = slots.entries[index as usize].way(way);
                    if direction.tick == tick {
                        direction.ready = false;
                        if let Some(cx) = cx {
                            direction.park(cx);
                        }
                        return Poll::Pending;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return Poll::Ready(other),
            }
        }
    }

    /// A free slot, live, ready both ways (unknown at first: try, and learn from
    /// `WouldBlock`); its index and generation.
    fn slot(&self) -> (u32, u32) {
        let mut slots = self.slots();
        let index = match slots.free.pop() {
            Some(index) => index,
            None => {
                slots.entries.push(Entry::default());
                (slots.entries.len() - 1) as u32
            }
        };
        let entry = &mut slots.entries[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.live = true;
        entry.read = Direction {
            ready: true,
            ..Direction::default()
        };
        entry.write = Direction {
            ready: true,
            ..Direction::default()
        };
        (index, entry.generation)
    }

    fn free(&self, index: u32) {
        let mut slots = self.slots();
        let entry = &mut slots.entries[index as usize];
        entry.live = false;
        entry.read = Direction::default();
        entry.write = Direction::default();
        slots.free.push(index);
    }

    fn data(index: u32, generation: u32) -> epoll::EventData {
        epoll::EventData::new_u64((u64::from(generation) << 32) | u64::from(index))
    }

    /// Watches a listening socket for incoming connections (edge-triggered): the serving
    /// loop's accepts are then woken, and looked for between tasks, like connections.
    pub(crate) fn watch(self: &Arc<Edge>, listener: BorrowedFd<'_>) -> io::Result<Watched> {
        let (index, generation) = self.slot();
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ET;
        if let Err(e) = epoll::add(
            self.epoll.as_fd(),
            listener,
            Edge::data(index, generation),
            flags,
        ) {
            self.free(index);
            return Err(e.into());
        }
        Ok(Watched {
            edge: self.clone(),
            index,
        })
    }

    /// Registers a connected (non-blocking) socket, TCP or Unix, once, for both directions.
    pub(crate) fn register(self: &Arc<Edge>, socket: impl Into<OwnedFd>) -> io::Result<Conn> {
        let (index, generation) = self.slot();
        let conn = Conn {
            fd: socket.into(),
            edge: self.clone(),
            index,
            shared: AtomicBool::new(false),
        };
        let flags = epoll::EventFlags::IN
            | epoll::EventFlags::OUT
            | epoll::EventFlags::RDHUP
            | epoll::EventFlags::ET;
        epoll::add(
            self.epoll.as_fd(),
            conn.fd.as_fd(),
            Edge::data(index, generation),
            flags,
        )?;
        Ok(conn)
    }
}

/// A listening socket watched by [`Edge`].
#[derive(Debug)]
pub(crate) struct Watched {
    edge: Arc<Edge>,
    index: u32,
}

impl Watched {
    /// Runs `attempt` (an accept) while the listener may have a connection waiting.
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        attempt: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        self.edge
            .poll_slot(self.index, Some(cx), Way::Read, attempt)
    }

    /// Stops watching `listener` (the fd this watches): it stays open in other processes,
    /// and so would its registration here.
    pub(crate) fn unwatch(self, listener: BorrowedFd<'_>) {
        let _ = epoll::delete(self.edge.epoll.as_fd(), listener);
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.edge.free(self.index);
    }
}

/// A connected socket (TCP or Unix) registered with [`Edge`].
#[derive(Debug)]
pub(crate) struct Conn {
    fd: OwnedFd,
    edge: Arc<Edge>,
    index: u32,
    /// Its fd went to another process: the registration outlives the close here, so it is
    /// deleted explicitly.
    shared: AtomicBool,
}

impl Conn {
    /// Closes the writing direction (a FIN for TCP).
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        Ok(rustix::net::shutdown(
            &self.fd,
            rustix::net::Shutdown::Write,
        )?)
    }

    /// Runs `attempt` (a receive, or a send with `write`) while the socket may be ready that
    /// way; `Pending` once it says `WouldBlock` (for a datagram socket, where a receive says
    /// nothing of what is left).
    pub(crate) fn poll_with<T>(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        mut attempt: impl FnMut(&OwnedFd) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let way = if write { Way::Write } else { Way::Read };
        self.edge
            .poll_slot(self.index, Some(cx), way, || attempt(&self.fd))
    }

    /// One `recv(2)` (cheaper than `read(2)` on a socket: no file position to lock).
    fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::net::recv(&self.fd, buf, rustix::net::RecvFlags::empty())?.0)
    }

    /// One `send(2)`, without SIGPIPE for a peer that is gone.
    pub(crate) fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(
            &self.fd,
            buf,
            rustix::net::SendFlags::NOSIGNAL,
        )?)
    }

    /// Marks the fd as sent to another process (before it is).
    pub(crate) fn sharing(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    /// A read while the socket may have something; `Pending` once it has nothing (parking
    /// `cx`'s waker, if any). A short read (fewer bytes than `buf` holds) emptied the socket's
    /// queue, so the next attempt would only learn `WouldBlock`: it marks the socket not
    /// ready, unless an event came since the read began (the same rule as tokio's). Two
    /// looks at the slot per read that finds something.
    fn read(&self, cx: Option<&Context<'_>>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let len = buf.len();
        self.read_with(cx, len, || self.read_now(buf))
    }

    /// [`Conn::read`] into storage not yet initialised: `recv` writes what it returns.
    pub(crate) fn poll_read_uninit(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [std::mem::MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len();
        let flags = rustix::net::RecvFlags::empty();
        self.read_with(Some(cx), len, || {
            Ok(rustix::net::recv(&self.fd, &mut *buf, flags)?.0.0.len())
        })
    }

    /// The readiness rule of [`Conn::read`] around `recv`, a read of at most `len` bytes.
    fn read_with(
        &self,
        cx: Option<&Context<'_>>,
        len: usize,
        mut recv: impl FnMut() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let tick = {
                let mut slots = self.edge.slots();
                let direction = slots.entries[self.index as usize].way(Way::Read);
                if !direction.ready {
                    if let Some(cx) = cx {
                        direction.park(cx);
                    }
                    return Poll::Pending;
                }
                direction.tick
            };
            let read = recv();
            let short = matches!(read, Ok(n) if n > 0 && n < len);
            let drained = matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if short || drained {
                let mut slots = self.edge.slots();
                let direction = slots.entries[self.index as usize].way(Way::Read);
                if direction.tick == tick && (drained || !direction.closed) {
                    direction.ready = false;
                    if drained {
                        if let Some(cx) = cx {
                            direction.park(cx);
                        }
                        return Poll::Pending;
                    }
                }
            }
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return Poll::Ready(other),
            }
        }
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.read(Some(cx), buf)
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.edge
            .poll_slot(self.index, Some(cx), Way::Write, || self.write_now(buf))
    }

    /// One read that never waits: `WouldBlock` without a syscall if the last attempt said so
    /// and no event came since.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.read(None, buf) {
            Poll::Ready(read) => read,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Resolves once a read may find something (or the peer closed).
    pub(crate) async fn readable(&self) {
        std::future::poll_fn(|cx| {
            let mut slots = self.edge.slots();
            let direction = slots.entries[self.index as usize].way(Way::Read);
            if direction.ready {
                return Poll::Ready(());
            }
            direction.park(cx);
            Poll::Pending
        })
        .await
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.shared.load(Ordering::Relaxed) {
            let _ = epoll::delete(self.edge.epoll.as_fd(), self.fd.as_fd());
        }
        self.edge.free(self.index);
    }
}

/// For unit tests: an edge whose events are handed out by a thread of its own.
#[cfg(test)]
pub(crate) fn driven() -> Arc<Edge> {
    let edge = Edge::new().expect("epoll");
    let driver = edge.clone();
    std::thread::spawn(move || smol::block_on(driver.drive()));
    edge
}

/// For unit tests: the global edge's events handed out by a thread of its own (once).
#[cfg(test)]
pub(crate) fn drive_global() {
    static DRIVEN: std::sync::Once = std::sync::Once::new();
    DRIVEN.call_once(|| {
        let edge = Edge::global().expect("epoll").clone();
        std::thread::spawn(move || smol::block_on(edge.drive()));
    });
}

/// For unit tests: `tcp` (made non-blocking) registered with a driven edge.
#[cfg(test)]
pub(crate) fn conn(tcp: std::net::TcpStream) -> Conn {
    tcp.set_nonblocking(true).expect("non-blocking");
    driven().register(tcp).expect("register")
}

#[cfg(test)]
mod tests;
