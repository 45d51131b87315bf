//! [`Stream`]: a connection as every program gets it, accepted here or resumed from the previous
//! process. Its socket is registered once with the process's edge-triggered epoll (see
//! `edge`): a read that empties the socket marks it drained without a second `read`, a waiting
//! task parks until the next edge, and nothing is re-armed per read. The bytes a predecessor
//! had read and not used come first. The stream is `Send + Sync`: its tasks may run on any
//! thread and executor, while the core (on its own thread) hands the edge's events out.
//!
//! A stream the core gave the program counts for the drain until it drops: that is the
//! connection's lifetime, whatever the program does with other guards, so a process never
//! exits under an open connection without counting it as dropped.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};

use super::Address;
use super::edge::{Conn, Edge};

/// Held bytes are waiting to be read first.
const HELD: u8 = 1;
/// The connection went to another process: this copy must not read or write it.
const MOVED: u8 = 2;

/// A connected socket, TCP or Unix, on the process's edge-triggered readiness: what
/// [`crate::Program::accepted`] and [`crate::Program::resumed`] hand a program. Read and write it
/// through futures-io's [`AsyncRead`] and [`AsyncWrite`] (on `Stream` or `&Stream`, so one
/// task can read while another writes), or the methods here; from any thread and any
/// executor.
///
/// A resumed stream yields the bytes the previous process had read and not used before
/// anything from the socket. A stream the core handed out counts as an open connection until
/// it drops: the drain waits for it, `max_connections` counts it, and one still open when
/// the drain gives up is counted as dropped in the [`crate::Report`].
pub struct Stream {
    conn: Conn,
    peer: Address,
    local: Address,
    /// `HELD`, `MOVED`: one load on each read and write.
    flags: AtomicU8,
    held: Mutex<Vec<u8>>,
    /// What counts this connection for the drain (the core's), until the stream drops.
    _count: Option<Box<dyn Send + Sync>>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("fd", &self.conn.as_fd())
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// A connected, non-blocking socket on the edge; its addresses read from it.
    pub(crate) fn register(socket: OwnedFd) -> io::Result<Stream> {
        let (peer, local) = addresses(&socket);
        Stream::with_addresses(socket, peer, local)
    }

    /// A connected, non-blocking socket on the edge, whose addresses are known.
    pub(crate) fn with_addresses(
        socket: OwnedFd,
        peer: Address,
        local: Address,
    ) -> io::Result<Stream> {
        let conn = Edge::global()?.register(socket)?;
        Ok(Stream {
            conn,
            peer,
            local,
            flags: AtomicU8::new(0),
            held: Mutex::new(Vec::new()),
            _count: None,
        })
    }

    /// Counts the stream with `guard` until it drops.
    pub(crate) fn counted(mut self, guard: impl Send + Sync + 'static) -> Stream {
        self._count = Some(Box::new(guard));
        self
    }

    /// Reads `held` before the socket.
    pub(crate) fn holding(self, held: Vec<u8>) -> Stream {
        if !held.is_empty() {
            *self.lock_held() = held;
            self.flags.fetch_or(HELD, Ordering::Release);
        }
        self
    }

    /// A TCP connection of the program's own (a proxy's upstream, say) on the same readiness
    /// as the connections baton hands out. It is not counted for the drain, and moves with
    /// [`crate::Drain::hand_over`] like any stream. Connecting blocks; make it non-blocking
    /// first or connect on a thread of its own if that matters.
    pub fn from_tcp(tcp: std::net::TcpStream) -> io::Result<Stream> {
        tcp.set_nonblocking(true)?;
        Stream::register(OwnedFd::from(tcp))
    }

    /// A connected Unix stream socket of the program's own, as [`Stream::from_tcp`].
    pub fn from_unix(unix: std::os::unix::net::UnixStream) -> io::Result<Stream> {
        unix.set_nonblocking(true)?;
        Stream::register(OwnedFd::from(unix))
    }

    /// The other end's address (a Unix client's is usually unnamed: an empty path).
    pub fn peer(&self) -> &Address {
        &self.peer
    }

    /// This end's address: the listener's, for an accepted connection.
    pub fn local(&self) -> &Address {
        &self.local
    }

