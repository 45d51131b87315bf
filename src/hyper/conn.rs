//! One connection under hyper: which protocol (the HTTP/2 preface or not), then HTTP/1.1,
//! moved to the successor at the drain once no request is in flight, or HTTP/2, drained with
//! a GOAWAY. Every request is counted for the drain while it runs and until its body is
//! written; one still unanswered when the drain is cut gets a 503 (HTTP/1) or a refused
//! stream (HTTP/2), never a silent close.

use std::cell::Cell;
use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use smol::future::FutureExt as _;

use super::Shared;
use super::rt::Io;
use crate::{Busy, Drain, Stream};

type BoxError = Box<dyn StdError + Send + Sync>;

/// The kind an HTTP/1 connection moves under, between requests, with hyper's read buffer.
pub(super) const HTTP1: &str = "baton-hyper-http1";
/// The kind of a connection that moved before its first bytes told the protocol.
pub(super) const UNKNOWN: &str = "baton-hyper";

/// What an HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a connection whose protocol is not known yet: reads until its first bytes tell.
pub(super) async fn serve<S, B>(shared: Rc<Shared<S>>, stream: Stream, drain: Drain)
where
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    let mut before = Vec::new();
    // (The first read usually tells: a request line, or the whole preface.)
    let mut chunk = [0u8; 1024];
    // Until the drain, or for good if it cannot hand the connection over (a shutdown: what
    // the client sends is answered here; HTTP/1 then closes).
    let mut watch_drain = true;
    loop {
        let seen = before.len().min(PREFACE.len());
        if before[..seen] != PREFACE[..seen] {
            return http1(shared, Io::new(stream, before), drain).await;
        }
        if seen == PREFACE.len() {
            return http2(shared, Io::new(stream, before), drain).await;
        }
        let read = async { Some(stream.read(&mut chunk).await) };
        let drained = async {
            match watch_drain {
                true => drain.wait().await,
                false => std::future::pending().await,
            }
            None
        };
        match read.or(drained).await {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(n)) => before.extend_from_slice(&chunk[..n]),
            // Nothing asked yet: the successor reads on.
            None => {
                let state = &serde_json::Value::Null;
                match drain.hand_over(&stream, UNKNOWN, state, &before).await {
                    Ok(()) => return,
                    Err(_) => watch_drain = false,
                }
            }
        }
    }
}

/// Requests of one connection in flight, and its task waiting for none.
#[derive(Default)]
pub(super) struct Flight {
    count: Cell<usize>,
    idle: Cell<Option<Waker>>,
    /// A request was answered 503 at the cut: the connection closes after it.
    cut: Cell<bool>,
    /// Requests the connection has taken so far.
    started: Cell<u64>,
}

/// One request in flight: counted for the drain and its connection until dropped.
struct InFlight {
    flight: Rc<Flight>,
    _busy: Busy,
}

