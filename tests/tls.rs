//! TLS listeners (feature `tls`): requests, restarts under load, certificate rotation by
//! restart, a broken key, a stalled handshake, plain and TLS side by side. A throwaway CA and
//! certificates are made at test time; the client is rustls over a blocking socket.
//! Run with: `cargo test --features tls` (it builds the example with TLS, then runs these).
#![cfg(feature = "tls")]

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::authority::Authority;
use common::{DEADLINE, Scratch, Seen, Server, Signal, example, read_reply, signal, wait_gone};
use futures_rustls::rustls::{self, ClientConfig, ClientConnection, StreamOwned};

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(DEADLINE))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let session = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    Ok(StreamOwned::new(session, tcp))
}

/// One GET on an established TLS stream.
fn get(stream: &mut Tls, path: &str) -> Result<common::Reply, common::Failure> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
    stream.flush()?;
    read_reply(&mut BufReader::new(stream))
}

/// The DER of the certificate the server presented.
fn presented(stream: &Tls) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

struct Setup {
    scratch: Scratch,
    authority: Authority,
    cert: PathBuf,
    key: PathBuf,
}

fn setup(name: &str) -> Setup {
    let scratch = Scratch::new(name);
    let (cert, key) = (scratch.0.join("cert.pem"), scratch.0.join("key.pem"));
    let authority = Authority::new();
    authority.leaf(1, &cert, &key);
    Setup {
        scratch,
        authority,
        cert,
        key,
    }
}

fn hello_tls(setup: &Setup, extra: &[&str]) -> Server {
    let mut command = Command::new(example("fixture"));
    command
        .args(["--addr", "tls:127.0.0.1:0", "--tls-cert"])
        .arg(&setup.cert)
        .arg("--tls-key")
        .arg(&setup.key)
        .args(extra);
    Server::start(command)
}

#[test]
fn serves_https_with_alpn_http_1_1() {
    let setup = setup("tls-basic");
    let server = hello_tls(&setup, &[]);
    assert!(server.wait_line("listening on tls:").contains("(fd"));
    let config = setup.authority.client();
    let mut stream = connect(server.addr, &config).unwrap();
    for _ in 0..5 {
        let reply = get(&mut stream, "/hello").unwrap();
        assert_eq!(reply.pid(), Some(server.pid));
    }
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let _ = &setup.scratch;
}

/// Sets its flag when dropped: client threads looping on it stop even when the test panics.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn restart_rotates_the_certificate_without_failures() {
    let setup = setup("tls-rotate");
    let server = hello_tls(&setup, &[]);
    let config = setup.authority.client();
    let first = presented(&{
        let mut s = connect(server.addr, &config).unwrap();
        get(&mut s, "/hello").unwrap();
        s
    });
    // Keep-alive clients in a loop across the rotation.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Answers as they come, so that each restart happens with requests going on both sides
    // of it (however fast a restart is next to a handshake).
    let answered = Seen::default();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (stop, config, addr) = (stop.clone(), config.clone(), server.addr);
        let answered = answered.clone();
        clients.push(std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let mut stream: Option<Tls> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = match stream.as_mut() {
                    Some(s) => s,
                    None => match connect(addr, &config) {
                        Ok(s) => stream.insert(s),
                        Err(e) => {
                            failed.push(format!("connect: {e}"));
                            continue;
                        }
                    },
                };
                match get(s, "/hello") {
                    Ok(reply) if reply.status == 200 => {
                        ok += 1;
                        answered.add(1);
                        if reply.closes() {
                            stream = None;
                        }
                    }
                    other => {
                        failed.push(format!("{other:?}"));
                        stream = None;
                    }
                }
            }
            (ok, failed)
        }));
    }
    // (The clients stop however this test ends.)
    let _stop_clients = StopOnDrop(stop.clone());
    answered.wait_until(6);
    let rotated = setup.authority.leaf(2, &setup.cert, &setup.key);
    let next = server.restart(server.pid);
    assert!(wait_gone(server.pid, DEADLINE));
    answered.wait_more(6);
    let next2 = server.restart(next);
    answered.wait_more(6);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let (ok, failed) = client.join().unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total >= 18, "{total} answers");
    let mut stream = connect(server.addr, &config).unwrap();
    assert_eq!(get(&mut stream, "/hello").unwrap().pid(), Some(next2));
    let now = presented(&stream);
    assert_eq!(now, rotated, "the successor presents the new certificate");
    assert_ne!(now, first);
}

