//! A connected client, plain (TCP or a Unix socket: the core's [`crate::Stream`]) or in a TLS
//! session over one: the one type the connection loop reads from and writes to, whichever
//! kind of listener accepted it.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

#[derive(Debug)]
pub(crate) enum Stream {
    /// TCP or a Unix socket, as the core hands it out.
    Plain(crate::Stream),
    #[cfg(feature = "tls")]
    Tls(Box<crate::http::tls::Session>),
}

impl Stream {
    /// The socket, if it is not in a TLS session (which stays with this process).
    pub(crate) fn plain(&self) -> Option<&crate::Stream> {
        match self {
            Stream::Plain(s) => Some(s),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => None,
        }
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => s.poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.poll_read(cx, buf),
        }
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => s.poll_write(cx, buf),
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
            Stream::Plain(s) => s.try_read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Whether [`Stream::try_read`] can ever find something.
    pub(crate) fn can_try_read(&self) -> bool {
        match self {
            Stream::Plain(_) => true,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => false,
        }
    }

    /// Resolves once there is something to read (or the peer closed).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => {
                s.readable().await;
                Ok(())
            }
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
        match self {
            Stream::Plain(s) => s.abort(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.tcp.abort(),
        }
    }

    pub(crate) fn shutdown_write(&self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown_write(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                s.close_notify();
                s.tcp.shutdown_write()
            }
        };
    }
}
