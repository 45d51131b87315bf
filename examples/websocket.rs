//! A WebSocket echo that survives restarts: `GET /ws` upgrades (HTTP/1.1 101) to a WebSocket
//! that answers each text message `m` with `<pid>: m`. On a restart, each open WebSocket moves
//! to the successor at a message boundary (the same TCP connection: the client sees no close
//! and no reconnect, and the next answer comes from the new pid); with `--no-hand-over`, or
//! when it cannot move, it is closed with code 1012 ("service restart") and the client
//! reconnects.
//!
//! Run with: `cargo run --example websocket [-- --addr 127.0.0.1:8080 --drain-timeout 5s]`
//!
//! The upgrade is baton's (`baton::upgrade`, a connection that can move: `hand_over`, and
//! `Server::on_upgraded` in the successor); the drain notice is `baton::draining()`. The
//! WebSocket framing is a few lines of its own here, so that at a hand-over nothing is hidden
//! in a library's buffers: what was read and not yet parsed travels with the connection.
//! With `--features tls`, `--addr tls:HOST:PORT --tls-cert C --tls-key K` serves it over TLS
//! (such sockets cannot move: they close with 1012 on a restart). For tests: `--ignore-drain` leaves sockets open through the drain (the drain timeout then
//! closes them).

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use http_types::{Method, Request, Response, StatusCode};
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The name this application's WebSockets travel under.
const ECHO: &str = "echo";

#[derive(Clone, Copy)]
struct Options {
    hand_over: bool,
    ignore_drain: bool,
}

fn main() -> ExitCode {
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut drain_timeout = baton::Config::default().drain_timeout;
    let mut options = Options {
        hand_over: true,
        ignore_drain: false,
    };
    let mut tls_files: (Option<String>, Option<String>) = (None, None);
    let mut workers = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--no-hand-over" => options.hand_over = false,
            "--ignore-drain" => options.ignore_drain = true,
            "--addr" | "--drain-timeout" | "--tls-cert" | "--tls-key" | "--workers" => {
                let Some(value) = args.next() else {
                    return usage(&format!("{flag} needs a value"));
                };
                match flag.as_str() {
                    "--addr" => addr = value,
                    "--tls-cert" => tls_files.0 = Some(value),
                    "--tls-key" => tls_files.1 = Some(value),
                    "--workers" => match value.parse() {
                        Ok(n) => workers = Some(n),
                        Err(_) => return usage(&format!("--workers {value:?}: expected a number")),
                    },
                    _ => match parse_seconds(&value) {
                        Some(timeout) => drain_timeout = timeout,
                        None => {
                            return usage(&format!(
                                "--drain-timeout {value:?}: expected 5s or 500ms"
                            ));
                        }
                    },
                }
            }
            _ => return usage(&format!("unknown option {flag}")),
        }
    }
    let pid = std::process::id();
    let server = baton::Server::bind(&addr).and_then(|server| match tls_files {
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => Ok(server.tls_files(cert, key)),
        (None, None) => Ok(server),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--tls-cert and --tls-key go together, and need --features tls",
        )),
    });
    let server = match server {
        Ok(server) => match workers {
            Some(n) => server.workers(n),
            None => server,
        }
        .drain_timeout(drain_timeout)
        .hand_over_connections(options.hand_over)
        // A WebSocket the previous process moved here: go on echoing, from this pid.
        .on_upgraded(ECHO, move |upgraded, state| {
            let socket = Socket::resumed(upgraded, &state);
            smol::spawn(echo(socket, pid, baton::draining(), options)).detach();
        }),
        Err(error) => {
            eprintln!("websocket: {error}");
            return ExitCode::FAILURE;
        }
    };
    match smol::block_on(server.serve(move |req| route(req, pid, options))) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("websocket: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!(
        "{message}\nusage: websocket [--addr HOST:PORT] [--drain-timeout 5s] [--workers N] \
         [--no-hand-over] [--ignore-drain]"
    );
    ExitCode::from(2)
}

/// `5s`, `500ms`.
fn parse_seconds(text: &str) -> Option<Duration> {
    match text.strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => text
            .strip_suffix('s')?
            .parse()
            .ok()
            .map(Duration::from_secs_f64),
    }
}

async fn route(req: Request, pid: u32, options: Options) -> http_types::Result<Response> {
    match (req.method(), req.url().path()) {
        (Method::Get, "/ws") => {
            let upgrade = req
                .header("upgrade")
                .map(|v| v.as_str().to_ascii_lowercase());
            let Some(key) = req
                .header("sec-websocket-key")
                .map(|v| v.as_str().to_owned())
            else {
                return Ok(Response::new(StatusCode::BadRequest));
            };
            if upgrade.as_deref() != Some("websocket") {
                return Ok(Response::new(StatusCode::BadRequest));
            }
            let mut response = Response::new(StatusCode::SwitchingProtocols);
            response.insert_header("upgrade", "websocket");
            response.insert_header("connection", "Upgrade");
            response.insert_header("sec-websocket-accept", derive_accept_key(key.as_bytes()));
            let connection = baton::upgrade(&mut response);
            // Taken here, on the server's thread; awaited in the socket's task.
            let draining = baton::draining();
            smol::spawn(async move {
                if let Some(upgraded) = connection.await {
                    echo(Socket::new(upgraded), pid, draining, options).await;
                }
            })
            .detach();
            Ok(response)
        }
        (Method::Get, "/hello") => Ok(Response::from(format!("Hello from {pid}!\n"))),
        _ => Ok(Response::new(StatusCode::NotFound)),
    }
}

