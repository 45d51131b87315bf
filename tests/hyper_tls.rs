//! `examples/hyper.rs` on a `tls:` listener (features `hyper` and `tls`): ALPN chooses HTTP/2
//! or HTTP/1.1, and HTTP/2 clients over TLS that retry what a GOAWAY refused lose nothing
//! across restarts, in a single process and with two workers.
//! Run with: `cargo build --examples --features hyper,tls && cargo test --features hyper,tls
//! --test hyper_tls`.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::authority::Authority;
use common::h2::{get_h2, handshake_h2};
use common::{DEADLINE, Scratch, Server, example};
use futures_rustls::TlsConnector;
use futures_rustls::rustls::ClientConfig;
use smol::Async;

struct Setup {
    _scratch: Scratch,
    authority: Authority,
    server: Server,
}

fn start(name: &str, args: &[&str]) -> Setup {
    let scratch = Scratch::new(name);
    let (cert, key) = (scratch.0.join("cert.pem"), scratch.0.join("key.pem"));
    let authority = Authority::new();
    authority.leaf(1, &cert, &key);
    let mut command = Command::new(example("hyper"));
    command
        .args(["--addr", "tls:127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(args);
    Setup {
        _scratch: scratch,
        authority,
        server: Server::start(command),
    }
}

/// A TLS session to `addr` offering `config`'s protocols; the one ALPN chose.
async fn tls(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<(futures_rustls::client::TlsStream<Async<TcpStream>>, Vec<u8>), String> {
    let socket = Async::<TcpStream>::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = futures_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let session = TlsConnector::from(config.clone())
        .connect(name, socket)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let chosen = session.get_ref().1.alpn_protocol().unwrap_or_default();
    let chosen = chosen.to_vec();
    Ok((session, chosen))
}

#[test]
fn alpn_chooses_http2_or_http1_on_a_tls_listener() {
    let setup = start("hyper-tls-alpn", &[]);
    let addr = setup.server.addr;
    // Offering h2 first: HTTP/2.
    let config = setup.authority.client_offering(&[b"h2", b"http/1.1"]);
    let (status, body, chosen) = smol::block_on(async {
        let (session, chosen) = tls(addr, &config).await?;
        let mut sender = handshake_h2(session).await?;
        let answer = get_h2(&mut sender, addr, "/hello").await?;
        let (status, body) = answer.ok_or("refused")?;
        Ok::<_, String>((status, body, chosen))
    })
    .unwrap();
    assert_eq!(chosen, b"h2");
    assert_eq!(
        (status, body),
        (200, format!("Hello from {}!\n", setup.server.pid))
    );
    // Offering only http/1.1: HTTP/1.1 over the same listener.
    let config = setup.authority.client_offering(&[b"http/1.1"]);
    let answer = smol::block_on(async {
        use smol::io::{AsyncReadExt, AsyncWriteExt};
        let (mut session, chosen) = tls(addr, &config).await?;
        assert_eq!(chosen, b"http/1.1");
        let request = "GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        session.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        session.read_to_string(&mut answer).await.unwrap();
        Ok::<_, String>(answer)
    })
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with(&format!("Hello from {}!\n", setup.server.pid)));
}

fn http2_over_tls_across_restarts(workers: usize) {
    let args = match workers {
        0 => vec![],
        n => vec!["--workers".to_owned(), n.to_string()],
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let setup = start(&format!("hyper-tls-{workers}"), &args);
    let server = &setup.server;
    let config = setup.authority.client_offering(&[b"h2"]);
    let (stop, progress) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, progress, addr) = (stop.clone(), progress.clone(), server.addr);
            let config = config.clone();
            std::thread::spawn(move || -> Result<(u64, u64), String> {
                smol::block_on(async {
                    let (mut answered, mut retried) = (0, 0);
                    let mut sender = handshake_h2(tls(addr, &config).await?.0).await?;
                    while !stop.load(Ordering::Relaxed) {
                        let Some((status, body)) = get_h2(&mut sender, addr, "/hello").await?
                        else {
                            retried += 1;
                            sender = handshake_h2(tls(addr, &config).await?.0).await?;
                            continue;
                        };
                        if status != 200 {
                            return Err(format!("{status} {body}"));
                        }
                        answered += 1;
                        progress.fetch_add(1, Ordering::Relaxed);
                        async_io::Timer::after(Duration::from_millis(2)).await;
                    }
                    Ok((answered, retried))
                })
            })
        })
        .collect();
    let more = |n: u64| {
        let seen = progress.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + DEADLINE;
        while progress.load(Ordering::Relaxed) < seen + n {
            assert!(std::time::Instant::now() < deadline, "{}", server.dump());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut pid = server.pid;
    if workers > 0 {
        server.workers_ready(1, workers);
    }
    for generation in 2..5 {
        more(20);
        match workers {
            0 => pid = server.restart(pid),
            n => {
                server.restart_workers(generation);
                server.workers_ready(generation, n);
            }
        }
    }
    more(20);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let (answered, retried) = client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("a request failed: {e}\n{}", server.dump()));
        assert!(answered > 10, "{answered} answered ({retried} retried)");
        // Each restart's GOAWAY sent it to a new connection (a new session).
        assert!(retried >= 1, "never moved to a new connection");
    }
}

#[test]
fn http2_over_tls_loses_nothing_across_restarts() {
    http2_over_tls_across_restarts(0);
}

#[test]
fn http2_over_tls_loses_nothing_across_restarts_of_two_workers() {
    http2_over_tls_across_restarts(2);
}

/// SIGTERM while TLS connections wait in the listen queue (the process at its connection
/// limit): each is accepted by the shutdown, shakes hands, and its request is answered before
/// it closes, never closed unread.
#[test]
fn a_shutdown_answers_tls_connections_that_wait_in_the_queue() {
    use std::io::{BufReader, Write};
    let setup = start("hyper-tls-queue", &["--max-connections", "1"]);
    let server = &setup.server;
    let config = setup.authority.client();
    let connect = |addr| {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let name = futures_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let session = futures_rustls::rustls::ClientConnection::new(config.clone(), name).unwrap();
        futures_rustls::rustls::StreamOwned::new(session, tcp)
    };
    let request = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // The one connection the process takes: served once, then idle.
    let mut idle = connect(server.addr);
    idle.write_all(request).unwrap();
    let reply = common::read_reply(&mut BufReader::new(&mut idle)).unwrap();
    assert_eq!(reply.status, 200);
    let addr = server.addr;
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let mut stream = connect(addr);
            std::thread::spawn(move || {
                // (The handshake waits for the accept: at the shutdown.)
                stream.write_all(request).map_err(|e| e.to_string())?;
                common::read_reply(&mut BufReader::new(&mut stream)).map_err(|e| format!("{e:?}"))
            })
        })
        .collect();
    common::signal(server.pid, common::Signal::TERM);
    for thread in queued {
        let reply = thread.join().unwrap();
        assert!(
            matches!(&reply, Ok(r) if r.status == 200),
            "a queued TLS connection got {reply:?}\n{}",
            server.dump()
        );
    }
}
