//! An upgraded connection (HTTP/1.1 `101 Switching Protocols`): the raw stream, plain or TLS,
//! with the bytes the client sent past the request head, handed to the handler through
//! http-types' upgrade API (`Response::recv_upgrade`).
//!
//! The connection loop writes the 101 head, sends an [`Upgraded`] and then only waits for it
//! to be dropped: the connection stays counted (drain, `max_connections`) until then, and no
//! HTTP timeout applies any more.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};

use crate::stream::Stream;

/// The upgraded connection as the handler gets it (inside an `http_types::upgrade::Connection`).
#[derive(Debug)]
pub(crate) struct Upgraded {
    io: Arc<Stream>,
    /// What the client sent past the head, read before the socket.
    pending: Vec<u8>,
    at: usize,
    /// Dropped with this value: the connection loop learns that the handler is done with it.
    _open: smol::channel::Sender<()>,
}

impl Upgraded {
    /// The connection, its unread bytes, and the receiver that ends when the handler drops it.
    pub(crate) fn new(
        io: Arc<Stream>,
        pending: Vec<u8>,
    ) -> (Upgraded, smol::channel::Receiver<()>) {
        let (open, closed) = smol::channel::bounded(1);
        let upgraded = Upgraded {
            io,
            pending,
            at: 0,
            _open: open,
        };
        (upgraded, closed)
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.at < this.pending.len() {
            let n = buf.len().min(this.pending.len() - this.at);
            buf[..n].copy_from_slice(&this.pending[this.at..this.at + n]);
            this.at += n;
            if this.at == this.pending.len() {
                this.pending = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        this.io.poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.io.shutdown_write();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}
