//! One connection's request/response loop: wait for a request, parse its head from the
//! connection's own read buffer ([`crate::http::codec`]), call the handler, write the response in as
//! few writes as possible, and decide whether the connection stays open.
//!
//! One read buffer per connection, reused across requests (pipelined requests stay in it and
//! are answered in order), grown only for a large head and shrunk back after it. Draining
//! changes two things: the next response carries `Connection: close` (and the connection is
//! closed after it), and a connection idle at a request boundary is closed after a short grace,
//! long enough for a request the client already sent to arrive.
//!
//! | part | owns |
//! |---|---|
//! | [`buf`] | the read buffer and the eager read |
//! | [`body`] | the request body reader, and skipping an unread body |
//! | [`request`] | building the `Request` from a parsed head |
//! | [`response`] | writing responses, closing |
//! | this module | the loop, and its decision after each response ([`After`]) |

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Timer;
use http_types::{Request, Response, StatusCode};
use smol::future::FutureExt as _;

use crate::Deadline;
use crate::drain::{Busy, Drain};
use crate::http::codec::{self, Framing, Reject};
use crate::http::stream::Stream;

mod body;
mod buf;
mod head;
mod idle;
mod request;
mod response;
mod upgrade;

use body::{BodyState, Inbound};
use buf::{EagerRead, ReadBuf};
use head::{HeadError, Next, next_request};
// (async-h1's loop has the same test.)
#[cfg(all(test, feature = "async-h1"))]
pub(crate) use idle::a_request_races_the_drain;
pub(crate) use idle::{Idle, KEEP_ALIVE, Waited};
use idle::{hand_over, relayable};
use request::Requests;
use response::{plain, refuse};

// The async-h1 loop (`crate::http::h1`) shares these decisions and sizes.
#[cfg(feature = "async-h1")]
pub(crate) use body::DISCARD_LIMIT;
#[cfg(feature = "async-h1")]
pub(crate) use response::WRITE_BUFFER;
pub(crate) use response::{close, error_response, wants_close, write_response};
pub use upgrade::{UpgradeReceiver, Upgraded, upgrade};

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

impl From<&crate::http::Options> for Options {
    /// The settings one connection needs, with the lower bounds applied.
    fn from(config: &crate::http::Options) -> Options {
        let c = config;
        Options {
            header_timeout: c.header_timeout,
            keep_alive_timeout: c.keep_alive_timeout,
            idle_grace: c.idle_grace,
            max_head: c.max_head_bytes.max(64),
            max_body: c.max_body_bytes,
            write_timeout: c.write_timeout,
            body_timeout: c.body_timeout,
        }
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve<F, Fut>(
    incoming: Incoming,
    handler: Rc<F>,
    lean: Option<crate::http::lean::Handler>,
    drain: Drain,
    options: Options,
    events: Rc<dyn Fn(&crate::Event<'_>)>,
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
        fresh,
    } = incoming;
    let first_head = fresh.then(|| Instant::now() + options.header_timeout);
    let Some(stream) = handshake(stream, tls, options.header_timeout).await else {
        return;
    };
    let mut conn = Connection {
        io: Arc::new(stream),
        requests: Requests::new(peer, local),
        buf: ReadBuf::with(pending),
        // Room for a response head: it would otherwise grow through five reallocations.
        out: Vec::with_capacity(256),
        eager: EagerRead::default(),
        drain: &drain,
        events: &*events,
        options,
        first_head,
        peer_done: false,
        lean: lean.map(|handler| Lean {
            handler,
            fields: Vec::new(),
            body: Vec::new(),
        }),
    };
    let drain_started = std::pin::pin!(drain.wait());
    let mut idle = Idle::new(drain_started, true, &options, first_head);
    while let Some((work, in_flight)) = conn.next(&mut idle).await {
        let after = match work {
            Work::Full(next) => conn.answer(next, in_flight, &*handler).await,
            Work::Lean { close, keep_alive } => {
                conn.peer_done = !keep_alive;
                conn.answer_lean(close, in_flight).await
            }
        };
        match after {
            After::KeepAlive => idle.restart(),
            // The client said it sends nothing more and all it sent was read: FIN, and the
            // close follows at once (its `Connection: close` promises no further request).
            After::Close if conn.peer_done && conn.buf.pending().is_empty() => {
                conn.io.shutdown_write();
                break;
            }
            // Otherwise it may still be sending: read until it closes too, so that the close
            // cannot turn into a reset that destroys the response.
            After::Close => {
                close(&conn.io).await;
                break;
            }
            After::Gone | After::Discard(_) => break,
        }
    }
}

/// One connection's state between requests.
struct Connection<'d> {
    /// Where the server's events go (a handler's error answered 5xx).
    events: &'d dyn Fn(&crate::Event<'_>),
    io: Arc<Stream>,
    requests: Requests,
    buf: ReadBuf,
    /// The response buffer, reused.
    out: Vec<u8>,
    eager: EagerRead,
    drain: &'d Drain,
    options: Options,
    /// Until the first request head is read: when it must be complete (accept + header
    /// timeout).
    first_head: Option<Instant>,
    /// The last request asked to close (`Connection: close`, or HTTP/1.0 without keep-alive)
    /// and its body was read to the end: the client sends nothing more.
    peer_done: bool,
    /// The application's lean handler, with its buffers.
    lean: Option<Lean>,
}