    /// The peer's TCP address, if this is TCP.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self.peer {
            Address::Tcp(addr) => Some(addr),
            Address::Unix(_) | Address::Udp(_) => None,
        }
    }

    /// Whether this is a TCP connection (else a Unix socket's).
    pub fn is_tcp(&self) -> bool {
        matches!(self.local, Address::Tcp(_))
    }

    /// How many of the previous process's held bytes are still to be read.
    pub fn held_len(&self) -> usize {
        if self.flags.load(Ordering::Acquire) & HELD == 0 {
            return 0;
        }
        self.lock_held().len()
    }

    /// Takes the bytes the previous process had read and not used, which reads would
    /// otherwise yield first: for a program that keeps its own buffer.
    pub fn take_held(&self) -> Vec<u8> {
        if self.flags.load(Ordering::Acquire) & HELD == 0 {
            return Vec::new();
        }
        let mut held = self.lock_held();
        self.flags.fetch_and(!HELD, Ordering::Release);
        std::mem::take(&mut *held)
    }

    /// Gives back bytes taken with [`Stream::take_held`] (a hand-over that failed).
    pub(crate) fn put_back_held(&self, held: Vec<u8>) {
        if !held.is_empty() {
            let mut mine = self.lock_held();
            let rest = std::mem::take(&mut *mine);
            *mine = [held, rest].concat();
            self.flags.fetch_or(HELD, Ordering::Release);
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies held bytes into `buf`, if there are any.
    fn read_held(&self, buf: &mut [u8]) -> Option<usize> {
        let mut held = self.lock_held();
        if held.is_empty() {
            self.flags.fetch_and(!HELD, Ordering::Release);
            return None;
        }
        let n = held.len().min(buf.len());
        buf[..n].copy_from_slice(&held[..n]);
        held.drain(..n);
        if held.is_empty() {
            self.flags.fetch_and(!HELD, Ordering::Release);
        }
        Some(n)
    }

    fn moved() -> io::Error {
        io::Error::new(
            io::ErrorKind::NotConnected,
            "the connection was handed over to the successor",
        )
    }

    /// What a read gets before the socket: an error once moved, else held bytes if any.
    fn before_socket(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let flags = self.flags.load(Ordering::Acquire);
        if flags == 0 {
            return None;
        }
        if flags & MOVED != 0 {
            return Some(Err(Stream::moved()));
        }
        self.read_held(buf).map(Ok)
    }

    /// Reads into `buf`, or registers `cx` for the next edge if nothing is there.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if let Some(read) = self.before_socket(buf) {
            return Poll::Ready(read);
        }
        self.conn.poll_read(cx, buf)
    }

    /// [`Stream::poll_read`] into storage not yet initialised (a runtime's read buffer, as
    /// hyper's): what it returns, `n`, is the count of bytes written at the start of `buf`.
    pub fn poll_read_uninit(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [std::mem::MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        if self.flags.load(Ordering::Acquire) != 0 {
            // Held bytes (or the moved error) first, through an initialised copy: rare.
            let mut held = vec![0u8; buf.len().min(64 * 1024)];
            if let Some(read) = self.before_socket(&mut held) {
                return Poll::Ready(read.inspect(|&n| {
                    for (to, from) in buf.iter_mut().zip(&held[..n]) {
                        to.write(*from);
                    }
                }));
            }
        }
        self.conn.poll_read_uninit(cx, buf)
    }

    /// Writes from `buf`, or registers `cx` for the next edge if the socket is full.
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.flags.load(Ordering::Acquire) & MOVED != 0 {
            return Poll::Ready(Err(Stream::moved()));
        }
        self.conn.poll_write(cx, buf)
    }

    /// Reads what is there, waiting for something if nothing is.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match poll_fn(|cx| self.poll_write(cx, buf)).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    /// One read that never waits: `WouldBlock`, without a syscall, if the last attempt found
    /// the socket empty and no edge came since.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.poll_read_now(buf) {
            Poll::Ready(read) => read,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn poll_read_now(&self, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if let Some(read) = self.before_socket(buf) {
            return Poll::Ready(read);
        }
        match self.conn.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            other => Poll::Ready(other),
        }
    }

    /// Resolves once a read may find something (held bytes, data, or the peer's close).
    pub async fn readable(&self) {
        if self.flags.load(Ordering::Acquire) != 0 {
            return;
        }
        self.conn.readable().await
    }

    /// Closes the writing direction (a FIN for TCP): the peer reads the end, and may still
    /// send.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.conn.shutdown_write()
    }

    /// Makes the coming close a reset (TCP's `SO_LINGER` 0), for a peer that stopped reading,
    /// whose unsent data would otherwise hold the socket open. Nothing for a Unix socket.
    pub fn abort(&self) {
        if self.is_tcp() {
            let zero = Some(std::time::Duration::ZERO);
            let _ = rustix::net::sockopt::set_socket_linger(self.conn.as_fd(), zero);
        }
    }

    /// Looks once (one `epoll_wait`, never waiting) for streams that became ready, and wakes
    /// the tasks waiting on them; how many events there were. The core looks whenever its
    /// thread waits; a program that runs its own executor on the core's thread (as the HTTP
    /// server does) can look between its tasks, so that a busy executor sees I/O sooner.
    pub fn wake_ready() -> io::Result<usize> {
        Edge::global()?.poll_now()
    }

    /// Marks the socket as about to go to another process: its registration here is then
    /// removed explicitly at the drop (the other process keeps the file open).
    pub(crate) fn sharing(&self) {
        self.conn.sharing();
    }

    /// The socket went to another process: this copy neither reads nor writes any more.
    pub(crate) fn set_moved(&self) {
        self.flags.fetch_or(MOVED, Ordering::Release);
    }

    /// One write that never waits, for code in this crate that writes around the readiness
    /// (a TLS session's close_notify).
    #[cfg(feature = "tls")]
    pub(crate) fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write_now(buf)
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

