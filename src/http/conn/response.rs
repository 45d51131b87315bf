//! Writing responses: the head (encoded by [`codec::response_head`]) and body in as few writes
//! as possible, chunked when the length is unknown, each write bounded by the write timeout;
//! and closing a connection without turning unread input into a reset.

use std::io;
use std::time::Duration;

use async_io::Timer;
use http_types::{Method, Response, StatusCode};
use smol::future::FutureExt as _;
use smol::io::AsyncReadExt as _;

/// How long a closing connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);
/// How long an error response may take to write before the connection is dropped.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
use crate::http::codec;
use crate::http::stream::Stream;

/// Most bytes of a response gathered before one write; smaller responses go out in one write.
pub(crate) const WRITE_BUFFER: usize = 16 * 1024;

/// Did the handler ask to close the connection?
pub(crate) fn wants_close(response: &Response) -> bool {
    response.iter().any(|(name, values)| {
        name.as_str() == "connection"
            && values.iter().any(|v| {
                v.as_str()
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"))
            })
    })
}

pub(super) fn plain(status: StatusCode, message: &str) -> Response {
    let mut response = Response::new(status);
    response.set_body(format!("{message}\n"));
    response
}

/// A handler's error as a response. Server errors do not show their message to the client.
/// The response to a handler's error: a client error's message, or a server error's reason
/// only (its message, which may say more than a client should see, goes to the server's
/// events as a [`crate::Event::Program`] of source `http`).
pub(crate) fn error_response(
    error: http_types::Error,
    method: Method,
    events: &dyn Fn(&crate::Event<'_>),
) -> Response {
    let status = error.status();
    if status.is_server_error() {
        let message = format!(
            "a handler failed, answered {} {} to a {}: {error}",
            u16::from(status),
            status.canonical_reason(),
            method.as_ref()
        );
        events(&crate::Event::Program {
            level: crate::Level::Error,
            source: "http",
            message: &message,
        });
    }
    if status.is_client_error() {
        plain(status, &error.to_string())
    } else {
        plain(status, status.canonical_reason())
    }
}

/// Answers a request that cannot be served, and closes the connection.
pub(super) async fn refuse(io: &Stream, out: &mut Vec<u8>, status: StatusCode, message: &str) {
    let mut response = plain(status, message);
    let written = write_response(
        io,
        out,
        &mut response,
        Method::Get,
        1,
        true,
        ERROR_WRITE_TIMEOUT,
    )
    .await;
    if written.is_ok() {
        close(io).await;
    }
}

/// Encodes and writes a response: head and (small) body in one write; large or unknown-length
/// bodies follow in chunks of up to [`WRITE_BUFFER`]. HEAD responses carry no body.
pub(crate) async fn write_response(
    io: &Stream,
    out: &mut Vec<u8>,
    response: &mut Response,
    method: Method,
    minor: u8,
    close: bool,
    timeout: Duration,
) -> io::Result<()> {
    let status = u16::from(response.status());
    let bodyless = codec::bodyless(status);
    let len = if bodyless {
        Some(0)
    } else {
        response.len().map(|n| n as u64)
    };
    let length = codec::Length::of(status, len, minor);
    let chunked = length == codec::Length::Chunked;
    let close = close || length == codec::Length::UntilClose;
    let head = codec::ResponseHead {
        status,
        reason: response.status().canonical_reason(),
        length,
        close,
        minor,
    };
    let fields = response
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |v| (name.as_str(), v.as_str())));
    out.clear();
    head.encode(fields, out);
    if method == Method::Head || bodyless {
        return send(io, out, timeout).await;
    }
    if chunked {
        return write_chunked(io, out, response, timeout).await;
    }
    // The body is read from the response itself: taking it out (`take_body`) would look up
    // and copy a content type per response.
    write_sized(io, out, response, len, timeout).await
}