/// The lean handler and the buffers its responses are gathered in, reused.
struct Lean {
    handler: crate::http::lean::Handler,
    fields: Vec<u8>,
    body: Vec<u8>,
}

/// A request read: for the http-types handler, or already answered by the lean one (its
/// response is in the connection's response buffer).
// `Next` holds the http-types Request, moved as before; boxing it would cost an allocation
// per request, which is what the lean path is there to avoid.
enum Work {
    /// Boxed: the request is large, and moves through the loop's futures several times.
    Full(Box<Next>),
    Lean {
        close: bool,
        keep_alive: bool,
    },
}

impl Connection<'_> {
    /// Waits for the next request and reads its head. `None`: the connection is done (closed,
    /// handed to the successor, or refused with an error response).
    async fn next<D: Future<Output = ()>>(
        &mut self,
        idle: &mut Idle<'_, D>,
    ) -> Option<(Work, Busy)> {
        let (io, drain, options) = (&self.io, self.drain, &self.options);
        // A pipelined request may already be buffered; otherwise wait for one.
        // Draining with a relay to the successor: this connection is at a request boundary,
        // so it moves there, with whatever the client already sent.
        if drain.is_draining() && idle.moves() && hand_over(io, drain, self.buf.pending()).await {
            return None;
        }
        if self.buf.pending().is_empty() && !drain.is_draining() && self.eager.try_now(io) {
            // Under load the client's next request is usually on its way: let the other
            // connections run first, then read once without waiting. A hit saves registering
            // for readiness (an epoll_ctl) and a trip through the reactor.
            smol::future::yield_now().await;
            match self.buf.try_fill(io, options.max_head) {
                Ok(0) => return None,
                Ok(_) => self.eager.hit(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.eager.miss(),
                Err(_) => return None,
            }
        }
        let first_head = self.first_head.take();
        while self.buf.pending().is_empty() {
            match idle.wait(io, drain, options, first_head).await {
                // Readiness can be stale (the bytes that caused it were read already): only
                // a byte that is really there starts a request, and counts it as in flight.
                Waited::Readable if io.can_try_read() => {
                    match self.buf.try_fill(io, options.max_head) {
                        Ok(0) => return None,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return None,
                    }
                }
                Waited::Readable => break,
                Waited::HeadTimedOut => {
                    let reject = Reject::HeadTimedOut;
                    refuse(io, &mut self.out, reject.status(), &reject.to_string()).await;
                    return None;
                }
                Waited::Close => {
                    // Idle when a drain started: hand over if possible, else close (the wait
                    // had its grace then).
                    if drain.is_draining() && idle.moves() && relayable(io, drain) {
                        if hand_over(io, drain, self.buf.pending()).await {
                            return None;
                        }
                        // Refused, or the relay failed: it stays, and closes as it would
                        // without a successor, after the grace (a request sent meanwhile is
                        // answered, not met by a reset).
                        idle.stay();
                        continue;
                    }
                    return None;
                }
            }
        }
        // The last check before this process commits to a request: a drain that started
        // while it waited moves the connection now, with what it sent. From here the request
        // counts as in flight (a drain hands its state over only after it).
        if drain.is_draining() && idle.moves() && hand_over(io, drain, self.buf.pending()).await {
            return None;
        }
        let in_flight = self.drain.busy();
        let lean = self.lean.as_mut().map(|lean| (lean, &mut self.out, drain));
        let next = next_request(io, &mut self.buf, &mut self.requests, options, lean);
        let timeout = async {
            match first_head {
                Some(deadline) => Timer::at(deadline).await,
                None => Timer::after(options.header_timeout).await,
            };
            Err(HeadError::TimedOut)
        };
        let reject = match next.or(timeout).await {
            Ok(Work::Full(next)) => match next.framing {
                Framing::Length(n) if n > options.max_body => Reject::BodyTooLarge,
                _ => return Some((Work::Full(next), in_flight)),
            },
            Ok(lean) => return Some((lean, in_flight)),
            Err(HeadError::Closed) => return None,
            Err(HeadError::TimedOut) => Reject::HeadTimedOut,
            Err(HeadError::Reject(reject)) => reject,
        };
        refuse(io, &mut self.out, reject.status(), &reject.to_string()).await;
        None
    }

    /// Calls the handler, writes its response, and says what follows: `KeepAlive`, `Close`
    /// (closing is left to the caller) or `Gone`; an unread body is skipped here.
    async fn answer<F, Fut>(&mut self, next: Box<Next>, in_flight: Busy, handler: &F) -> After
    where
        F: Fn(Request) -> Fut,
        Fut: Future<Output = http_types::Result<Response>>,
    {
        let Next {
            mut request,
            framing,
            keep_alive,
            expect_continue,
            minor,
        } = *next;
        self.peer_done = false;
        let (io, options) = (&self.io, &self.options);
        let method = request.method();
        let inbound = body::attach(
            &mut request,
            framing,
            expect_continue,
            io,
            &mut self.buf,
            options,
        );
        // At the drain's cut a request whose handler has not answered gets a visible 503
        // (not a bare FIN a client could take for an empty answer).
        let answered = async { Some(handler(request).await) };
        let cut = async {
            self.drain.cut().await;
            None
        };
        let mut response = match answered.or(cut).await {
            Some(Ok(response)) => response,
            Some(Err(error)) => error_response(error, method, self.events),
            None => {
                drop(in_flight);
                return self.refuse_cut(method, minor).await;
            }
        };
        // Take the read buffer back from the body reader, whatever the handler did with it.
        let body = inbound.map(|shared| Inbound::take_back(&shared, &mut self.buf));
        if response.status() == StatusCode::SwitchingProtocols {
            let wanted = body.is_none() && minor == 1;
            return self
                .switch(response, (method, minor), wanted, in_flight)
                .await;
        }
        self.peer_done = !keep_alive
            && body
                .as_ref()
                .is_none_or(|b| b.state == BodyState::Done && b.failed.is_none());
        let after = decide(&mut response, keep_alive, body, io, self.drain);
        let close_after = after == After::Close;
        let timeout = options.write_timeout;
        let out = &mut self.out;
        let write = write_response(io, out, &mut response, method, minor, close_after, timeout);
        // Cut mid-response: a reset, so that no client can take what it got for all of it.
        let cut = async {
            self.drain.cut().await;
            Err(io::Error::new(io::ErrorKind::TimedOut, "cut by the drain"))
        };
        let written = write.or(cut).await;
        drop(in_flight);
        if let Err(error) = written {
            if error.kind() == io::ErrorKind::TimedOut {
                // Unsent data would keep the socket (and its buffers) alive: reset instead.
                io.abort();
            }
            return After::Gone;
        }
        match after {
            After::Discard(body) if !body::discard(io, &mut self.buf, body, options).await => {
                After::Close
            }
            After::Discard(_) => After::KeepAlive,
            other => other,
        }
    }
}

