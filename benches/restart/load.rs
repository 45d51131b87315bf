//! The load generator: N HTTP/1.1 clients as tasks on one smol thread, keep-alive or a new
//! connection per request. Records every request's start time and latency, and every failure
//! by kind, all relative to the run's start so they can be lined up with the restart signals.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_rustls::TlsConnector;
use futures_rustls::rustls::ClientConfig;
use futures_rustls::rustls::pki_types::ServerName;
use smol::future::FutureExt as _;
use smol::io::{AsyncRead, AsyncWrite};
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};
use smol::{Async, Timer};

/// How long a request may take before it counts as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    PerRequest,
    /// Clients in turn: keep-alive `/hello`, a connection per `/hello`, keep-alive
    /// `/slow?ms=50`, keep-alive `POST /echo` with a 1 KiB body.
    Mixed,
}

/// What client number `i` of a run in `mode` sends, and whether it opens a connection per request.
fn role(mode: Mode, i: usize) -> (Vec<u8>, bool) {
    const HELLO: &[u8] = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n";
    const HELLO_CLOSE: &[u8] = b"GET /hello HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    match (mode, i % 4) {
        (Mode::KeepAlive, _) | (Mode::Mixed, 0) => (HELLO.to_vec(), false),
        (Mode::PerRequest, _) | (Mode::Mixed, 1) => (HELLO_CLOSE.to_vec(), true),
        (Mode::Mixed, 2) => (
            b"GET /slow?ms=50 HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
            false,
        ),
        (Mode::Mixed, _) => {
            let mut post =
                b"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Length: 1024\r\n\r\n".to_vec();
            post.extend(std::iter::repeat_n(b'p', 1024));
            (post, false)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Refused,
    Reset,
    /// The connection closed before a whole response arrived.
    Eof,
    Status,
    Timeout,
    Other,
}

/// One answered request: when it started and how long it took, in µs.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub start_us: u64,
    pub latency_us: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub at_us: u64,
    pub kind: Kind,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
    pub connects: u64,
    pub elapsed: Duration,
    /// CPU time the load generator's thread used.
    pub cpu: Duration,
}

/// Runs `clients` clients against `addr` until `stop` is set.
pub fn run(
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    mode: Mode,
    clients: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let cpu_before = thread_cpu();
    let outcome = Rc::new(RefCell::new(Outcome::default()));
    let executor = smol::LocalExecutor::new();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (request, per_request) = role(mode, i);
            let tls = tls.clone().map(TlsConnector::from);
            executor.spawn(client(
                addr,
                tls,
                request,
                per_request,
                start,
                stop.clone(),
                outcome.clone(),
            ))
        })
        .collect();
    smol::block_on(executor.run(async {
        for task in tasks {
            task.await;
        }
    }));
    let mut outcome = Rc::try_unwrap(outcome)
        .expect("all clients finished")
        .into_inner();
    outcome.elapsed = start.elapsed();
    outcome.cpu = thread_cpu().saturating_sub(cpu_before);
    outcome
}

async fn client(
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    request: Vec<u8>,
    per_request: bool,
    start: Instant,
    stop: Arc<AtomicBool>,
    out: Rc<RefCell<Outcome>>,
) {
    let request = request.as_slice();
    let mut connection: Option<Conn> = None;
    let mut buffer = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let attempt = async {
            if connection.is_none() {
                let stream = Async::<TcpStream>::connect(addr).await.map_err(classify)?;
                let _ = stream.get_ref().set_nodelay(true);
                let stream = match &tls {
                    Some(connector) => {
                        let name = ServerName::try_from("127.0.0.1").expect("an IP is a name");
                        let session = connector.connect(name, stream).await.map_err(classify)?;
                        Conn::Tls(Box::new(session))
                    }
                    None => Conn::Plain(stream),
                };
                out.borrow_mut().connects += 1;
                connection = Some(stream);
            }
            let stream = connection.as_mut().expect("connected above");
            stream.write_all(request).await.map_err(classify)?;
            stream.flush().await.map_err(classify)?;
            read_response(stream, &mut buffer).await
        };
        let timeout = async {
            Timer::after(REQUEST_TIMEOUT).await;
            Err(Kind::Timeout)
        };
        let result = attempt.or(timeout).await;
        let start_us = began.duration_since(start).as_micros() as u64;
        match result {
            Ok(keep) => {
                let latency_us = began.elapsed().as_micros() as u64;
                out.borrow_mut().samples.push(Sample {
                    start_us,
                    latency_us,
                });
                if !keep || per_request {
                    if let Some(mut stream) = connection.take() {
                        // Let the server close first, as a polite client does: read to EOF.
                        let mut sink = [0u8; 64];
                        let eof = async {
                            while let Ok(n) = stream.read(&mut sink).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        };
                        eof.or(async {
                            Timer::after(Duration::from_millis(200)).await;
                        })
                        .await;
                    }
                }
            }
            Err(kind) => {
                connection = None;
                out.borrow_mut().failures.push(Failure {
                    at_us: start_us,
                    kind,
                });
            }
        }
    }
}

/// A client connection, plain or TLS.
enum Conn {
    Plain(Async<TcpStream>),
    Tls(Box<futures_rustls::client::TlsStream<Async<TcpStream>>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
            Conn::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

/// Reads one response; returns whether the connection may be reused.
async fn read_response(stream: &mut Conn, buffer: &mut [u8]) -> Result<bool, Kind> {
    let mut filled = 0;
    let head_end = loop {
        if filled == buffer.len() {
            return Err(Kind::Other);
        }
        let n = stream.read(&mut buffer[filled..]).await.map_err(classify)?;
        if n == 0 {
            return Err(Kind::Eof);
        }
        filled += n;
        if let Some(at) = find(&buffer[..filled], b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = &buffer[..head_end];
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    let mut length = 0usize;
    let mut close = false;
    for line in head.split(|&b| b == b'\n') {
        let line = std::str::from_utf8(line).unwrap_or("").trim_end();
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| Kind::Other)?;
            } else if name.eq_ignore_ascii_case("connection")
                && value.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
    }
    let mut body = filled - head_end;
    while body < length {
        let room = buffer.len();
        let n = stream.read(&mut buffer[..room]).await.map_err(classify)?;
        if n == 0 {
            return Err(Kind::Eof);
        }
        body += n;
    }
    match status {
        Some(200..=299) => Ok(!close),
        _ => Err(Kind::Status),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn classify(error: io::Error) -> Kind {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => Kind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => Kind::Reset,
        io::ErrorKind::UnexpectedEof => Kind::Eof,
        io::ErrorKind::TimedOut => Kind::Timeout,
        _ => Kind::Other,
    }
}

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
