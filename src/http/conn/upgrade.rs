//! Upgraded connections (HTTP/1.1 `101 Switching Protocols`): the raw stream, plain or TLS,
//! with the bytes the client sent past the request head.
//!
//! A handler gets one in either of two ways: http-types' `Response::recv_upgrade` (the
//! connection is boxed in an `http_types::upgrade::Connection`), or [`crate::upgrade`], which
//! gives baton's own [`Upgraded`], a connection that can also move to the successor
//! ([`Upgraded::hand_over`]) and be resumed there by name ([`crate::Server::on_upgraded`]).
//!
//! The connection loop writes the 101 head, hands the connection out and then only serves its
//! requests to move: it stays counted (drain, `max_connections`) until the handler drops it,
//! and no HTTP timeout applies any more.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};

use crate::drain::Drain;
use crate::http::stream::Stream;

/// An upgraded connection: read and write it as the new protocol's byte stream. Dropping it
/// closes the connection; [`Upgraded::hand_over`] moves it to the successor instead.
#[derive(Debug)]
pub struct Upgraded {
    io: Arc<Stream>,
    /// What the client sent that was read before the handler got the connection.
    pending: Vec<u8>,
    at: usize,
    /// To the task that handed it out, on the server's thread: requests to move it. When the
    /// last sender is dropped (with this value), that task ends.
    back: smol::channel::Sender<HandOver>,
}

/// A request to move an upgraded connection to the successor.
#[derive(Debug)]
pub(crate) struct HandOver {
    name: String,
    state: serde_json::Value,
    held: Vec<u8>,
    reply: smol::channel::Sender<io::Result<()>>,
}

impl Upgraded {
    /// The connection, the bytes already read from it, and the receiver of its hand-over
    /// requests (closed when the handler drops the connection).
    pub(crate) fn new(
        io: Arc<Stream>,
        pending: Vec<u8>,
    ) -> (Upgraded, smol::channel::Receiver<HandOver>) {
        let (back, requests) = smol::channel::bounded(1);
        let upgraded = Upgraded {
            io,
            pending,
            at: 0,
            back,
        };
        (upgraded, requests)
    }

    /// Moves this connection to the successor, under `name` (its application resumes it with
    /// the handler it registered for that name, see [`crate::Server::on_upgraded`]), with
    /// `state` and the bytes `held` that were read from it but not consumed (a partial
    /// frame, say). Call it at a message boundary of the protocol, once the drain has started
    /// ([`crate::drain`]): only then is there a successor to take it.
    ///
    /// On success the connection is the successor's; the client notices nothing. Otherwise
    /// (no successor, connection hand-over off, a connection in a TLS session, the successor not
    /// taking it within 1 s) the connection comes back with the reason, to be closed as the
    /// protocol says (a WebSocket: 1012).
    pub async fn hand_over(
        self,
        name: &str,
        state: serde_json::Value,
        held: &[u8],
    ) -> Result<(), (Upgraded, io::Error)> {
        let mut unread = held.to_vec();
        unread.extend_from_slice(&self.pending[self.at..]);
        let (reply, answer) = smol::channel::bounded(1);
        let request = HandOver {
            name: name.to_owned(),
            state,
            held: unread,
            reply,
        };
        if self.back.send(request).await.is_err() {
            return Err((
                self,
                io::Error::other("the server of this connection is gone"),
            ));
        }
        match answer.recv().await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err((self, error)),
            Err(_) => Err((
                self,
                io::Error::other("the server of this connection is gone"),
            )),
        }
    }
}

/// Serves an upgraded connection's requests to move until the handler drops it.
pub(crate) async fn serve(
    io: Arc<Stream>,
    requests: smol::channel::Receiver<HandOver>,
    drain: &Drain,
) {
    while let Ok(request) = requests.recv().await {
        let moved = move_to_successor(&io, drain, &request).await;
        let _ = request.reply.try_send(moved);
    }
}

async fn move_to_successor(io: &Stream, drain: &Drain, request: &HandOver) -> io::Result<()> {
    let Some(stream) = io.plain() else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a connection in a TLS session cannot move: its session stays with this process",
        ));
    };
    if !drain.can_hand_over() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no successor to hand it to: not draining after a restart with connection \
             hand-over",
        ));
    }
    let (name, state, held) = (&request.name, &request.state, &request.held);
    drain.hand_over(stream, name, state, held).await
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

/// Where a handler that called [`crate::upgrade`] gets its connection, once the 101 is
/// written: a future of the [`Upgraded`] (`None` if the connection could not be upgraded).
pub struct UpgradeReceiver(Pin<Box<dyn std::future::Future<Output = Option<Upgraded>> + Send>>);

impl std::fmt::Debug for UpgradeReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpgradeReceiver")
    }
}

impl std::future::Future for UpgradeReceiver {
    type Output = Option<Upgraded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Upgraded>> {
        // One receive, kept across polls: its registration is what a send wakes.
        self.0.as_mut().poll(cx)
    }
}

/// Where the connection loop sends the [`Upgraded`] (kept in the response's extensions).
#[derive(Debug, Clone)]
pub(crate) struct Slot(pub(crate) smol::channel::Sender<Upgraded>);

/// Asks for baton's own upgraded connection for this response (which the handler answers with
/// `101 Switching Protocols`): unlike http-types' `recv_upgrade`, an [`Upgraded`] can move to
/// the successor. Await the receiver in a task of its own: the connection comes once the
/// handler has returned the response and its head is written.
pub fn upgrade(response: &mut http_types::Response) -> UpgradeReceiver {
    let (sender, receiver) = smol::channel::bounded(1);
    response.ext_mut().insert(Slot(sender));
    UpgradeReceiver(Box::pin(async move { receiver.recv().await.ok() }))
}