impl Connection<'_> {
    /// At the drain's cut, a request whose handler has not answered gets a visible 503 (not
    /// a bare FIN a client could take for an empty answer), and the connection closes.
    async fn refuse_cut(&mut self, method: http_types::Method, minor: u8) -> After {
        let why = match self.drain.is_shutdown() {
            true => "the server is shutting down",
            false => "the server is restarting",
        };
        let mut response = plain(StatusCode::ServiceUnavailable, why);
        response.insert_header("retry-after", "0");
        let timeout = self.options.write_timeout;
        let out = &mut self.out;
        let _ = write_response(&self.io, out, &mut response, method, minor, true, timeout).await;
        After::Close
    }

    /// A 101: writes it and hands the connection to the upgrade, baton's own (movable) or
    /// http-types' (`recv_upgrade`), if the handler took one and the request `wanted` it
    /// (HTTP/1.1, no body); else nothing can follow on the connection.
    async fn switch(
        &mut self,
        mut response: Response,
        (method, minor): (http_types::Method, u8),
        wanted: bool,
        in_flight: Busy,
    ) -> After {
        let slot = response.ext_mut().remove::<upgrade::Slot>();
        let to = match slot {
            Some(slot) if wanted => Some(UpgradeTo::Baton(slot)),
            None if wanted && response.has_upgrade() => {
                Some(UpgradeTo::HttpTypes(response.send_upgrade()))
            }
            _ => None,
        };
        let timeout = self.options.write_timeout;
        let out = &mut self.out;
        let written =
            write_response(&self.io, out, &mut response, method, minor, false, timeout).await;
        drop(in_flight);
        match (written, to) {
            (Ok(()), Some(to)) => self.upgrade(to).await,
            // A 101 the handler takes no connection for: nothing can follow on it.
            _ => After::Gone,
        }
    }

    /// Writes the response the lean handler made (in the response buffer).
    async fn answer_lean(&mut self, close: bool, in_flight: Busy) -> After {
        let written = response::send(&self.io, &self.out, self.options.write_timeout).await;
        drop(in_flight);
        match written {
            Ok(()) if close => After::Close,
            Ok(()) => After::KeepAlive,
            Err(error) => {
                if error.kind() == io::ErrorKind::TimedOut {
                    self.io.abort();
                }
                After::Gone
            }
        }
    }

    /// Hands the connection, with what the client sent past the head, to the handler, and
    /// serves its requests to move until the handler is done with it. It counts as open (and
    /// upgraded) meanwhile.
    async fn upgrade(&mut self, to: UpgradeTo) -> After {
        let _upgraded = self.drain.long_lived();
        let pending = self.buf.pending().to_vec();
        let (upgraded, requests) = upgrade::Upgraded::new(self.io.clone(), pending);
        match to {
            UpgradeTo::Baton(slot) => {
                let _ = slot.0.send(upgraded).await;
            }
            UpgradeTo::HttpTypes(sender) => {
                sender
                    .send(http_types::upgrade::Connection::new(upgraded))
                    .await;
            }
        }
        // Every sender gone: the handler dropped the connection (or never took it).
        upgrade::serve(self.io.clone(), requests, self.drain).await;
        After::Gone
    }
}

