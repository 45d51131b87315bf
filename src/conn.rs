//! One connection's request/response loop: wait for a request, parse its head from the
//! connection's own read buffer ([`crate::codec`]), call the handler, write the response in as
//! few writes as possible, and decide whether the connection stays open.
//!
//! One read buffer per connection, reused across requests (pipelined requests stay in it and
//! are answered in order), grown only for a large head and shrunk back after it. Draining
//! changes two things: the next response carries `Connection: close` (and the connection is
//! closed after it), and a connection idle at a request boundary is closed after a short grace,
//! long enough for a request the client already sent to arrive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_io::Timer;
use http_types::{Body, Method, Request, Response, StatusCode, Url, Version};
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncReadExt as _};

use crate::codec::{self, Chunked, Framing, Reject};
use crate::drain::{ConnectionGuard, Drain};
use crate::stream::Stream;

/// Most bytes of a response gathered before one write; smaller responses go out in one write.
pub(crate) const WRITE_BUFFER: usize = 16 * 1024;
/// The read buffer a connection starts with; a larger head grows it, up to `max_head`.
const FIRST_READ_BUFFER: usize = 2048;
/// Most unread request body discarded to keep a connection alive; beyond it, it closes.
const DISCARD_LIMIT: u64 = 64 * 1024;
/// How long an error response may take to write before the connection is dropped.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long handing a connection to the successor may take before it is closed here instead.
const RELAY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a closing connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// Per-connection settings, copied from the server's builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) header_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) max_head: usize,
    pub(crate) max_body: u64,
    pub(crate) write_timeout: Duration,
    pub(crate) body_timeout: Duration,
}

