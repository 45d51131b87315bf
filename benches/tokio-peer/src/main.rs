//! The benchmark's comparison peer: the same `hello` server on tokio `current_thread` + hyper 1,
//! restarting on SIGHUP with shellflip and draining with hyper-util's graceful shutdown, set up
//! as their documentation shows. Logs the same event lines as baton's example, prefixed `peer[pid]`.
//!
//! shellflip does not pass listening sockets: the listener's fd is made inheritable and its
//! number written down shellflip's handover pipe; the child validates it before adopting it.
//!
//! Run with: `cargo run --release --manifest-path benches/tokio-peer/Cargo.toml -- --addr 127.0.0.1:8080`

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use shellflip::RestartConfig;
use shellflip::lifecycle::{LifecycleHandler, PipeWriter, receive_from_old_process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

const SLOW_CAP_MS: u64 = 60_000;

/// shellflip's lifecycle hook: hand the listener's fd number to the new process.
struct Handover {
    fd: RawFd,
}

#[async_trait::async_trait]
impl LifecycleHandler for Handover {
    async fn send_to_new_process(&mut self, mut pipe: PipeWriter) -> io::Result<()> {
        pipe.write_i32(self.fd).await?;
        pipe.flush().await
    }
}

fn log(message: std::fmt::Arguments<'_>) {
    eprintln!("peer[{}]: {message}", std::process::id());
}

struct Args {
    addr: String,
    drain: Duration,
    tls: Option<(String, String)>,
    /// Runtime threads: 1 is tokio's current_thread runtime, more its multi_thread one.
    threads: usize,
}

fn args() -> Args {
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut drain = Duration::from_secs(5);
    let (mut cert, mut key) = (None, None);
    let mut threads = 1;
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv.next().unwrap_or_default();
        match flag.as_str() {
            "--addr" => addr = value,
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
            "--threads" => threads = value.parse().expect("--threads N"),
            "--drain-timeout" => {
                let ms: u64 = match value.strip_suffix("ms") {
                    Some(ms) => ms.parse().expect("--drain-timeout"),
                    None => {
                        value
                            .trim_end_matches('s')
                            .parse::<u64>()
                            .expect("--drain-timeout")
                            * 1000
                    }
                };
                drain = Duration::from_millis(ms);
            }
            other => panic!("unknown option {other}"),
        }
    }
    Args {
        addr,
        drain,
        tls: cert.zip(key),
        threads,
    }
}

/// The same TLS setup as baton's: rustls with ring, TLS 1.2 and 1.3, ALPN http/1.1.
#[cfg(feature = "tls")]
fn tls_acceptor(cert: &str, key: &str) -> io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(io::Error::other)?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(io::Error::other)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Adopts the fd the old process sent, after checking it is a listening TCP socket.
async fn inherited_listener() -> io::Result<Option<(std::net::TcpListener, RawFd)>> {
    let Some(mut pipe) = receive_from_old_process() else {
        return Ok(None);
    };
    let fd = pipe.read_i32().await?;
    // SAFETY: fcntl/getsockopt on a number the parent handed over; a wrong number fails with
    // EBADF or ENOTSOCK, which is checked before taking ownership.
    let listening = unsafe {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut value).cast(),
            &mut len,
        ) == 0
            && value == 1
    };
    if !listening {
        return Err(io::Error::other(format!(
            "handed-over fd {fd} is not a listening socket"
        )));
    }
    // SAFETY: validated above; the parent gave this process the fd.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // SAFETY: plain fcntl on an fd this process now owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Some((listener, fd)))
}

async fn handle(req: Request<Incoming>, pid: u32) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match req.uri().path() {
        "/hello" => Response::new(Full::new(Bytes::from(format!("Hello from {pid}!\n")))),
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(SLOW_CAP_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(Full::new(Bytes::from(format!(
                "Slow hello from {pid} after {ms} ms\n"
            ))))
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    };
    Ok(response)
}

fn main() -> io::Result<()> {
    let args = args();
    let runtime = match args.threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> io::Result<()> {
    let Args {
        addr,
        drain: drain_timeout,
        tls,
        ..
    } = args;
    #[cfg(feature = "tls")]
    let tls = match tls {
        Some((cert, key)) => Some(tls_acceptor(&cert, &key)?),
        None => None,
    };
    #[cfg(not(feature = "tls"))]
    let tls: Option<std::convert::Infallible> = match tls {
        Some(_) => return Err(io::Error::other("--tls-cert needs the tls feature")),
        None => None,
    };
    let pid = std::process::id();
    let (std_listener, inherited) = match inherited_listener().await? {
        Some((listener, _)) => (listener, true),
        None => (
            std::net::TcpListener::bind(addr.trim_start_matches("tls:"))?,
            false,
        ),
    };
    std_listener.set_nonblocking(true)?;
    let fd = std_listener.as_raw_fd();
    // Inheritable, so that shellflip's child gets it.
    // SAFETY: plain fcntl on the listener this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let local: SocketAddr = std_listener.local_addr()?;
    let listener = TcpListener::from_std(std_listener)?;
    let kind = if inherited { "inherited" } else { "created" };
    let scheme = if tls.is_some() { "tls:" } else { "" };
    log(format_args!(
        "listening on {scheme}{local} (fd {fd}, {kind})"
    ));

    let restart = RestartConfig {
        enabled: false,
        restart_signal: SignalKind::hangup(),
        exit_on_error: false,
        lifecycle_handler: Box::new(Handover { fd }),
        ..Default::default()
    };
    let restart_task = restart.try_into_restart_task()?;
    tokio::pin!(restart_task);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let graceful = GracefulShutdown::new();

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                #[cfg(feature = "tls")]
                if let Some(acceptor) = &tls {
                    let (acceptor, watcher) = (acceptor.clone(), graceful.watcher());
                    tokio::spawn(async move {
                        let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                        let Ok(Ok(stream)) = handshake.await else { return };
                        let connection = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service_fn(move |req| handle(req, pid)));
                        let _ = watcher.watch(connection).await;
                    });
                    continue;
                }
                let connection = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(move |req| handle(req, pid)));
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            restarted = &mut restart_task => {
                match restarted {
                    Ok(child) => log(format_args!("child {} ready", child.id())),
                    Err(e) => log(format_args!("restart failed: {e}")),
                }
                break;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    drop(listener);
    log(format_args!("draining {} connections", graceful.count()));
    tokio::select! {
        _ = graceful.shutdown() => log(format_args!("exiting: drained")),
        _ = tokio::time::sleep(drain_timeout) => log(format_args!("exiting: drain timeout")),
    }
    Ok(())
}