impl InFlight {
    fn new(flight: &Rc<Flight>, drain: &Drain) -> InFlight {
        flight.count.set(flight.count.get() + 1);
        flight.started.set(flight.started.get() + 1);
        InFlight {
            flight: flight.clone(),
            _busy: drain.busy(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.flight.count.get() - 1;
        self.flight.count.set(left);
        if left == 0 {
            if let Some(waker) = self.flight.idle.take() {
                waker.wake();
            }
        }
    }
}

/// The application's service, counting each request (see [`InFlight`]) and answering for it
/// at the cut.
pub(super) struct Counted<S> {
    service: Rc<S>,
    drain: Drain,
    flight: Rc<Flight>,
    http2: bool,
}

impl<S> Counted<S> {
    fn new(shared: &Shared<S>, drain: &Drain, flight: Rc<Flight>, http2: bool) -> Counted<S> {
        Counted {
            service: shared.service.clone(),
            drain: drain.clone(),
            flight,
            http2,
        }
    }
}

/// Runs a connection to its end, starting its graceful shutdown (`shutdown`) once the drain
/// starts.
async fn until_drained<C: Future>(
    mut conn: Pin<&mut C>,
    drain: &Drain,
    mut shutdown: impl FnMut(Pin<&mut C>),
) -> C::Output {
    let mut notice = pin!(drain.wait());
    let mut draining = false;
    poll_fn(|cx| {
        if !draining && notice.as_mut().poll(cx).is_ready() {
            draining = true;
            shutdown(conn.as_mut());
        }
        conn.as_mut().poll(cx)
    })
    .await
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body<B>>;
    type Error = BoxError;
    type Future = Answer<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        Answer {
            in_flight: Some(InFlight::new(&self.flight, &self.drain)),
            answer: Box::pin(self.service.call(request)),
            cut: None,
            drain: self.drain.clone(),
            http2: self.http2,
        }
    }
}

/// The application's answer to one request, or the cut's. (`Unpin`, as hyper needs to take
/// an HTTP/1 connection back: the application's future is boxed.)
pub struct Answer<F> {
    answer: Pin<Box<F>>,
    /// The drain's cut, made only if the answer has to be waited for.
    cut: Option<Pin<Box<dyn Future<Output = ()>>>>,
    drain: Drain,
    in_flight: Option<InFlight>,
    http2: bool,
}

impl<F> std::fmt::Debug for Answer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for Answer<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(answered) = this.answer.as_mut().poll(cx) {
            let in_flight = this.in_flight.take();
            return Poll::Ready(match answered {
                Ok(response) => Ok(response.map(|body| Body {
                    inner: Some(body),
                    cut: None,
                    in_flight,
                })),
                Err(error) => Err(error.into()),
            });
        }
        let drain = &this.drain;
        let cut = this.cut.get_or_insert_with(|| {
            let drain = drain.clone();
            Box::pin(async move { drain.cut().await })
        });
        if cut.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let in_flight = this.in_flight.take();
        Poll::Ready(match (this.http2, in_flight) {
            // A client may retry a refused stream: it was never processed.
            (true, _) => Err(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM))),
            (false, in_flight) => {
                if let Some(in_flight) = &in_flight {
                    in_flight.flight.cut.set(true);
                }
                Ok(cut_response(in_flight))
            }
        })
    }
}

/// The answer to a request the drain cut before its response started.
fn cut_response<B>(in_flight: Option<InFlight>) -> Response<Body<B>> {
    let text = "the server is restarting or shutting down: retry\n";
    let mut response = Response::new(Body {
        inner: None,
        cut: Some(Bytes::from_static(text.as_bytes())),
        in_flight,
    });
    *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONNECTION, "close".parse().unwrap());
    headers.insert(hyper::header::RETRY_AFTER, "1".parse().unwrap());
    response
}

pin_project_lite::pin_project! {
    /// A response body: the application's, or the cut's text; its request counts as in
    /// flight until the body's end is written (or the body is dropped).
    pub struct Body<B> {
        #[pin]
        inner: Option<B>,
        cut: Option<Bytes>,
        in_flight: Option<InFlight>,
    }
}

impl<B> std::fmt::Debug for Body<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("cut", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

impl<B> HttpBody for Body<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match this.inner.as_pin_mut() {
            Some(inner) => match inner.poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame.map(|f| f.map_err(Into::into)),
            },
            None => this.cut.take().map(|text| Ok(Frame::data(text))),
        };
        if !matches!(frame, Some(Ok(_))) {
            *this.in_flight = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.cut.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.cut) {
            (Some(inner), _) => inner.size_hint(),
            (None, Some(text)) => SizeHint::with_exact(text.len() as u64),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

/// HTTP/1.1 until the drain, then, once no request is in flight, the connection (with
/// whatever hyper read and did not use) moves to the successor; without one it finishes
/// with keep-alive off.
pub(super) async fn http1<S, B>(shared: Rc<Shared<S>>, io: Io, drain: Drain)
where
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    let flight = Rc::new(Flight::default());
    let service = Counted::new(&shared, &drain, flight.clone(), false);
    let keep_open = io.keep_open.clone();
    // (With upgrades: an upgraded connection goes to the service's `hyper::upgrade::on`.)
    let mut conn = shared.http1.serve_connection(io, service).with_upgrades();
    let mut notice = pin!(drain.wait());
    let (mut draining, mut asked) = (false, false);
    let ended = poll_fn(|cx| {
        draining = draining || notice.as_mut().poll(cx).is_ready();
        if draining && !asked {
            match flight.count.get() {
                0 => {
                    // Ended by this, the connection keeps its socket open, to move.
                    keep_open.store(true, std::sync::atomic::Ordering::SeqCst);
                    Pin::new(&mut conn).graceful_shutdown();
                    asked = true;
                }
                _ => flight.idle.set(Some(cx.waker().clone())),
            }
        }
        Pin::new(&mut conn).poll(cx)
    })
    .await;
    if ended.is_err() || !asked || flight.cut.get() {
        // The client closed, the connection failed, or it was told to close.
        return;
    }
    // `None`: upgraded, the application's now.
    let Some(parts) = conn.into_parts() else {
        return;
    };
    let io = parts.io;
    let held = [&parts.read_buf[..], io.unread(), &io.stream.take_held()].concat();
    let moved = drain
        .hand_over(&io.stream, HTTP1, &serde_json::Value::Null, &held)
        .await;
    // No successor takes it (a shutdown, say): a request already arriving is answered here,
    // and the connection closes; an idle one closes now, as any server's at its shutdown.
    if moved.is_err() && !held.is_empty() {
        let rest = Counted::new(&shared, &drain, flight, false);
        let rest = shared
            .http1_last
            .serve_connection(Io::new(io.stream, held), rest);
        let _ = rest.with_upgrades().await;
    }
}

