//! A WebSocket echo that takes part in restarts: `GET /ws` upgrades (HTTP/1.1 101) to a
//! WebSocket that answers each text message `m` with `<pid>: m`. When this process starts
//! draining (a restart, or a shutdown signal), every open WebSocket is closed with code 1012
//! ("service restart") and the client reconnects, to the successor.
//!
//! Run with: `cargo run --example websocket [-- --addr 127.0.0.1:8080 --drain-timeout 5s]`
//!
//! The upgrade is http-types' API: the handler answers 101 and calls `recv_upgrade()`, then
//! awaits the connection in a task of its own (baton sends it once the 101 is written); the
//! WebSocket protocol is async-tungstenite's, on futures-io. `baton::draining()` is the drain
//! notice. For tests: `--ignore-drain` leaves sockets open through the drain, so the drain
//! timeout closes them.

use std::process::ExitCode;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::tungstenite::protocol::frame::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use futures_util::StreamExt as _;
use http_types::{Method, Request, Response, StatusCode};
use smol::future::FutureExt as _;

fn main() -> ExitCode {
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut drain_timeout = baton::Config::default().drain_timeout;
    let mut ignore_drain = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--drain-timeout", Some(value)) => match parse_seconds(&value) {
                Some(timeout) => drain_timeout = timeout,
                None => return usage(&format!("--drain-timeout {value:?}: expected 5s or 500ms")),
            },
            ("--ignore-drain", value) => {
                ignore_drain = true;
                if let Some(value) = value {
                    return usage(&format!("unexpected {value:?}"));
                }
            }
            _ => return usage(&format!("unknown option {flag}")),
        }
    }
    let server = match baton::Server::bind(&addr) {
        Ok(server) => server.drain_timeout(drain_timeout),
        Err(error) => {
            eprintln!("websocket: {error}");
            return ExitCode::FAILURE;
        }
    };
    let pid = std::process::id();
    match smol::block_on(server.serve(move |req| route(req, pid, ignore_drain))) {
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
        "{message}\nusage: websocket [--addr HOST:PORT] [--drain-timeout 5s] [--ignore-drain]"
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

async fn route(mut req: Request, pid: u32, ignore_drain: bool) -> http_types::Result<Response> {
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
            let connection = response.recv_upgrade().await;
            // Taken here, on the server's thread; awaited in the socket's task.
            let draining = baton::draining();
            drop(req.take_body());
            smol::spawn(async move {
                if let Some(connection) = connection.await {
                    let socket = WebSocketStream::from_raw_socket(connection, Role::Server, None);
                    echo(socket.await, pid, draining, ignore_drain).await;
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
    Message(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Draining,
}

/// Answers each text message with `<pid>: <message>`; closes with 1012 when the drain starts.
async fn echo<S>(
    mut socket: WebSocketStream<S>,
    pid: u32,
    draining: impl std::future::Future<Output = ()>,
    ignore_drain: bool,
) where
    S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin,
{
    let mut draining = std::pin::pin!(async {
        if ignore_drain {
            std::future::pending::<()>().await;
        }
        draining.await;
        Next::Draining
    });
    loop {
        let message = async { Next::Message(socket.next().await) };
        match message.or(draining.as_mut()).await {
            Next::Message(Some(Ok(Message::Text(text)))) => {
                let reply = Message::text(format!("{pid}: {text}"));
                if socket.send(reply).await.is_err() {
                    return;
                }
            }
            Next::Message(Some(Ok(Message::Close(_)))) | Next::Message(None) => return,
            Next::Message(Some(Ok(_))) => {}
            Next::Message(Some(Err(_))) => return,
            Next::Draining => {
                let frame = CloseFrame {
                    code: CloseCode::Restart,
                    reason: "service restart".into(),
                };
                let _ = socket.close(Some(frame)).await;
                // Wait (bounded by the drain) for the client's close, so the close is clean.
                while let Some(Ok(_)) = socket.next().await {}
                return;
            }
        }
    }
}
