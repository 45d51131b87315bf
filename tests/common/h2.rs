//! An HTTP/2 client for the hyper tests (hyper's own client, on smol): connections, one
//! request, and what a pooled client retries after a GOAWAY.

use std::error::Error as _;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};

/// hyper's `Read`/`Write` over a futures-io connection (a socket, a TLS session).
pub struct Io<T>(pub T);

impl<T: AsyncRead + Unpin> hyper::rt::Read for Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
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

impl<T: AsyncWrite + Unpin> hyper::rt::Write for Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

#[derive(Clone)]
pub struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    fn execute(&self, future: F) {
        smol::spawn(future).detach();
    }
}

/// An HTTP/2 connection (prior knowledge) to `addr`.
pub async fn connect_h2(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let socket = Async::<TcpStream>::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    handshake_h2(socket).await
}

/// HTTP/2 over `io`, its connection a task on smol's global executor.
pub async fn handshake_h2<T>(io: T) -> Result<SendRequest<Empty<Bytes>>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::handshake(Exec, Io(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    smol::spawn(async move {
        let _ = connection.await;
    })
    .detach();
    Ok(sender)
}

/// The HTTP/2 error a stream ended with, if any.
pub fn h2_error(error: &hyper::Error) -> Option<&h2::Error> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = cause.source();
    }
    None
}

/// What a pooled client retries on a new connection: a request never sent, a stream above a
/// GOAWAY's last id, or one refused before processing.
pub fn retriable(error: &hyper::Error) -> bool {
    error.is_canceled()
        || h2_error(error).is_some_and(|e| {
            e.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR))
        })
}

/// One request; `Ok(None)` if it may be retried on a new connection.
pub async fn get_h2(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Result<Option<(u16, String)>, String> {
    if sender.ready().await.is_err() {
        return Ok(None);
    }
    let request = hyper::Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.into_body().collect().await;
            let body = body.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok(Some((status, String::from_utf8_lossy(&body).into_owned())))
        }
        Err(error) if retriable(&error) => Ok(None),
        Err(error) => Err(format!("{error:?}")),
    }
}