/// HTTP/2 until the drain, then a graceful GOAWAY (the last stream id at the maximum, then
/// the real one): streams already open finish, the client sends new ones elsewhere.
pub(super) async fn http2<S, B, I>(shared: Rc<Shared<S>>, io: I, drain: Drain)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    let flight = Rc::new(Flight::default());
    let service = Counted::new(&shared, &drain, flight.clone(), true);
    let mut conn = pin!(shared.http2.serve_connection(io, service));
    if drain.is_draining() {
        // Accepted from the queue at a shutdown: the GOAWAY waits for the connection's first
        // stream (or a moment), which it then counts in, so that it is answered, not refused
        // with nowhere left to retry it.
        let mut late = pin!(async_io::Timer::after(FIRST_STREAM_WAIT));
        let ended = poll_fn(|cx| {
            if conn.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            let taken = flight.started.get() > 0;
            match taken || late.as_mut().poll(cx).is_ready() {
                true => Poll::Ready(false),
                false => Poll::Pending,
            }
        });
        if ended.await {
            return;
        }
    }
    let _ = until_drained(conn, &drain, |conn| conn.graceful_shutdown()).await;
}

/// How long an HTTP/2 connection accepted at a shutdown may take to open its first stream.
const FIRST_STREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A TLS connection: the handshake (bounded in time), then HTTP/2 if ALPN chose `h2`, else
/// HTTP/1.1. A TLS session cannot move to another process: at the drain an HTTP/1 connection
/// finishes what it is answering and closes (`Connection: close` on a response not yet
/// started); HTTP/2 gets its GOAWAY as without TLS.
#[cfg(feature = "tls")]
pub(super) async fn serve_tls<S, B>(
    shared: Rc<Shared<S>>,
    acceptor: futures_rustls::TlsAcceptor,
    stream: Stream,
    drain: Drain,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    let handshake = async { acceptor.accept(stream).await.ok() };
    let late = async {
        async_io::Timer::after(HANDSHAKE_TIMEOUT).await;
        None
    };
    let Some(session) = handshake.or(late).await else {
        return;
    };
    let h2 = session.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = super::rt::FuturesIo(session);
    if h2 {
        return http2(shared, io, drain).await;
    }
    let service = Counted::new(&shared, &drain, Rc::default(), false);
    if drain.is_draining() {
        // Accepted from the queue at a shutdown: its first request is answered, then it
        // closes (a graceful shutdown now would close it before it is read).
        let last = shared.http1_last.serve_connection(io, service);
        let _ = last.with_upgrades().await;
        return;
    }
    let conn = pin!(shared.http1.serve_connection(io, service).with_upgrades());
    let _ = until_drained(conn, &drain, |conn| conn.graceful_shutdown()).await;
}

/// How long a TLS handshake may take before its connection is closed.
#[cfg(feature = "tls")]
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
