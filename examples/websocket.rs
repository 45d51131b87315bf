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
//! `Server::on_upgraded` in the successor); the drain notice is `baton::drain().wait()`. The
//! WebSocket is async-tungstenite's, reading through `baton::websocket::Boundary`, which gives
//! it one frame at a time: between messages the library holds nothing, and what was read
//! past the last message travels with the connection.
//! With `--features tls`, `--addr tls:HOST:PORT --tls-cert C --tls-key K` serves it over TLS
//! (such sockets cannot move: they close with 1012 on a restart). For tests: `--ignore-drain` leaves sockets open through the drain (the drain timeout then
//! closes them).

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::tungstenite::protocol::frame::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use baton::websocket::Boundary;
use futures_util::StreamExt as _;
use http_types::{Method, Request, Response, StatusCode};
use smol::future::FutureExt as _;

/// The name this application's WebSockets travel under.
const ECHO: &str = "echo";

#[derive(Clone, Copy)]
struct Options {
    hand_over: bool,
    ignore_drain: bool,
}

/// What the command line asks for.
struct Args {
    addr: String,
    drain_timeout: std::time::Duration,
    options: Options,
    tls_files: (Option<String>, Option<String>),
    workers: Option<usize>,
}

fn parse_args() -> Result<Args, ExitCode> {
    let mut parsed = Args {
        addr: "127.0.0.1:8080".to_owned(),
        drain_timeout: baton::Config::default().drain_timeout,
        options: Options {
            hand_over: true,
            ignore_drain: false,
        },
        tls_files: (None, None),
        workers: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--no-hand-over" => parsed.options.hand_over = false,
            "--ignore-drain" => parsed.options.ignore_drain = true,
            "--addr" | "--drain-timeout" | "--tls-cert" | "--tls-key" | "--workers" => {
                let Some(value) = args.next() else {
                    return Err(usage(&format!("{flag} needs a value")));
                };
                match flag.as_str() {
                    "--addr" => parsed.addr = value,
                    "--tls-cert" => parsed.tls_files.0 = Some(value),
                    "--tls-key" => parsed.tls_files.1 = Some(value),
                    "--workers" => match value.parse() {
                        Ok(n) => parsed.workers = Some(n),
                        Err(_) => {
                            return Err(usage(&format!("--workers {value:?}: expected a number")));
                        }
                    },
                    _ => match parse_seconds(&value) {
                        Some(timeout) => parsed.drain_timeout = timeout,
                        None => {
                            return Err(usage(&format!(
                                "--drain-timeout {value:?}: expected 5s or 500ms"
                            )));
                        }
                    },
                }
            }
            _ => return Err(usage(&format!("unknown option {flag}"))),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let Args {
        addr,
        drain_timeout,
        options,
        tls_files,
        workers,
    } = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
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
        Ok(server) => server
            .core(|baton| {
                let baton = baton
                    .drain_timeout(drain_timeout)
                    .hand_over_connections(options.hand_over);
                match workers {
                    Some(n) => baton.workers(n),
                    None => baton,
                }
            })
            // A WebSocket the previous process moved here: go on echoing, from this pid.
            .on_upgraded(ECHO, move |upgraded, state| {
                let messages = state["messages"].as_u64().unwrap_or(0);
                let draining = baton::drain().wait();
                smol::spawn(async move {
                    echo(socket(upgraded).await, messages, pid, draining, options).await;
                })
                .detach();
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
            let draining = baton::drain().wait();
            smol::spawn(async move {
                if let Some(upgraded) = connection.await {
                    echo(socket(upgraded).await, 0, pid, draining, options).await;
                }
            })
            .detach();
            Ok(response)
        }
        (Method::Get, "/hello") => Ok(Response::from(format!("Hello from {pid}!\n"))),
        _ => Ok(Response::new(StatusCode::NotFound)),
    }
}

/// The WebSocket of one client: async-tungstenite's, on a [`Boundary`] that gives it one frame
/// at a time, so that between messages what was read and not yet used stays with the
/// connection.
type Socket = WebSocketStream<Boundary<baton::Upgraded>>;

/// A socket on a freshly upgraded connection, or on one moved here (its held bytes come first
/// in its reads).
async fn socket(upgraded: baton::Upgraded) -> Socket {
    WebSocketStream::from_raw_socket(Boundary::new(upgraded), Role::Server, None).await
}

/// Answers each text message with `<pid>: <message>`; `messages` counts them across
/// processes (the socket's hand-over state). When the drain starts: moves the socket to the
/// successor between two messages, or closes it with 1012.
async fn echo(
    mut socket: Socket,
    mut messages: u64,
    pid: u32,
    draining: impl std::future::Future<Output = ()>,
    options: Options,
) {
    let mut draining = std::pin::pin!(async {
        if options.ignore_drain {
            std::future::pending::<()>().await;
        }
        draining.await;
        None
    });
    loop {
        // A message is whole or not taken: the library is at a message boundary either way.
        let message = async { Some(socket.next().await) };
        match message.or(draining.as_mut()).await {
            Some(Some(Ok(Message::Text(text)))) => {
                messages += 1;
                let answer = Message::text(format!("{pid}: {text}"));
                if socket.send(answer).await.is_err() {
                    return;
                }
            }
            // Pings are answered by the library; anything else is not this echo's.
            Some(Some(Ok(_))) => {}
            Some(None | Some(Err(_))) => return,
            None => break,
        }
    }
    // Draining. Between messages the library holds nothing (each answer was sent whole): the
    // connection and the bytes the boundary read past the last message are the whole socket.
    if options.hand_over && socket.get_ref().between_messages() {
        let (upgraded, held) = socket.into_inner().into_parts();
        let state = serde_json::json!({ "messages": messages });
        socket = match upgraded.hand_over(ECHO, state, &held).await {
            Ok(()) => return,
            Err((upgraded, _)) => {
                let boundary = Boundary::new(upgraded);
                WebSocketStream::from_partially_read(boundary, held, Role::Server, None).await
            }
        };
    }
    // Close code 1012, then (bounded by the drain) the client's close.
    let close = CloseFrame {
        code: CloseCode::Restart,
        reason: "service restart".into(),
    };
    if socket.close(Some(close)).await.is_ok() {
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                return;
            }
        }
    }
}
