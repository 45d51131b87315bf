//! The request body as the handler reads it: straight from the connection's buffer and socket,
//! framed by Content-Length or chunked (with trailers), `100 Continue` sent on the first read,
//! bounded by `max_body` and `body_timeout`; and skipping what the handler left unread.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::Timer;
use http_types::{Body, Request};
use smol::io::{AsyncRead, AsyncReadExt as _};

use super::Options;
use super::buf::ReadBuf;
use super::request::ascii_value;
use crate::http::codec::{self, Chunked, Framing, Reject};
use crate::http::stream::Stream;

/// Most unread request body discarded to keep a connection alive; beyond it, it closes.
pub(crate) const DISCARD_LIMIT: u64 = 64 * 1024;

/// What the connection loop and the request body reader share while a body is being read.
#[derive(Debug)]
pub(super) struct Inbound {
    buf: ReadBuf,
    body: BodyState,
    /// Bytes of body delivered so far, against `max_body`.
    delivered: u64,
    max_body: u64,
    /// `Expect: 100-continue` not yet answered; answered on the first body read.
    continue_pending: bool,
    continue_written: usize,
    /// The body broke framing or a limit: the connection cannot be reused.
    failed: Option<Reject>,
    /// A chunked body's trailer section as read so far.
    trailer_section: Vec<u8>,
    /// Where the trailers go (the request's `recv_trailers`), until the body ends.
    trailers: Option<http_types::trailers::Sender>,
}

/// Where a request body's framing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyState {
    Length(u64),
    Chunked(Chunked),
    Done,
}

/// What became of a request body once the handler returned.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outcome {
    pub(super) state: BodyState,
    /// It broke its framing or a limit.
    pub(super) failed: Option<Reject>,
    /// `Expect: 100-continue` was never answered: the handler did not read it.
    pub(super) continue_pending: bool,
}