#[test]
fn a_broken_key_leaves_the_old_process_serving_the_old_certificate() {
    let setup = setup("tls-broken");
    let server = hello_tls(&setup, &[]);
    let config = setup.authority.client();
    let mut stream = connect(server.addr, &config).unwrap();
    get(&mut stream, "/hello").unwrap();
    let before = presented(&stream);
    std::fs::write(
        &setup.key,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    signal(server.pid, Signal::HUP);
    let failed = server.wait_line(&format!("baton[{}]: child ", server.pid));
    assert!(failed.contains("failed"), "{failed}");
    assert!(server.dump().contains("TLS key"), "{}", server.dump());
    let mut again = connect(server.addr, &config).unwrap();
    assert_eq!(get(&mut again, "/hello").unwrap().pid(), Some(server.pid));
    assert_eq!(presented(&again), before);
}

#[test]
fn a_stalled_handshake_is_closed_at_the_timeout_and_disturbs_no_one() {
    let setup = setup("tls-stalled");
    let server = hello_tls(&setup, &["--header-timeout", "300ms"]);
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    // A handshake failure on another connection changes nothing either.
    let mut garbage = TcpStream::connect(server.addr).unwrap();
    garbage
        .write_all(b"this is not a ClientHello\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let config = setup.authority.client();
    let mut good = connect(server.addr, &config).unwrap();
    assert_eq!(get(&mut good, "/hello").unwrap().status, 200);
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(get(&mut good, "/hello").unwrap().status, 200);
}

#[test]
fn plain_and_tls_listeners_side_by_side() {
    let setup = setup("tls-mixed");
    let mut command = Command::new(example("fixture"));
    command
        .args([
            "--addr",
            "127.0.0.1:0",
            "--addr",
            "tls:127.0.0.1:0",
            "--tls-cert",
        ])
        .arg(&setup.cert)
        .arg("--tls-key")
        .arg(&setup.key);
    let server = Server::start(command);
    let addresses = server.addresses(2);
    let tls_addr: SocketAddr = addresses[1].trim_start_matches("tls:").parse().unwrap();
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(server.pid)
    );
    let mut stream = connect(tls_addr, &setup.authority.client()).unwrap();
    assert_eq!(get(&mut stream, "/hello").unwrap().pid(), Some(server.pid));
    // After a restart, each listener is still what it was.
    let next = server.restart(server.pid);
    assert_eq!(
        common::get(server.addr, "/hello").unwrap().pid(),
        Some(next)
    );
    let mut stream = connect(tls_addr, &setup.authority.client()).unwrap();
    assert_eq!(get(&mut stream, "/hello").unwrap().pid(), Some(next));
}

/// A certificate and key with no `tls:` address is refused at start-up, with what to add:
/// the user asked for TLS and must not get plain HTTP without a word.
#[test]
fn tls_files_without_a_tls_address_are_refused_with_what_to_add() {
    let setup = setup("tls-no-address");
    let output = Command::new(example("fixture"))
        .args(["--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(&setup.cert)
        .arg("--tls-key")
        .arg(&setup.key)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("no address is a tls: one"), "{text}");
    // And a tls: address without them.
    let output = Command::new(example("fixture"))
        .args(["--addr", "tls:127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("needs a certificate and key"), "{text}");
}

/// A WebSocket over TLS (the `websocket` example with a `tls:` address): the upgrade works,
/// and on a restart, since a TLS session cannot move, the socket closes with 1012 and the
/// successor answers the reconnect.
#[test]
fn a_websocket_over_tls_echoes_and_closes_with_1012_on_restart() {
    use async_tungstenite::tungstenite::Message;
    use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use futures_util::StreamExt as _;
    let setup = setup("tls-websocket");
    let mut command = Command::new(example("websocket"));
    command
        .args(["--addr", "tls:127.0.0.1:0", "--tls-cert"])
        .arg(&setup.cert)
        .arg("--tls-key")
        .arg(&setup.key);
    let server = Server::start(command);
    let client = setup.authority.client();
    let open = |addr: SocketAddr| {
        smol::block_on(async {
            let tcp = async_io::Async::<TcpStream>::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let connector = futures_rustls::TlsConnector::from(client.clone());
            let tls = connector.connect(name, tcp).await.unwrap();
            let url = format!("wss://127.0.0.1:{}/ws", addr.port());
            async_tungstenite::client_async(url, tls).await.unwrap().0
        })
    };
    let say = |socket: &mut async_tungstenite::WebSocketStream<_>, text: &str| {
        smol::block_on(async {
            socket.send(Message::text(text)).await.unwrap();
            socket.next().await.unwrap().unwrap()
        })
    };
    let mut socket = open(server.addr);
    let reply = say(&mut socket, "secret");
    assert_eq!(reply.to_text().unwrap(), format!("{}: secret", server.pid));
    let next = server.restart(server.pid);
    let closed = smol::block_on(socket.next());
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Restart),
        other => panic!("expected close 1012, got {other:?}"),
    }
    let _ = smol::block_on(socket.next());
    assert!(wait_gone(server.pid, DEADLINE));
    let mut again = open(server.addr);
    let reply = say(&mut again, "again");
    assert_eq!(reply.to_text().unwrap(), format!("{next}: again"));
}

/// SIGTERM while TLS connections wait in the listen queue (the process at its connection
/// limit, holding an idle keep-alive connection): each is accepted by the shutdown, shakes
/// hands, and its request is answered before it closes, never closed unread.
#[test]
fn a_shutdown_answers_tls_connections_that_wait_in_the_queue() {
    let setup = setup("tls-queue");
    let server = hello_tls(&setup, &["--max-connections", "1"]);
    let config = setup.authority.client();
    let mut idle = connect(server.addr, &config).unwrap();
    assert_eq!(get(&mut idle, "/hello").unwrap().status, 200);
    let addr = server.addr;
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let mut stream = connect(addr, &config).unwrap();
            // (The handshake waits for the accept: at the shutdown.)
            std::thread::spawn(move || get(&mut stream, "/hello").map_err(|e| format!("{e:?}")))
        })
        .collect();
    signal(server.pid, Signal::TERM);
    for thread in queued {
        let reply = thread.join().unwrap();
        assert!(
            matches!(&reply, Ok(r) if r.status == 200),
            "a queued TLS connection got {reply:?}\n{}",
            server.dump()
        );
    }
    drop(idle);
}
