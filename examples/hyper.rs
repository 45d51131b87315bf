//! A hyper service restarted by baton: `GET /hello` answers `Hello from <pid>!`, over HTTP/1.1
//! and HTTP/2 without TLS (h2c) on the same port. `kill -HUP <pid>` (or `--pid-file` and
//! `baton::reload`) restarts it: idle HTTP/1 connections move to the new process, HTTP/2 ones
//! get a GOAWAY, nothing is refused or reset. `GET /slow?ms=N` answers after N milliseconds
//! (a request in flight across a restart). `GET /upgrade` with `Connection: upgrade` and
//! `Upgrade: echo` switches the connection (HTTP/1, through hyper's `upgrade::on`) to a line
//! echo, `<pid>: <line>`, until the drain notice: then it says `<pid>: goodbye` and closes.
//!
//! Run with: `cargo run --features hyper --example hyper [-- --addr 127.0.0.1:8080
//! --workers 2 --pid-file P --drain-timeout 5s]`, then
//! `curl http://127.0.0.1:8080/hello` or `curl --http2-prior-knowledge http://127.0.0.1:8080/hello`.
//! With `--features hyper,tls`, `--addr tls:127.0.0.1:8443 --tls-cert cert.pem --tls-key
//! key.pem` serves HTTPS, HTTP/2 chosen by ALPN (`curl --cacert ca.pem https://...`).

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use baton::Baton;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::rt::{Read, ReadBuf, Write};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};

async fn answer(
    mut request: Request<Incoming>,
    pid: u32,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = match request.uri().path() {
        "/upgrade" => {
            let upgrade = hyper::upgrade::on(&mut request);
            smol::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    line_echo(upgraded, pid).await;
                }
            })
            .detach();
            let mut response = Response::new(Full::default());
            *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(hyper::header::CONNECTION, "upgrade".parse().unwrap());
            headers.insert(hyper::header::UPGRADE, "echo".parse().unwrap());
            return Ok(response);
        }
        "/hello" => format!("Hello from {pid}!\n"),
        "/slow" => {
            let ms = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(100);
            // (One line, for a test to know the request arrived.)
            eprintln!("hyper[{pid}]: in flight: /slow");
            async_io::Timer::after(Duration::from_millis(ms)).await;
            format!("slow from {pid}\n")
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::from("not found\n")));
            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
            return Ok(response);
        }
    };
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// Answers each line `<pid>: <line>` until the drain notice, then says goodbye and closes.
async fn line_echo(mut io: Upgraded, pid: u32) {
    let drain = baton::drain();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = async {
            let mut buf = ReadBuf::new(&mut chunk);
            let read = poll_fn(|cx| Pin::new(&mut io).poll_read(cx, buf.unfilled())).await;
            Some(read.map(|()| buf.filled().len()))
        };
        let drained = async {
            drain.wait().await;
            None
        };
        let answer = match smol::future::or(read, drained).await {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(n)) => {
                pending.extend_from_slice(&chunk[..n]);
                let mut answer = Vec::new();
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    answer.extend_from_slice(format!("{pid}: ").as_bytes());
                    answer.extend_from_slice(&line);
                }
                answer
            }
            None => format!("{pid}: goodbye\n").into_bytes(),
        };
        let mut written = 0;
        while written < answer.len() {
            let write = poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &answer[written..]));
            match write.await {
                Ok(n) if n > 0 => written += n,
                _ => return,
            }
        }
        if drain.is_draining() {
            let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
            return;
        }
    }
}

fn main() -> ExitCode {
    let mut addrs = Vec::new();
    let mut tls_files: (Option<String>, Option<String>) = (None, None);
    let mut workers = None;
    let mut pid_file = None;
    let mut drain_timeout = None;
    let mut max_connections = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--addr" => addrs.push(value),
            "--tls-cert" => tls_files.0 = Some(value),
            "--tls-key" => tls_files.1 = Some(value),
            "--workers" => match value.parse() {
                Ok(n) => workers = Some(n),
                Err(_) => return usage(&format!("--workers {value:?}: expected a number")),
            },
            "--pid-file" => pid_file = Some(value.into()),
            "--max-connections" => match value.parse() {
                Ok(n) => max_connections = Some(n),
                Err(_) => return usage(&format!("--max-connections {value:?}: expected a number")),
            },
            "--drain-timeout" => match parse_duration(&value) {
                Some(timeout) => drain_timeout = Some(timeout),
                None => return usage(&format!("--drain-timeout {value:?}: expected 5s or 500ms")),
            },
            _ => return usage(&format!("unknown option {flag}")),
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:8080".to_owned());
    }
    let baton = match Baton::bind_all(&addrs) {
        Ok(baton) => baton,
        Err(error) => return usage(&format!("hyper: {error}")),
    };
    let mut config = baton.config().clone();
    config.workers = workers.or(config.workers);
    config.pid_file = pid_file.or(config.pid_file);
    config.drain_timeout = drain_timeout.unwrap_or(config.drain_timeout);
    config.max_connections = max_connections.unwrap_or(config.max_connections);
    let pid = std::process::id();
    let service = hyper::service::service_fn(move |request| answer(request, pid));
    let server = baton::hyper::Server::new(baton.with_config(config));
    let server = match tls_files {
        (None, None) => server,
        #[cfg(feature = "tls")]
        (Some(certificate), Some(key)) => server.tls_files(certificate, key),
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => return usage("--tls-cert and --tls-key need the `tls` feature"),
        _ => return usage("--tls-cert and --tls-key go together"),
    };
    match smol::block_on(server.serve(service)) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("hyper: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `5s` or `500ms`.
fn parse_duration(text: &str) -> Option<Duration> {
    match text.strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => text
            .strip_suffix('s')?
            .parse()
            .ok()
            .map(Duration::from_secs),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!(
        "{message}\nusage: hyper [--addr HOST:PORT|tls:HOST:PORT]... [--tls-cert PEM --tls-key PEM] \
         [--workers N] [--pid-file PATH] [--drain-timeout 5s] [--max-connections N]"
    );
    ExitCode::from(2)
}
