//! HTTP/1.1 upgrades through the real `websocket` example, with a Rust WebSocket client over a
//! real socket: the echo, bytes pipelined behind the handshake, close 1012 when a restart
//! drains, and a socket that ignores the drain closed (and counted) at the drain timeout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use async_io::Async;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use common::{DEADLINE, Server, Signal, example, signal, wait_gone};
use futures_util::StreamExt as _;
use smol::future::FutureExt as _;

type Socket = WebSocketStream<Async<TcpStream>>;

fn websocket(args: &[&str]) -> Server {
    let mut command = Command::new(example("websocket"));
    command.args(["--addr", "127.0.0.1:0"]).args(args);
    Server::start(command)
}

/// A client WebSocket on `/ws`.
fn connect(addr: SocketAddr) -> Socket {
    smol::block_on(async {
        let stream = Async::<TcpStream>::connect(addr).await.unwrap();
        let url = format!("ws://{addr}/ws");
        let (socket, response) = async_tungstenite::client_async(url, stream)
            .await
            .expect("the WebSocket handshake");
        assert_eq!(response.status(), 101);
        socket
    })
}

/// The next message, within [`DEADLINE`].
fn next(socket: &mut Socket) -> Option<Message> {
    smol::block_on(async {
        let message = async { socket.next().await.and_then(Result::ok) };
        let late = async {
            async_io::Timer::after(DEADLINE).await;
            panic!("no WebSocket message within {DEADLINE:?}");
        };
        message.or(late).await
    })
}

fn say(socket: &mut Socket, text: &str) -> String {
    smol::block_on(socket.send(Message::text(text))).unwrap();
    match next(socket) {
        Some(Message::Text(reply)) => reply.to_string(),
        other => panic!("expected a text reply, got {other:?}"),
    }
}

#[test]
fn the_echo_answers_with_the_pid_over_an_upgraded_connection() {
    let server = websocket(&[]);
    let mut socket = connect(server.addr);
    assert_eq!(say(&mut socket, "hi"), format!("{}: hi", server.pid));
    assert_eq!(say(&mut socket, "again"), format!("{}: again", server.pid));
    // A plain request beside it is served as usual.
    assert_eq!(common::get(server.addr, "/hello").unwrap().status, 200);
}

#[test]
fn bytes_pipelined_behind_the_handshake_reach_the_upgraded_handler() {
    let server = websocket(&[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // The handshake and a masked text frame "early", in one write.
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | 5]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"early".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    stream.write_all(&bytes).unwrap();
    // The 101 head, then whatever follows it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed inside the head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(
        !head.contains("content-length"),
        "a 101 with a length: {head}"
    );
    let stream = Async::new(stream).unwrap();
    let mut socket = smol::block_on(WebSocketStream::from_raw_socket(stream, Role::Client, None));
    match next(&mut socket) {
        Some(Message::Text(reply)) => assert_eq!(reply.as_str(), format!("{}: early", server.pid)),
        other => panic!("expected the early message's echo, got {other:?}"),
    }
}

#[test]
fn one_websocket_stays_open_across_ten_restarts_answered_by_each_successor() {
    let server = websocket(&[]);
    let mut socket = connect(server.addr);
    let mut pid = server.pid;
    assert_eq!(say(&mut socket, "0"), format!("{pid}: 0"));
    for i in 1..=10 {
        let next = server.restart(pid);
        assert!(wait_gone(pid, DEADLINE), "{}", server.dump());
        // The same connection, now the successor's: no close, no reconnect.
        assert_eq!(say(&mut socket, &i.to_string()), format!("{next}: {i}"));
        pid = next;
    }
}

#[test]
fn without_hand_over_a_restart_closes_websockets_with_1012_and_the_successor_answers_the_reconnect()
{
    let server = websocket(&["--drain-timeout", "5s", "--no-hand-over"]);
    let mut socket = connect(server.addr);
    assert_eq!(
        say(&mut socket, "before"),
        format!("{}: before", server.pid)
    );
    let next_pid = server.restart(server.pid);
    match next(&mut socket) {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Restart),
        other => panic!("expected close 1012, got {other:?}"),
    }
    // Reading on sends the client's half of the close handshake, as any client does.
    assert!(next(&mut socket).is_none());
    // It closed well before the drain timeout: the old process is gone soon after.
    assert!(
        wait_gone(server.pid, Duration::from_secs(3)),
        "{}",
        server.dump()
    );
    let mut again = connect(server.addr);
    assert_eq!(say(&mut again, "after"), format!("{next_pid}: after"));
}