/// What woke the echo loop.
enum Next {
    Frame(io::Result<Option<Frame>>),
    Draining,
}

/// Answers each text message with `<pid>: <message>`. When the drain starts: moves the socket
/// to the successor, or closes it with 1012.
async fn echo(
    mut socket: Socket,
    pid: u32,
    draining: impl std::future::Future<Output = ()>,
    options: Options,
) {
    let mut draining = std::pin::pin!(async {
        if options.ignore_drain {
            std::future::pending::<()>().await;
        }
        draining.await;
        Next::Draining
    });
    loop {
        // Cancelling a frame read loses nothing: bytes join the buffer only once read.
        let frame = async { Next::Frame(socket.next_frame().await) };
        let outcome = match frame.or(draining.as_mut()).await {
            Next::Frame(Ok(Some(Frame::Text(text)))) => {
                socket.messages += 1;
                socket
                    .send(OP_TEXT, format!("{pid}: {text}").as_bytes())
                    .await
            }
            Next::Frame(Ok(Some(Frame::Ping(data)))) => socket.send(OP_PONG, &data).await,
            Next::Frame(Ok(Some(Frame::Close))) => {
                let _ = socket.send(OP_CLOSE, &1000u16.to_be_bytes()).await;
                return;
            }
            Next::Frame(Ok(Some(Frame::Other))) => Ok(()),
            Next::Frame(Ok(None) | Err(_)) => return,
            Next::Draining => {
                // At a message boundary: whatever is buffered is whole frames or the start of
                // one, and travels with the connection.
                let socket = match options.hand_over {
                    true => match socket.hand_over().await {
                        Ok(()) => return,
                        Err(socket) => socket,
                    },
                    false => socket,
                };
                close_for_restart(socket).await;
                return;
            }
        };
        if outcome.is_err() {
            return;
        }
    }
}

/// Close code 1012, then wait (bounded by the drain) for the client's close.
async fn close_for_restart(mut socket: Socket) {
    let mut payload = 1012u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"service restart");
    if socket.send(OP_CLOSE, &payload).await.is_err() {
        return;
    }
    while let Ok(Some(frame)) = socket.next_frame().await {
        if matches!(frame, Frame::Close) {
            return;
        }
    }
}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A received frame, as far as the echo cares.
enum Frame {
    Text(String),
    Ping(Vec<u8>),
    Close,
    Other,
}

/// The server side of a WebSocket (RFC 6455) over an upgraded connection: unfragmented
/// frames, client frames masked. `buffer` holds what was read and not yet parsed.
struct Socket {
    io: baton::Upgraded,
    buffer: Vec<u8>,
    /// Text messages answered on this socket, across processes (its hand-over state).
    messages: u64,
}

impl Socket {
    fn new(io: baton::Upgraded) -> Socket {
        Socket {
            io,
            buffer: Vec::new(),
            messages: 0,
        }
    }

    /// A socket moved here: the bytes it held come first in the connection's reads.
    fn resumed(io: baton::Upgraded, state: &serde_json::Value) -> Socket {
        let mut socket = Socket::new(io);
        socket.messages = state["messages"].as_u64().unwrap_or(0);
        socket
    }

    /// Moves to the successor with what it holds; gives the socket back if it cannot.
    async fn hand_over(self) -> Result<(), Socket> {
        let Socket {
            io,
            buffer,
            messages,
        } = self;
        let state = serde_json::json!({ "messages": messages });
        match io.hand_over(ECHO, state, &buffer).await {
            Ok(()) => Ok(()),
            Err((io, _)) => Err(Socket {
                io,
                buffer,
                messages,
            }),
        }
    }

    async fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = parse(&self.buffer)? {
                self.buffer.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xFFFF => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }
}

/// One whole frame at the start of `buffer`, and its length; `None` if it is not all there.
fn parse(buffer: &[u8]) -> io::Result<Option<(Frame, usize)>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let [first, second, rest @ ..] = buffer else {
        return Ok(None);
    };
    if second & 0x80 == 0 {
        return Err(bad("an unmasked client frame"));
    }
    let (len, rest) = match second & 0x7F {
        126 if rest.len() >= 2 => (u16::from_be_bytes([rest[0], rest[1]]) as usize, &rest[2..]),
        127 if rest.len() >= 8 => {
            let len = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            (
                usize::try_from(len).map_err(|_| bad("a frame too large"))?,
                &rest[8..],
            )
        }
        126 | 127 => return Ok(None),
        n => (n as usize, rest),
    };
    if len > 1 << 20 {
        return Err(bad("a frame over 1 MiB"));
    }
    let Some((mask, rest)) = rest.split_first_chunk::<4>() else {
        return Ok(None);
    };
    if rest.len() < len {
        return Ok(None);
    }
    let payload: Vec<u8> = rest[..len]
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    let used = buffer.len() - rest.len() + len;
    let frame = match first & 0x0F {
        OP_TEXT => {
            Frame::Text(String::from_utf8(payload).map_err(|_| bad("text that is not UTF-8"))?)
        }
        OP_PING => Frame::Ping(payload),
        OP_CLOSE => Frame::Close,
        _ => Frame::Other,
    };
    Ok(Some((frame, used)))
}