/// Who gets an upgraded connection.
enum UpgradeTo {
    Baton(upgrade::Slot),
    HttpTypes(http_types::upgrade::Sender),
}

/// Resumes an upgraded connection the previous process handed over: `resume` (the
/// application's handler for its name) gets it, and this task serves its requests to move
/// until it is dropped.
pub(crate) async fn resume_upgraded(
    stream: Stream,
    held: Vec<u8>,
    resume: impl FnOnce(upgrade::Upgraded),
    drain: Drain,
) {
    let _upgraded = drain.long_lived();
    let io = Arc::new(stream);
    let (upgraded, requests) = upgrade::Upgraded::new(io.clone(), held);
    resume(upgraded);
    upgrade::serve(io, requests, &drain).await;
}

/// What happens to a connection once its response is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Wait for the next request (or, draining with a relay, hand the connection over).
    KeepAlive,
    /// Skip what the handler left of the body first, then keep alive if that worked.
    Discard(BodyState),
    /// `Connection: close`, then close.
    Close,
    /// The response could not be written: drop the connection as it is.
    Gone,
}

/// Decides what follows this response, from the request (`keep_alive`: its version and
/// `Connection` header), what became of its body, the response, and the drain; replaces the
/// response if the body broke its framing or a limit.
fn decide(
    response: &mut Response,
    keep_alive: bool,
    body: Option<body::Outcome>,
    io: &Stream,
    drain: &Drain,
) -> After {
    // A draining process closes connections, unless it can hand them over.
    let closing = drain.is_draining() && !relayable(io, drain);
    let after = if !keep_alive || closing || wants_close(response) {
        After::Close
    } else {
        After::KeepAlive
    };
    let Some(body) = body else {
        return after;
    };
    match body.failed {
        // The body broke its framing or a limit: whatever the handler made of that, the client
        // learns what was wrong, and the connection cannot be trusted further.
        Some(reject) => {
            *response = plain(reject.status(), &reject.to_string());
            After::Close
        }
        // Never asked for: the client may not send it at all, so do not wait for it.
        None if body.continue_pending && body.state != BodyState::Done => After::Close,
        None if body.state != BodyState::Done && after == After::KeepAlive => {
            After::Discard(body.state)
        }
        None => after,
    }
}

/// A connection just accepted, with what the loop needs to know about it.
pub(crate) struct Incoming {
    pub(crate) stream: Stream,
    /// The client's address.
    pub(crate) peer: crate::Address,
    /// The listener's address.
    pub(crate) local: crate::Address,
    /// The listener's TLS acceptor, for a `tls:` listener.
    pub(crate) tls: Option<Tls>,
    /// Bytes already read from it (by the process that handed it over) and not yet parsed.
    pub(crate) pending: Vec<u8>,
    /// Accepted here (not handed over mid-life): its first request head must arrive within
    /// `header_timeout` of the accept, so a silent connection cannot hold a slot longer.
    pub(crate) fresh: bool,
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
        let Stream::Plain(conn) = stream else {
            return Some(stream);
        };
        // The session reads and writes through the connection's edge registration.
        let tcp = Arc::new(conn);
        let accepted = async {
            acceptor
                .accept(crate::http::tls::Tcp(tcp.clone()))
                .await
                .ok()
        };
        let expired = async {
            Timer::after(timeout).await;
            None
        };
        let session = accepted.or(expired).await?;
        Some(Stream::Tls(Box::new(crate::http::tls::Session {
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