impl Inbound {
    /// Writes the `100 Continue` the client waits for, if it is still due, and flushes it.
    fn poll_continue(&mut self, io: &Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.continue_pending {
            let rest = &CONTINUE[self.continue_written..];
            let n = std::task::ready!(io.poll_write(cx, rest))?;
            self.continue_written += n;
            self.continue_pending = self.continue_written < CONTINUE.len();
        }
        if self.continue_written > 0 {
            std::task::ready!(io.poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Decodes what the buffer holds of the body into `out`: the bytes used from the buffer
    /// and the bytes produced. At the end of a chunked body its trailers are delivered.
    fn decode_buffered(
        &mut self,
        out: &mut [u8],
        cx: &mut Context<'_>,
    ) -> Result<(usize, usize), Reject> {
        let pending = self.buf.pending();
        match &mut self.body {
            BodyState::Length(left) if !pending.is_empty() => {
                let n = (*left).min(pending.len() as u64).min(out.len() as u64) as usize;
                out[..n].copy_from_slice(&pending[..n]);
                *left -= n as u64;
                if *left == 0 {
                    self.body = BodyState::Done;
                }
                Ok((n, n))
            }
            BodyState::Chunked(state) if !pending.is_empty() => {
                let (used, produced) = state.decode(pending, out, &mut self.trailer_section)?;
                if *state == Chunked::Done {
                    self.body = BodyState::Done;
                    let sender = self.trailers.take();
                    let section = std::mem::take(&mut self.trailer_section);
                    deliver_trailers(&section, sender, cx)?;
                }
                Ok((used, produced))
            }
            _ => Ok((0, 0)),
        }
    }

    /// The state of a body `body` long, read from `buf` (taken over until it is given back).
    fn new(buf: &mut ReadBuf, body: BodyState, max_body: u64) -> Inbound {
        Inbound {
            buf: std::mem::take(buf),
            body,
            delivered: 0,
            max_body,
            continue_pending: false,
            continue_written: 0,
            failed: None,
            trailer_section: Vec::new(),
            trailers: None,
        }
    }

    /// Gives the read buffer back to the connection loop once the handler is done, and says
    /// what became of the body. The reader, if the handler kept it, reads nothing more.
    pub(super) fn take_back(shared: &Mutex<Inbound>, buf: &mut ReadBuf) -> Outcome {
        let mut inbound = shared.lock().unwrap_or_else(|e| e.into_inner());
        *buf = std::mem::take(&mut inbound.buf);
        let outcome = Outcome {
            state: inbound.body,
            failed: inbound.failed,
            continue_pending: inbound.continue_pending,
        };
        inbound.failed = Some(Reject::BadRequest("the request is over"));
        outcome
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The request body as the handler reads it, straight from the connection's buffer.
#[derive(Debug)]
struct BodyReader {
    io: Arc<Stream>,
    shared: Arc<Mutex<Inbound>>,
    max_head: usize,
    /// The longest the body may stall: no byte arrives while it is being read.
    timeout: Duration,
    /// Armed while a read waits for the client; dropped when bytes arrive.
    stall: Option<Timer>,
}

impl BodyReader {
    fn new(io: &Arc<Stream>, shared: &Arc<Mutex<Inbound>>, options: &Options) -> BodyReader {
        BodyReader {
            io: io.clone(),
            shared: shared.clone(),
            max_head: options.max_head,
            timeout: options.body_timeout,
            stall: None,
        }
    }
}

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut inbound = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        let inbound = &mut *inbound;
        if let Some(reject) = inbound.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                reject.to_string(),
            )));
        }
        if let Err(e) = std::task::ready!(inbound.poll_continue(&this.io, cx)) {
            return Poll::Ready(Err(e));
        }
        loop {
            if inbound.body == BodyState::Done {
                return Poll::Ready(Ok(0));
            }
            let (used, produced) = match inbound.decode_buffered(out, cx) {
                Ok(progress) => progress,
                Err(reject) => {
                    inbound.failed = Some(reject);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        reject.to_string(),
                    )));
                }
            };
            inbound.buf.consume(used);
            if produced > 0 {
                inbound.delivered += produced as u64;
                if inbound.delivered > inbound.max_body {
                    inbound.failed = Some(Reject::BodyTooLarge);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "request body too large",
                    )));
                }
                return Poll::Ready(Ok(produced));
            }
            if inbound.body == BodyState::Done {
                return Poll::Ready(Ok(0));
            }
            if used > 0 {
                continue;
            }
            // Nothing buffered: read more from the socket.
            let room = inbound.buf.room(this.max_head);
            match this.io.poll_read(cx, room) {
                Poll::Ready(Ok(0)) => {
                    inbound.failed = Some(Reject::BadRequest("connection closed inside the body"));
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Poll::Ready(Ok(n)) => {
                    inbound.buf.filled(n);
                    this.stall = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // The timer starts with the first wait, so a body that keeps coming is
                    // never cut, and one that stops is cut `timeout` after its last byte.
                    let timeout = this.timeout;
                    let stall = this.stall.get_or_insert_with(|| Timer::after(timeout));
                    if Pin::new(stall).poll(cx).is_ready() {
                        inbound.failed = Some(Reject::BodyTimedOut);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            Reject::BodyTimedOut.to_string(),
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Hands a chunked body's trailer fields to the handler (`Request::recv_trailers`); with none,
/// the sender is dropped and the handler gets `None`.
fn deliver_trailers(
    section: &[u8],
    sender: Option<http_types::trailers::Sender>,
    cx: &mut Context<'_>,
) -> Result<(), Reject> {
    let Some(sender) = sender else {
        return Ok(());
    };
    let mut fields = [httparse::EMPTY_HEADER; codec::MAX_HEADERS];
    let fields = codec::parse_trailers(section, &mut fields)?;
    if fields.is_empty() {
        return Ok(());
    }
    let mut trailers = http_types::trailers::Trailers::new();
    for field in fields {
        let value = ascii_value(field.value, "non-ASCII trailer value")?;
        trailers.append(field.name, value);
    }
    // The channel holds one value and nothing else sends on it: the send completes at once.
    let _ = std::pin::pin!(sender.send(trailers)).poll(cx);
    Ok(())
}

/// Gives the request its body: a reader over the connection's buffer and socket, sharing the
/// buffer with this loop until the request is done.
pub(super) fn attach(
    request: &mut Request,
    framing: Framing,
    expect_continue: bool,
    io: &Arc<Stream>,
    buf: &mut ReadBuf,
    options: &Options,
) -> Option<Arc<Mutex<Inbound>>> {
    // Only a chunked body has trailers: otherwise `recv_trailers` gets `None` at once.
    let trailers = request.send_trailers();
    let (body, len, trailers) = match framing {
        Framing::None => return None,
        Framing::Length(n) => (BodyState::Length(n), usize::try_from(n).ok(), None),
        Framing::Chunked => (BodyState::Chunked(Chunked::new()), None, Some(trailers)),
    };
    let mut inbound = Inbound::new(buf, body, options.max_body);
    inbound.continue_pending = expect_continue;
    inbound.trailers = trailers;
    let shared = Arc::new(Mutex::new(inbound));
    let reader = BodyReader::new(io, &shared, options);
    request.set_body(Body::from_reader(
        smol::io::BufReader::with_capacity(4096, reader),
        len,
    ));
    Some(shared)
}

/// Reads and drops what the handler left of the body, up to [`DISCARD_LIMIT`]. `false` if the
/// connection cannot be reused (too much left, bad framing, or the client went away).
pub(super) async fn discard(
    io: &Arc<Stream>,
    buf: &mut ReadBuf,
    body: BodyState,
    options: &Options,
) -> bool {
    let shared = Arc::new(Mutex::new(Inbound::new(buf, body, DISCARD_LIMIT)));
    let mut reader = BodyReader::new(io, &shared, options);
    let mut scratch = [0u8; 1024];
    let clean = loop {
        match reader.read(&mut scratch).await {
            Ok(0) => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let mut inbound = shared.lock().unwrap_or_else(|e| e.into_inner());
    *buf = std::mem::take(&mut inbound.buf);
    clean
}
