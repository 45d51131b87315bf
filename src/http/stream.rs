//! A connected client, over TCP or a Unix socket: the one type the connection loop reads from
//! and writes to, whichever kind of listener accepted it.

use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_io::Async;
use smol::io::{AsyncRead, AsyncWrite};

#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain TCP, registered with the connections' edge-triggered epoll.
    Tcp(crate::io::edge::Conn),
    Unix(Async<UnixStream>),
    #[cfg(feature = "tls")]
    Tls(Box<crate::http::tls::Session>),
}

impl Stream {
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(s) => s.poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(&mut &*s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.poll_read(cx, buf),
        }
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(s) => s.poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(&mut &*s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.poll_write(cx, buf),
        }
    }

    /// Pushes out what a write left buffered (only TLS buffers; sockets write through).
    pub(crate) fn poll_flush(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.poll_flush(_cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    /// (async-h1's loop) writes all of `buf`.
    #[cfg(feature = "async-h1")]
    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match poll_fn(|cx| self.poll_write(cx, buf)).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// One read that never waits and registers nothing with the reactor: `WouldBlock` if
    /// nothing is there yet (always, for TLS, whose records go through the session).
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => std::io::Read::read(&mut s.get_ref(), buf),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Whether [`Stream::try_read`] can ever find something.
    pub(crate) fn can_try_read(&self) -> bool {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => true,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => false,
        }
    }

    /// Resolves once there is something to read (or the peer closed).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.readable().await;
                Ok(())
            }
            Stream::Unix(s) => s.readable().await,
            #[cfg(feature = "tls")]
            Stream::Tls(s) if s.has_plaintext() => Ok(()),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                s.tcp.readable().await;
                Ok(())
            }
        }
    }

    /// Makes the coming close a reset (SO_LINGER 0): for a client that stopped reading, whose
    /// unsent data would otherwise hold the socket open.
    pub(crate) fn abort(&self) {
        let fd = match self {
            Stream::Tcp(s) => s.as_fd(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.tcp.as_fd(),
            Stream::Unix(_) => return,
        };
        let _ = rustix::net::sockopt::set_socket_linger(fd, Some(std::time::Duration::ZERO));
    }

    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.get_ref().shutdown(Shutdown::Write),
            Stream::Unix(s) => s.get_ref().shutdown(Shutdown::Write),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                s.close_notify();
                s.tcp.get_ref().shutdown(Shutdown::Write)
            }
        };
    }
}
