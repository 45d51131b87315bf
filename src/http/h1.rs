//! The connection loop on async-h1's decoder and encoder, kept behind the `async-h1` feature so
//! that the benchmark can show both codecs side by side ([`crate::Server::async_h1`]).
//!
//! It inherits async-h1's limits: HTTP/1.0 is refused, pipelined bytes read together with a
//! request are lost, `Expect: 100-continue` is answered from a thread of async-global-executor.
//! Waiting, draining and closing are shared with [`crate::http::conn`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_io::Timer;
use http_types::{Method, Request, Response, StatusCode};
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};

use crate::drain::Drain;
use crate::http::conn::{
    DISCARD_LIMIT, Idle, Options, WRITE_BUFFER, Waited, close, error_response, wants_close,
};
use crate::http::stream::Stream;

/// The response buffer a connection starts with, grown (doubling) only by larger responses.
const FIRST_WRITE_BUFFER: usize = 1024;

/// The connection as async-h1's decoder wants it: cheap to clone, shared by head and body readers.
#[derive(Debug, Clone)]
struct Io(Arc<Stream>);

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve<F, Fut>(
    stream: Stream,
    handler: Rc<F>,
    drain: Drain,
    options: Options,
    events: std::rc::Rc<dyn Fn(&crate::Event<'_>)>,
) where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = http_types::Result<Response>>,
{
    let io = Io(Arc::new(stream));
    let mut buffer = Vec::new();
    let drain_started = std::pin::pin!(drain.wait());
    // (This loop closes idle connections at a drain: it never moves them.)
    let mut idle = Idle::new(drain_started, false, &options, None);
    loop {
        if idle.wait(&io.0, &drain, &options, None).await != Waited::Readable {
            break;
        }
        let head = async { Head::Decoded(async_h1::server::decode(io.clone()).await) };
        let timeout = async {
            Timer::after(options.header_timeout).await;
            Head::TimedOut
        };
        let (request, mut body) = match head.or(timeout).await {
            Head::Decoded(Ok(Some(decoded))) => decoded,
            Head::Decoded(Ok(None)) => break,
            Head::Decoded(Err(error)) => {
                let response = rejection(error);
                let _ = write_response(&io, response, Method::Get, &mut buffer).await;
                close(&io.0).await;
                break;
            }
            Head::TimedOut => {
                let mut response = Response::new(StatusCode::RequestTimeout);
                response.insert_header("Connection", "close");
                let _ = write_response(&io, response, Method::Get, &mut buffer).await;
                close(&io.0).await;
                break;
            }
        };
        let in_flight = drain.busy();
        let method = request.method();
        let mut close_after = asks_close(request.header("Connection"));
        let mut response = match handler(request).await {
            Ok(response) => response,
            Err(error) => error_response(error, method, &*events),
        };
        close_after |= wants_close(&response) || drain.is_draining();
        if close_after {
            response.insert_header("Connection", "close");
        }
        let written = write_response(&io, response, method, &mut buffer).await;
        drop(in_flight);
        if written.is_err() {
            break;
        }
        // Whatever of the body the handler left unread must go before the next request.
        match smol::io::copy((&mut body).take(DISCARD_LIMIT + 1), &mut smol::io::sink()).await {
            Ok(n) if n <= DISCARD_LIMIT => {}
            _ => close_after = true,
        }
        if close_after {
            close(&io.0).await;
            break;
        }
        idle.restart();
    }
}

enum Head<T> {
    Decoded(http_types::Result<T>),
    TimedOut,
}

fn asks_close(header: Option<&http_types::headers::HeaderValues>) -> bool {
    header.is_some_and(|values| {
        values.iter().any(|v| {
            v.as_str()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    })
}

/// The answer to a request whose head could not be read: 400 with the reason, then close.
fn rejection(error: http_types::Error) -> Response {
    let mut response = Response::new(StatusCode::BadRequest);
    response.set_body(format!("bad request: {error}\n"));
    response.insert_header("Connection", "close");
    response
}

/// Encodes the response into `buffer` and writes it: one write unless it is larger than
/// [`WRITE_BUFFER`].
async fn write_response(
    io: &Io,
    response: Response,
    method: Method,
    buffer: &mut Vec<u8>,
) -> io::Result<()> {
    let mut encoder = async_h1::server::Encoder::new(response, method);
    if buffer.is_empty() {
        buffer.resize(FIRST_WRITE_BUFFER, 0);
    }
    loop {
        let mut filled = 0;
        let mut finished = false;
        loop {
            if filled == buffer.len() {
                // Grow for a larger response, up to the cap; then write what is gathered.
                if buffer.len() >= WRITE_BUFFER {
                    break;
                }
                buffer.resize(buffer.len() * 2, 0);
            }
            let n = encoder.read(&mut buffer[filled..]).await?;
            if n == 0 {
                finished = true;
                break;
            }
            filled += n;
        }
        io.0.write_all(&buffer[..filled]).await?;
        if finished {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// A response larger than the buffer cap arrives whole, and the buffer stops at the cap.
    #[test]
    fn writes_a_large_response_in_capped_chunks() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let io = Io(Arc::new(Stream::Plain(crate::io::stream::for_tests(
            server,
        ))));
        let body = "x".repeat(100_000);
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            client.read_to_end(&mut received).unwrap();
            received
        });
        let mut buffer = Vec::new();
        smol::block_on(async {
            let response = Response::from(body.as_str());
            write_response(&io, response, Method::Get, &mut buffer)
                .await
                .unwrap();
        });
        assert_eq!(buffer.len(), WRITE_BUFFER);
        drop(io);
        let received = String::from_utf8(reader.join().unwrap()).unwrap();
        let (head, received_body) = received.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-length: 100000"), "{head}");
        assert_eq!(received_body, body);
    }

    #[test]
    fn small_responses_keep_the_buffer_small() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let io = Io(Arc::new(Stream::Plain(crate::io::stream::for_tests(
            server,
        ))));
        let mut buffer = Vec::new();
        smol::block_on(async {
            let response = Response::from("Hello!\n");
            write_response(&io, response, Method::Get, &mut buffer)
                .await
                .unwrap();
        });
        assert_eq!(buffer.len(), FIRST_WRITE_BUFFER);
    }

    /// async-h1's loop closes idle connections at a drain (it never moves them), even where a
    /// relay to a successor exists: it waits the idle grace first, so a request sent as the
    /// drain starts is answered (with `Connection: close`), not met by a reset.
    #[test]
    fn a_request_racing_the_drain_is_answered_though_a_relay_exists() {
        let drain = crate::http::conn::a_request_races_the_drain(true, |server, _, _, drain| {
            let stream = Stream::Plain(crate::io::stream::for_tests(server));
            let handler = Rc::new(|_: Request| async { Ok(Response::from("hello")) });
            let events: Rc<dyn Fn(&crate::Event<'_>)> = Rc::new(|_: &crate::Event<'_>| {});
            let options = Options::from(&crate::http::Options::default());
            smol::block_on(serve(stream, handler, drain, options, events));
        });
        assert!(drain.can_hand_over(), "the relay itself still works");
    }
}