#[test]
fn a_websocket_that_ignores_the_drain_is_closed_at_the_timeout_and_counted() {
    let server = websocket(&["--drain-timeout", "400ms", "--ignore-drain"]);
    let mut socket = connect(server.addr);
    assert_eq!(say(&mut socket, "x"), format!("{}: x", server.pid));
    signal(server.pid, Signal::TERM);
    let exiting = server.wait_line(&format!("baton[{}]: exiting", server.pid));
    assert!(
        exiting.ends_with(
            "0 requests cut by the drain timeout, 1 connections dropped (1 of them upgraded)"
        ),
        "{exiting}"
    );
    assert!(wait_gone(server.pid, DEADLINE));
    // The client sees the connection end.
    assert!(next(&mut socket).is_none_or(|m| m.is_close()));
}

/// With workers (`--workers 1`), a WebSocket moves from each old worker to the new one in its
/// place: the same connection, answered by each new worker.
#[test]
fn one_websocket_stays_open_across_restarts_of_a_supervising_process() {
    let server = websocket(&["--workers", "1"]);
    let [mut worker] = server.workers_ready(1, 1)[..] else {
        panic!("one worker")
    };
    let mut socket = connect(server.addr);
    assert_eq!(say(&mut socket, "0"), format!("{worker}: 0"));
    for generation in 2..=5 {
        server.restart_workers(generation);
        let [next] = server.workers_ready(generation, 1)[..] else {
            panic!("one worker")
        };
        assert!(wait_gone(worker, DEADLINE), "{}", server.dump());
        let i = generation.to_string();
        assert_eq!(say(&mut socket, &i), format!("{next}: {i}"));
        worker = next;
    }
}

/// A masked client text frame.
fn client_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81, 0x80 | text.len() as u8, 1, 2, 3, 4];
    let mask = [1u8, 2, 3, 4];
    frame.extend(text.bytes().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// The opcode and payload of the next (unmasked, short) server frame.
fn server_frame(stream: &mut impl std::io::Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let len = match head[1] & 0x7F {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext)?;
            u16::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((head[0] & 0x0F, payload))
}

/// Messages sent in bursts, without waiting for their answers, while the socket moves three
/// times: what the server had read past the message it was answering moves with the
/// connection (the library reads through `baton::websocket::Boundary`), so every one is
/// answered, once, in order.
#[test]
fn messages_read_ahead_of_the_answers_move_with_the_socket() {
    use std::io::Write as _;
    let server = websocket(&[]);
    let socket = connect(server.addr);
    let stream = socket.into_inner().into_inner().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let mut writer = stream;
    let sender = std::thread::spawn(move || {
        // Each write ends in the middle of a frame: the server often reads a frame's start
        // without its end, which a library would keep in its buffer.
        let mut sent = 0u64;
        let mut rest = Vec::new();
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let mut burst = std::mem::take(&mut rest);
            burst.extend((sent..sent + 20).flat_map(|n| client_frame(&n.to_string())));
            let next = client_frame(&(sent + 20).to_string());
            let (start, end) = next.split_at(next.len() / 2);
            burst.extend_from_slice(start);
            rest = end.to_vec();
            writer.write_all(&burst).unwrap();
            sent += 21;
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.write_all(&rest).unwrap();
        sent
    });
    let seen = common::Seen::default();
    let arriving = seen.clone();
    let answers = std::thread::spawn(move || {
        let mut got = Vec::new();
        // Until the close the final shutdown sends.
        while let Ok((0x1, payload)) = server_frame(&mut reader) {
            let text = String::from_utf8(payload).unwrap();
            let (pid, n) = text.split_once(": ").expect("pid: n");
            got.push((pid.parse::<u32>().unwrap(), n.parse::<u64>().unwrap()));
            arriving.add(1);
            if got.len() as u64 >= 40_000 {
                break;
            }
        }
        got
    });
    let mut pid = server.pid;
    // Each process answers a few bursts before it is replaced.
    for _ in 0..3 {
        seen.wait_more(100);
        let successor = server.restart(pid);
        assert!(wait_gone(pid, DEADLINE), "{}", server.dump());
        pid = successor;
    }
    seen.wait_more(100);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    // The last answers arrive (a missing one fails here, named below), then the server's
    // close ends the reader.
    seen.reaches(sent as usize);
    signal(pid, Signal::TERM);
    let got = answers.join().unwrap();
    let numbers: Vec<u64> = got.iter().map(|a| a.1).collect();
    let lost = (0..sent).find(|n| numbers.get(*n as usize) != Some(n));
    assert!(
        lost.is_none(),
        "{} of {sent} answered; first missing or out of order: {lost:?}",
        got.len()
    );
    let by: std::collections::HashSet<u32> = got.iter().map(|a| a.0).collect();
    assert!(by.len() >= 3, "answered by {by:?}");
}