/// The peer's and the local address of a connected socket (unnamed Unix ends as empty paths).
fn addresses(socket: &OwnedFd) -> (Address, Address) {
    let read = |addr: Option<rustix::net::SocketAddrAny>| {
        let Some(addr) = addr else {
            return Address::Unix(PathBuf::new());
        };
        if let Ok(tcp) = SocketAddr::try_from(addr.clone()) {
            return Address::Tcp(tcp);
        }
        let path = rustix::net::SocketAddrUnix::try_from(addr)
            .ok()
            .and_then(|unix| {
                use std::os::unix::ffi::OsStrExt as _;
                if let Some(path) = unix.path_bytes() {
                    return Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
                }
                let name = unix.abstract_name().filter(|name| !name.is_empty())?;
                let text = [&b"@"[..], name].concat();
                Some(PathBuf::from(std::ffi::OsStr::from_bytes(&text)))
            });
        Address::Unix(path.unwrap_or_default())
    };
    (
        read(rustix::net::getpeername(socket).ok().flatten()),
        read(rustix::net::getsockname(socket).ok()),
    )
}

impl AsyncRead for &Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Stream::poll_read(self.get_mut(), cx, buf)
    }
}

impl AsyncWrite for &Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Stream::poll_write(self.get_mut(), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written straight to the socket: nothing is held here.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

/// An owned stream reads and writes as a shared one does (no state of its own).
impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.get_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.get_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.get_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.get_mut()).poll_close(cx)
    }
}

/// For unit tests: `tcp` as a stream on the global edge, driven by a thread of its own.
#[cfg(all(test, feature = "http"))]
pub(crate) fn for_tests(tcp: std::net::TcpStream) -> Stream {
    super::edge::drive_global();
    Stream::from_tcp(tcp).expect("a stream")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::time::Duration;

    fn pair() -> (Stream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let server = listener.accept().unwrap().0;
        super::super::edge::drive_global();
        (Stream::from_tcp(server).unwrap(), client)
    }

    /// Held bytes come first, then the socket's; the addresses are the socket's.
    #[test]
    fn a_resumed_stream_yields_its_held_bytes_first() {
        let (server, mut client) = pair();
        assert_eq!(server.peer(), &Address::Tcp(client.local_addr().unwrap()));
        assert_eq!(server.local(), &Address::Tcp(client.peer_addr().unwrap()));
        let server = server.holding(b"held ".to_vec());
        client.write_all(b"then the socket").unwrap();
        let got = smol::block_on(async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4];
            while got.len() < 20 {
                let n = server.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        assert_eq!(got, b"held then the socket");
        assert_eq!(server.held_len(), 0);
    }

    /// A stream marked moved neither reads nor writes: the successor owns the connection.
    #[test]
    fn a_moved_stream_refuses_reads_and_writes() {
        let (server, mut client) = pair();
        client.write_all(b"for the successor").unwrap();
        server.set_moved();
        let mut buf = [0u8; 32];
        assert_eq!(
            server.try_read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        let wrote = smol::block_on(server.write_all(b"x"));
        assert_eq!(wrote.unwrap_err().kind(), io::ErrorKind::NotConnected);
        drop(server);
        // The bytes are still in the socket for whoever holds it next (here: nobody, so the
        // close ends it; the client sees the end, not data from this copy).
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.read(&mut buf).unwrap_or(0), 0);
    }

    /// A Unix socket pair on the same readiness, both ways, with an unnamed peer.
    #[test]
    fn unix_streams_read_and_write_on_the_edge() {
        super::super::edge::drive_global();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (a, b) = (Stream::from_unix(a).unwrap(), Stream::from_unix(b).unwrap());
        assert!(!a.is_tcp());
        assert_eq!(a.peer(), &Address::Unix(PathBuf::new()));
        smol::block_on(async {
            let reader = async {
                let mut buf = [0u8; 8];
                let n = b.read(&mut buf).await.unwrap();
                buf[..n].to_vec()
            };
            let writer = async {
                async_io::Timer::after(Duration::from_millis(20)).await;
                a.write_all(b"ping").await.unwrap();
            };
            let (got, ()) = smol::future::zip(reader, writer).await;
            assert_eq!(got, b"ping");
        });
    }
}