/// Gathers `body` (of length `len`, or until its end if `None`: HTTP/1.0) behind what `out`
/// holds, writing whenever the buffer is full.
async fn write_sized(
    io: &Stream,
    out: &mut Vec<u8>,
    body: &mut (impl smol::io::AsyncRead + Unpin),
    len: Option<u64>,
    timeout: Duration,
) -> io::Result<()> {
    let mut remaining = len.unwrap_or(u64::MAX);
    while remaining > 0 {
        if out.len() >= WRITE_BUFFER {
            send(io, out, timeout).await?;
            out.clear();
        }
        let mut at = out.len();
        let room = (WRITE_BUFFER - at).min(usize::try_from(remaining).unwrap_or(usize::MAX));
        out.resize(at + room, 0);
        // A body that has nothing yet (it streams): what is gathered goes out first, so the
        // client sees the head and every byte without waiting for a full buffer.
        let ready = smol::future::poll_once(body.read(&mut out[at..])).await;
        let read = match ready {
            Some(read) => read,
            None => {
                out.truncate(at);
                send(io, out, timeout).await?;
                out.clear();
                at = 0;
                out.resize(room.min(WRITE_BUFFER), 0);
                body.read(&mut out[..]).await
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                out.truncate(at);
                return Err(e);
            }
        };
        out.truncate(at + n);
        if n == 0 {
            if len.is_some() {
                // Shorter than its declared length: the framing is broken, the caller closes.
                send(io, out, timeout).await?;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response body shorter than its length",
                ));
            }
            break;
        }
        remaining -= n as u64;
    }
    send(io, out, timeout).await
}

/// Writes all of `buf`, failing with `TimedOut` if the client takes longer than `timeout` to
/// accept it (a client that stopped reading). The timer is armed only if the write has to wait,
/// and is looked at before the socket on every wake-up: a kernel that frees a little send
/// space now and then (a client's receive buffer growing while it reads nothing) does not get
/// a write that retries only when the timer fires a fresh timeout each time.
pub(super) async fn send(io: &Stream, mut buf: &[u8], timeout: Duration) -> io::Result<()> {
    let mut stalled: Option<Timer> = None;
    std::future::poll_fn(|cx| {
        if let Some(timer) = stalled.as_mut() {
            if std::pin::Pin::new(timer).poll(cx).is_ready() {
                return std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )));
            }
        }
        while !buf.is_empty() {
            match io.poll_write(cx, buf) {
                std::task::Poll::Ready(Ok(0)) => {
                    return std::task::Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                std::task::Poll::Ready(Ok(n)) => buf = &buf[n..],
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => {
                    if stalled.is_none() {
                        let mut timer = Timer::after(timeout);
                        // Registered now, so that it wakes this task.
                        let _ = std::pin::Pin::new(&mut timer).poll(cx);
                        stalled = Some(timer);
                    }
                    return std::task::Poll::Pending;
                }
            }
        }
        match io.poll_flush(cx) {
            std::task::Poll::Pending if stalled.is_none() => {
                let mut timer = Timer::after(timeout);
                let _ = std::pin::Pin::new(&mut timer).poll(cx);
                stalled = Some(timer);
                std::task::Poll::Pending
            }
            other => other,
        }
    })
    .await
}

/// Streams a body of unknown length as chunks, each gathered into one write with its framing.
pub(super) async fn write_chunked(
    io: &Stream,
    out: &mut Vec<u8>,
    body: &mut (impl smol::io::AsyncRead + Unpin),
    timeout: Duration,
) -> io::Result<()> {
    const PREFIX: usize = 18; // up to 16 hex digits + CRLF
    let mut chunk = vec![0u8; WRITE_BUFFER];
    loop {
        let n = body.read(&mut chunk[PREFIX..WRITE_BUFFER - 2]).await?;
        if n == 0 {
            out.extend_from_slice(b"0\r\n\r\n");
            return send(io, out, timeout).await;
        }
        codec::push_hex(out, n as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&chunk[PREFIX..PREFIX + n]);
        out.extend_from_slice(b"\r\n");
        send(io, out, timeout).await?;
        out.clear();
    }
}

/// Closes without resetting: send FIN, then read and discard until the client closes too (or
/// [`LINGER`] passes), so that unread input cannot turn the close into a reset that destroys the
/// response on its way.
pub(crate) async fn close(io: &Stream) {
    io.shutdown_write();
    let mut scratch = [0u8; 1024];
    let until_eof = async {
        while let Ok(n) = io.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let linger = async {
        Timer::after(LINGER).await;
    };
    until_eof.or(linger).await;
}
