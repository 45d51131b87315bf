//! A hello-world server that restarts with zero downtime: `kill -HUP <pid>` and a new process
//! takes over the socket while this one finishes its requests.
//!
//! Run with: `cargo run --example hello [-- --addr 127.0.0.1:8080 --drain-timeout 5s]`
//!
//! Routes: `GET /hello` answers `Hello from <pid>!`, `GET /slow?ms=N` answers after N ms
//! (at most 60000), anything else is 404.

use std::process::ExitCode;
use std::time::Duration;

use http_types::{Method, Request, Response, StatusCode};

/// The longest `/slow` waits.
const SLOW_CAP_MS: u64 = 60_000;

struct Args {
    addr: String,
    drain_timeout: Duration,
    upgrade_timeout: Duration,
    header_timeout: Duration,
    keep_alive_timeout: Duration,
}

const USAGE: &str = "usage: hello [--addr HOST:PORT] [--drain-timeout 5s] [--upgrade-timeout 10s]
             [--header-timeout 10s] [--keep-alive-timeout 60s]
  --addr                where to listen (default 127.0.0.1:8080; :8080 means every interface)
  --drain-timeout       how long a draining process waits for in-flight requests (default 5s)
  --upgrade-timeout     how long a restart waits for the new process to be ready (default 10s)
  --header-timeout      how long a client may take to send a request head (default 10s)
  --keep-alive-timeout  how long a connection may sit idle between requests (default 60s)";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:8080".into(),
        drain_timeout: Duration::from_secs(5),
        upgrade_timeout: Duration::from_secs(10),
        header_timeout: Duration::from_secs(10),
        keep_alive_timeout: Duration::from_secs(60),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(USAGE.into());
        }
        let value = match inline.or_else(|| argv.next()) {
            Some(value) => value,
            None => return Err(format!("{name} needs a value\n{USAGE}")),
        };
        match name.as_str() {
            "--addr" => args.addr = value,
            "--drain-timeout" => args.drain_timeout = parse_duration(&name, &value)?,
            "--upgrade-timeout" => args.upgrade_timeout = parse_duration(&name, &value)?,
            "--header-timeout" => args.header_timeout = parse_duration(&name, &value)?,
            "--keep-alive-timeout" => args.keep_alive_timeout = parse_duration(&name, &value)?,
            _ => return Err(format!("unknown option {name}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// `250ms`, `5s`, `2m`, or a bare number of seconds.
fn parse_duration(flag: &str, text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{flag} {text:?}: expected a duration like 500ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{flag} {text:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{flag} {text:?}: {e}"))
}

async fn route(req: Request, pid: u32) -> http_types::Result<Response> {
    if req.method() != Method::Get {
        return Ok(Response::new(StatusCode::MethodNotAllowed));
    }
    match req.url().path() {
        "/hello" => Ok(Response::from(format!("Hello from {pid}!\n"))),
        "/slow" => {
            let ms = req
                .url()
                .query_pairs()
                .find(|(key, _)| key == "ms")
                .and_then(|(_, value)| value.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(SLOW_CAP_MS);
            async_io::Timer::after(Duration::from_millis(ms)).await;
            Ok(Response::from(format!(
                "Slow hello from {pid} after {ms} ms\n"
            )))
        }
        _ => Ok(Response::new(StatusCode::NotFound)),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let server = match baton::Server::bind(&args.addr) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("hello: {error}");
            return ExitCode::FAILURE;
        }
    };
    let server = server
        .drain_timeout(args.drain_timeout)
        .upgrade_timeout(args.upgrade_timeout)
        .header_timeout(args.header_timeout)
        .keep_alive_timeout(args.keep_alive_timeout);
    let pid = std::process::id();
    match smol::block_on(server.serve(move |req| route(req, pid))) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("hello: {error}");
            ExitCode::FAILURE
        }
    }
}