/// Bytes read from the connection and not yet consumed: `data[start..end]`.
#[derive(Debug, Default)]
struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into: moves pending bytes to the front, and grows the buffer (doubling,
    /// up to `max`) only if it is full.
    fn room(&mut self, max: usize) -> &mut [u8] {
        if self.data.is_empty() {
            self.data.resize(FIRST_READ_BUFFER.min(max.max(1)), 0);
        }
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < max {
            let grown = (self.data.len() * 2).min(max);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    /// Back to the first size once a large head is done with, if what is pending fits.
    fn shrink(&mut self) {
        let pending = self.end - self.start;
        if self.data.len() > FIRST_READ_BUFFER && pending <= FIRST_READ_BUFFER {
            self.data.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
            self.data.truncate(FIRST_READ_BUFFER);
            self.data.shrink_to_fit();
        }
    }

    /// One read from the socket into the buffer if something is there, without waiting.
    fn try_fill(&mut self, io: &Stream, max: usize) -> io::Result<usize> {
        let room = self.room(max);
        if room.is_empty() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let n = io.try_read(room)?;
        self.end += n;
        Ok(n)
    }

    /// One read from the socket into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self, io: &Stream, max: usize) -> io::Result<usize> {
        let room = self.room(max);
        if room.is_empty() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let n = io.read(room).await?;
        self.end += n;
        Ok(n)
    }
}

/// What the connection loop and the request body reader share while a body is being read.
#[derive(Debug)]
struct Inbound {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    Chunked(Chunked),
    Done,
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
        while inbound.continue_pending {
            let rest = &CONTINUE[inbound.continue_written..];
            match this.io.poll_write(cx, rest) {
                Poll::Ready(Ok(n)) => {
                    inbound.continue_written += n;
                    inbound.continue_pending = inbound.continue_written < CONTINUE.len();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if inbound.continue_written > 0 {
            match this.io.poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            let pending = inbound.buf.pending();
            let (used, produced) = match &mut inbound.body {
                BodyState::Done => return Poll::Ready(Ok(0)),
                BodyState::Length(left) if !pending.is_empty() => {
                    let n = (*left).min(pending.len() as u64).min(out.len() as u64) as usize;
                    out[..n].copy_from_slice(&pending[..n]);
                    *left -= n as u64;
                    if *left == 0 {
                        inbound.body = BodyState::Done;
                    }
                    (n, n)
                }
                BodyState::Chunked(state) if !pending.is_empty() => {
                    match state.decode(pending, out, &mut inbound.trailer_section) {
                        Ok((used, produced)) => {
                            if *state == Chunked::Done {
                                inbound.body = BodyState::Done;
                                let sender = inbound.trailers.take();
                                let section = std::mem::take(&mut inbound.trailer_section);
                                if let Err(reject) = deliver_trailers(&section, sender, cx) {
                                    inbound.failed = Some(reject);
                                    return Poll::Ready(Err(io::Error::new(
                                        io::ErrorKind::InvalidData,
                                        reject.to_string(),
                                    )));
                                }
                            }
                            (used, produced)
                        }
                        Err(reject) => {
                            inbound.failed = Some(reject);
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                reject.to_string(),
                            )));
                        }
                    }
                }
                _ => (0, 0),
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
                    inbound.buf.end += n;
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
        let value = std::str::from_utf8(field.value)
            .ok()
            .filter(|v| v.is_ascii())
            .ok_or(Reject::BadRequest("non-ASCII trailer value"))?;
        trailers.append(field.name, value);
    }
    // The channel holds one value and nothing else sends on it: the send completes at once.
    let _ = std::pin::pin!(sender.send(trailers)).poll(cx);
    Ok(())
}

/// Per-connection state for building requests cheaply: the `Url` of the last Host is reused
/// (cloned, then path and query set) instead of parsing a formatted string each time.
struct Requests {
    base: Option<(Vec<u8>, Url)>,
    peer: String,
    local_text: String,
}

impl Requests {
    fn build(&mut self, head: &codec::Head<'_, '_>) -> Result<Request, Reject> {
        let method = Method::from_str(head.method).map_err(|_| Reject::NotImplemented("method"))?;
        let host = head.host.unwrap_or(self.local_text.as_bytes());
        let mut url = match &self.base {
            Some((cached, url)) if cached == host => url.clone(),
            _ => {
                let text =
                    std::str::from_utf8(host).map_err(|_| Reject::BadRequest("invalid Host"))?;
                if text.contains(['/', '?', '#', '@']) {
                    return Err(Reject::BadRequest("invalid Host"));
                }
                let url = Url::parse(&format!("http://{text}/"))
                    .map_err(|_| Reject::BadRequest("invalid Host"))?;
                self.base = Some((host.to_vec(), url.clone()));
                url
            }
        };
        let target = head.target;
        if target.starts_with('/') {
            let (path, query) = match target.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (target, None),
            };
            if path.contains('#') || query.is_some_and(|q| q.contains('#')) {
                return Err(Reject::BadRequest("fragment in the request target"));
            }
            url.set_path(path);
            url.set_query(query);
        } else if target.starts_with("http://") || target.starts_with("https://") {
            url = Url::parse(target).map_err(|_| Reject::BadRequest("invalid request target"))?;
        } else if target == "*" && method == Method::Options {
            // Asterisk-form: the server as a whole; the URL stays at "/".
        } else {
            return Err(Reject::BadRequest("invalid request target"));
        }
        let mut request = Request::new(method, url);
        request.set_version(Some(if head.minor == 0 {
            Version::Http1_0
        } else {
            Version::Http1_1
        }));
        request.set_peer_addr(Some(&self.peer));
        request.set_local_addr(Some(&self.local_text));
        for header in head.headers {
            let value = std::str::from_utf8(header.value)
                .ok()
                .filter(|v| v.is_ascii())
                .ok_or(Reject::BadRequest("non-ASCII header value"))?;
            request.append_header(header.name, value);
        }
        Ok(request)
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve<F, Fut>(
    incoming: Incoming,
    handler: Rc<F>,
    drain: Rc<Drain>,
    _connection: ConnectionGuard,
    options: Options,
) where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = http_types::Result<Response>>,
{
    let Incoming {
        stream,
        peer,
        local,
        tls,
        pending,
    } = incoming;
    let Some(stream) = handshake(stream, tls, options.header_timeout).await else {
        return;
    };
    let io = Arc::new(stream);
    let mut requests = Requests {
        base: None,
        peer,
        local_text: local,
    };
    let mut buf = ReadBuf {
        end: pending.len(),
        data: pending,
        start: 0,
    };
    let mut out = Vec::new();
    let drain_started = std::pin::pin!(drain.started());
    let mut idle = Idle::new(drain_started, &options);
    let mut eager = EagerRead::default();
    loop {
        // A pipelined request may already be buffered; otherwise wait for one.
        // Draining with a relay to the successor: this connection is at a request boundary,
        // so it moves there, with whatever the client already sent.
        if drain.is_draining() && hand_over(&io, &drain, &requests, buf.pending()).await {
            return;
        }
        if buf.pending().is_empty() && !drain.is_draining() && eager.try_now(&io) {
            // Under load the client's next request is usually on its way: let the other
            // connections run first, then read once without waiting. A hit saves registering
            // for readiness (an epoll_ctl) and a trip through the reactor.
            smol::future::yield_now().await;
            match buf.try_fill(&io, options.max_head) {
                Ok(0) => break,
                Ok(_) => eager.hit(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => eager.miss(),
                Err(_) => break,
            }
        }
        if buf.pending().is_empty() && !idle.wait(&io, &drain, &options).await {
            // Idle when a drain started: hand over if possible, else close.
            if drain.is_draining() && hand_over(&io, &drain, &requests, buf.pending()).await {
                return;
            }
            break;
        }
        let next = next_request(&io, &mut buf, &mut requests, &options);
        let timeout = async {
            Timer::after(options.header_timeout).await;
            Err(HeadError::TimedOut)
        };
        let next = match next.or(timeout).await {
            Ok(next) => next,
            Err(HeadError::Closed) => break,
            Err(HeadError::TimedOut) => {
                refuse(
                    &io,
                    &mut out,
                    StatusCode::RequestTimeout,
                    "request head timed out",
                )
                .await;
                break;
            }
            Err(HeadError::Reject(reject)) => {
                refuse(&io, &mut out, reject.status(), &reject.to_string()).await;
                break;
            }
        };
        let Next {
            request,
            framing,
            keep_alive,
            expect_continue,
            minor,
        } = next;
        if let Framing::Length(n) = framing {
            if n > options.max_body {
                let reject = Reject::BodyTooLarge;
                refuse(&io, &mut out, reject.status(), &reject.to_string()).await;
                break;
            }
        }
        let in_flight = drain.request();
        let method = request.method();
        let (request, inbound) =
            attach_body(request, framing, expect_continue, &io, &mut buf, &options);
        let mut response = match handler(request).await {
            Ok(response) => response,
            Err(error) => error_response(error),
        };
        // Take the read buffer back from the body reader, whatever the handler did with it.
        let body_state = inbound.map(|shared| {
            let mut inbound = shared.lock().unwrap_or_else(|e| e.into_inner());
            buf = std::mem::take(&mut inbound.buf);
            let state = (inbound.body, inbound.failed, inbound.continue_pending);
            inbound.failed = Some(Reject::BadRequest("the request is over"));
            state
        });
        // A draining process closes connections, unless it can hand them over.
        let closing = drain.is_draining() && !relayable(&io, &drain);
        let mut close_after = !keep_alive || closing || wants_close(&response);
        let mut discard = None;
        if let Some((body, failed, continue_pending)) = body_state {
            match failed {
                // The body broke its framing or a limit: whatever the handler made of that, the
                // client learns what was wrong, and the connection cannot be trusted further.
                Some(reject) => {
                    response = plain(reject.status(), &reject.to_string());
                    close_after = true;
                }
                // Never asked for: the client may not send it at all, so do not wait for it.
                None if continue_pending && body != BodyState::Done => close_after = true,
                None if body != BodyState::Done => discard = Some(body),
                None => {}
            }
        }
        let timeout = options.write_timeout;
        let written =
            write_response(&io, &mut out, response, method, minor, close_after, timeout).await;
        drop(in_flight);
        if let Err(error) = written {
            if error.kind() == io::ErrorKind::TimedOut {
                // Unsent data would keep the socket (and its buffers) alive: reset instead.
                io.abort();
            }
            break;
        }
        if let Some(body) = discard {
            if !discard_body(&io, &mut buf, body, &options).await {
                close_after = true;
            }
        }
        if close_after {
            close(&io).await;
            break;
        }
        idle.restart();
    }
}

/// When to read a connection's next request without waiting for readiness first. It pays
/// off under load, when the request is there by the time the other connections had their
/// turn; when the client is slower, each attempt is a wasted `recv`, so after a miss the
/// connection skips attempts, twice as many after each further miss (up to 64), and goes back
/// to trying every time after a hit.
#[derive(Debug, Default)]
struct EagerRead {
    /// Attempts still to skip.
    skip: u8,
    /// Misses in a row (the backoff's exponent).
    misses: u8,
}

impl EagerRead {
    const MAX_SKIP: u8 = 64;

    /// Whether to try now (never for TLS, whose records go through the session).
    fn try_now(&mut self, io: &Stream) -> bool {
        if !io.can_try_read() {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    fn hit(&mut self) {
        self.misses = 0;
    }

    fn miss(&mut self) {
        self.skip = (1u8 << self.misses.min(6)).min(Self::MAX_SKIP);
        self.misses = self.misses.saturating_add(1);
    }
}

/// A connection just accepted, with what the loop needs to know about it.
pub(crate) struct Incoming {
    pub(crate) stream: Stream,
    /// The client's address, as requests report it.
    pub(crate) peer: String,
    /// The listener's address, as requests report it.
    pub(crate) local: String,
    /// The listener's TLS acceptor, for a `tls:` listener.
    pub(crate) tls: Option<Tls>,
    /// Bytes already read from it (by the process that handed it over) and not yet parsed.
    pub(crate) pending: Vec<u8>,
}

/// The TLS acceptor of a `tls:` listener (nothing without the `tls` feature).
#[cfg(feature = "tls")]
pub(crate) type Tls = futures_rustls::TlsAcceptor;
/// The TLS acceptor of a `tls:` listener (nothing without the `tls` feature).
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = std::convert::Infallible;

/// Runs the TLS handshake for a `tls:` listener's connection, bounded by `timeout`: a client
/// that never finishes it is dropped like one that never finishes its head. `None`: dropped.
async fn handshake(stream: Stream, tls: Option<Tls>, timeout: Duration) -> Option<Stream> {
    let Some(acceptor) = tls else {
        return Some(stream);
    };
    #[cfg(feature = "tls")]
    {
        let Stream::Tcp(tcp) = stream else {
            return Some(stream);
        };
        let tcp = Arc::new(tcp);
        let accepted = async { acceptor.accept(crate::tls::Tcp(tcp.clone())).await.ok() };
        let expired = async {
            Timer::after(timeout).await;
            None
        };
        let session = accepted.or(expired).await?;
        Some(Stream::Tls(Box::new(crate::tls::Session {
            tcp,
            tls: std::sync::Mutex::new(session),
        })))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = timeout;
        match acceptor {}
    }
}

enum HeadError {
    Closed,
    TimedOut,
    Reject(Reject),
}

/// A request whose head has been read, and how its connection goes on.
struct Next {
    request: Request,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    minor: u8,
}

/// Reads until `buf` holds a whole request head, then builds the request from it and consumes
/// the head from the buffer (a pipelined request behind it stays there).
async fn next_request(
    io: &Stream,
    buf: &mut ReadBuf,
    requests: &mut Requests,
    options: &Options,
) -> Result<Next, HeadError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; codec::MAX_HEADERS];
        let next = match codec::parse_head(buf.pending(), &mut headers, options.max_head) {
            Ok(Some(head)) => {
                let request = requests.build(&head).map_err(HeadError::Reject)?;
                let next = Next {
                    request,
                    framing: head.framing,
                    keep_alive: head.keep_alive,
                    expect_continue: head.expect_continue,
                    minor: head.minor,
                };
                Some((next, head.len))
            }
            Ok(None) => None,
            Err(reject) => return Err(HeadError::Reject(reject)),
        };
        if let Some((next, len)) = next {
            buf.consume(len);
            buf.shrink();
            return Ok(next);
        }
        match buf.fill(io, options.max_head).await {
            Ok(0) if buf.pending().is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Reject(Reject::BadRequest(
                    "connection closed inside the head",
                )));
            }
            Ok(_) => {}
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// Gives the request its body: a reader over the connection's buffer and socket, sharing the
/// buffer with this loop until the request is done.
fn attach_body(
    mut request: Request,
    framing: Framing,
    expect_continue: bool,
    io: &Arc<Stream>,
    buf: &mut ReadBuf,
    options: &Options,
) -> (Request, Option<Arc<Mutex<Inbound>>>) {
    // Only a chunked body has trailers: otherwise `recv_trailers` gets `None` at once.
    let trailers = request.send_trailers();
    let (body, len, trailers) = match framing {
        Framing::None => return (request, None),
        Framing::Length(n) => (BodyState::Length(n), usize::try_from(n).ok(), None),
        Framing::Chunked => (BodyState::Chunked(Chunked::new()), None, Some(trailers)),
    };
    let shared = Arc::new(Mutex::new(Inbound {
        buf: std::mem::take(buf),
        body,
        delivered: 0,
        max_body: options.max_body,
        continue_pending: expect_continue,
        continue_written: 0,
        failed: None,
        trailer_section: Vec::new(),
        trailers,
    }));
    let reader = BodyReader::new(io, &shared, options);
    request.set_body(Body::from_reader(
        smol::io::BufReader::with_capacity(4096, reader),
        len,
    ));
    (request, Some(shared))
}

/// Reads and drops what the handler left of the body, up to [`DISCARD_LIMIT`]. `false` if the
/// connection cannot be reused (too much left, bad framing, or the client went away).
async fn discard_body(
    io: &Arc<Stream>,
    buf: &mut ReadBuf,
    body: BodyState,
    options: &Options,
) -> bool {
    let shared = Arc::new(Mutex::new(Inbound {
        buf: std::mem::take(buf),
        body,
        delivered: 0,
        max_body: DISCARD_LIMIT,
        continue_pending: false,
        continue_written: 0,
        failed: None,
        trailer_section: Vec::new(),
        trailers: None,
    }));
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

/// What a connection waits on between requests, kept for its whole life so that waiting
/// registers nothing new: the listener for the start of a drain, one keep-alive timer re-armed
/// only when it fires, and when the last request was done.
pub(crate) struct Idle<'a, D> {
    drain_started: Pin<&'a mut D>,
    timer: Timer,
    since: Instant,
}

impl<'a, D: Future<Output = ()>> Idle<'a, D> {
    /// `drain_started` is the connection's pinned `Drain::started()`.
    pub(crate) fn new(drain_started: Pin<&'a mut D>, options: &Options) -> Self {
        Idle {
            drain_started,
            timer: Timer::after(options.keep_alive_timeout),
            since: Instant::now(),
        }
    }

    /// A request is done: the keep-alive timeout counts from now.
    pub(crate) fn restart(&mut self) {
        self.since = Instant::now();
    }

    /// Waits until the client sends something (or closes). Returns `false` if the connection
    /// should be closed instead: idle past the keep-alive timeout, or idle through the grace
    /// of a drain.
    pub(crate) async fn wait(&mut self, io: &Stream, drain: &Drain, options: &Options) -> bool {
        let Idle {
            drain_started,
            timer,
            since,
        } = self;
        let readable = async { io.readable().await.is_ok() };
        let grace = async {
            // Once draining, the drain future has completed and must not be polled again.
            if !drain.is_draining() {
                drain_started.as_mut().await;
            }
            // With a relay the connection moves at once; no request can race a close.
            if !relayable(io, drain) {
                Timer::after(options.idle_grace).await;
            }
            false
        };
        let idle = async {
            let deadline = *since + options.keep_alive_timeout;
            loop {
                if Instant::now() >= deadline {
                    return false;
                }
                // The timer may still hold an earlier deadline: re-arm it only when it fires,
                // not on every request.
                (&mut *timer).await;
                timer.set_at(deadline);
            }
        };
        readable.or(grace).or(idle).await
    }
}

/// Can this connection be handed to the successor? (Plain TCP only: a TLS session's state,
/// and a Unix socket's peer, stay with this process.)
fn relayable(io: &Stream, drain: &Drain) -> bool {
    matches!(io, Stream::Tcp(_)) && drain.relay().is_some()
}

/// Sends the connection to the successor. `true`: it is the successor's now; drop it without
/// closing it. `false`: it stays here (no relay, or the relay failed: then no more are sent).
async fn hand_over(io: &Stream, drain: &Drain, requests: &Requests, pending: &[u8]) -> bool {
    let (Stream::Tcp(tcp), Some(relay)) = (io, drain.relay()) else {
        return false;
    };
    let sent = relay.send(tcp.get_ref(), &requests.peer, &requests.local_text, pending);
    // A successor that stops reading its relay must not hold this connection hostage.
    let stalled = async {
        Timer::after(RELAY_TIMEOUT).await;
        Err(io::ErrorKind::TimedOut.into())
    };
    match sent.or(stalled).await {
        Ok(()) => true,
        Err(_) => {
            drain.relay_failed();
            false
        }
    }
}

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

fn plain(status: StatusCode, message: &str) -> Response {
    let mut response = Response::new(status);
    response.set_body(format!("{message}\n"));
    response
}

/// A handler's error as a response. Server errors do not show their message to the client.
pub(crate) fn error_response(error: http_types::Error) -> Response {
    let status = error.status();
    if status.is_client_error() {
        plain(status, &error.to_string())
    } else {
        plain(status, status.canonical_reason())
    }
}

/// Answers a request that cannot be served, and closes the connection.
async fn refuse(io: &Stream, out: &mut Vec<u8>, status: StatusCode, message: &str) {
    let response = plain(status, message);
    let written =
        write_response(io, out, response, Method::Get, 1, true, ERROR_WRITE_TIMEOUT).await;
    if written.is_ok() {
        close(io).await;
    }
}

/// Encodes and writes a response: head and (small) body in one write; large or unknown-length
/// bodies follow in chunks of up to [`WRITE_BUFFER`]. HEAD responses carry no body.
pub(crate) async fn write_response(
    io: &Stream,
    out: &mut Vec<u8>,
    mut response: Response,
    method: Method,
    minor: u8,
    close: bool,
    timeout: Duration,
) -> io::Result<()> {
    let status = u16::from(response.status());
    let mut body = response.take_body();
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    let len = if bodyless {
        Some(0)
    } else {
        body.len().map(|n| n as u64)
    };
    // Unknown length: chunked for HTTP/1.1; an HTTP/1.0 client reads until the close.
    let chunked = len.is_none() && minor == 1;
    let close = close || (len.is_none() && minor == 0);

    out.clear();
    out.extend_from_slice(if minor == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    codec::push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(response.status().canonical_reason().as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, values) in response.iter() {
        let name = name.as_str();
        if matches!(name, "content-length" | "transfer-encoding" | "connection") {
            continue;
        }
        has_date |= name == "date";
        for value in values.iter() {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        codec::date::push_now(out);
        out.extend_from_slice(b"\r\n");
    }
    match (len, bodyless) {
        (_, true) if status != 304 => {}
        (Some(n), _) => {
            out.extend_from_slice(b"content-length: ");
            codec::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (None, _) if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (None, _) => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if method == Method::Head || bodyless {
        return send(io, out, timeout).await;
    }
    if chunked {
        return write_chunked(io, out, &mut body, timeout).await;
    }
    // Gather the body behind the head; write whenever the buffer is full. Without a length
    // (HTTP/1.0), the body runs until its end and the connection closes after it.
    let mut remaining = len.unwrap_or(u64::MAX);
    while remaining > 0 {
        if out.len() >= WRITE_BUFFER {
            send(io, out, timeout).await?;
            out.clear();
        }
        let at = out.len();
        let room = (WRITE_BUFFER - at).min(usize::try_from(remaining).unwrap_or(usize::MAX));
        out.resize(at + room, 0);
        let n = match body.read(&mut out[at..]).await {
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
/// accept it (a client that stopped reading). The timer is armed only if the write has to wait.
async fn send(io: &Stream, buf: &[u8], timeout: Duration) -> io::Result<()> {
    let stalled = async {
        Timer::after(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading",
        ))
    };
    io.write_all(buf).or(stalled).await
}

/// Streams a body of unknown length as chunks, each gathered into one write with its framing.
async fn write_chunked(
    io: &Stream,
    out: &mut Vec<u8>,
    body: &mut Body,
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_io::Async;

    /// The eager read backs off after misses (1, 2, 4 ... 64 skipped attempts) and is back
    /// to every request after a hit.
    #[test]
    fn eager_read_backs_off_after_misses_and_recovers_on_a_hit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let io = Stream::Tcp(Async::new(listener.accept().unwrap().0).unwrap());
        let mut eager = EagerRead::default();
        let mut skipped_after = Vec::new();
        for _ in 0..9 {
            assert!(eager.try_now(&io));
            eager.miss();
            let mut skipped = 0;
            while !eager.try_now(&io) {
                skipped += 1;
            }
            skipped_after.push(skipped);
        }
        assert_eq!(skipped_after, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        eager.hit();
        for _ in 0..10 {
            assert!(eager.try_now(&io));
            eager.hit();
        }
        eager.miss();
        assert!(!eager.try_now(&io), "one skip after the first miss again");
        assert!(eager.try_now(&io));
    }

    /// A read without waiting finds nothing on a quiet connection, then what the client sent.
    #[test]
    fn try_fill_reads_only_what_is_there() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let io = Stream::Tcp(Async::new(listener.accept().unwrap().0).unwrap());
        let mut buf = ReadBuf::default();
        let quiet = buf.try_fill(&io, 1024).unwrap_err();
        assert_eq!(quiet.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match buf.try_fill(&io, 1024) {
                Ok(n) => {
                    assert_eq!(n, 16);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(buf.pending(), b"GET / HTTP/1.1\r\n");
    }
}
