//! A hello-world server that restarts with zero downtime: `kill -HUP <pid>` and a new process
//! takes over the socket while this one finishes its requests.
//!
//! Run with: `cargo run --example hello [-- --addr 127.0.0.1:8080 --drain-timeout 5s]`
//!
//! Routes: `GET /hello` answers `Hello from <pid>!`, `GET /slow?ms=N` answers after N ms
//! (at most 60000), `POST /echo` answers with the request body (and a chunked body's trailer fields as
//! `echo-trailer-<name>` headers), `GET /stream?lines=N` answers
//! with a body of unknown length (sent chunked), `GET /count` counts its calls across
//! restarts (the count is handed to each successor), `GET /child-env` starts `env` and answers
//! with the names of the variables that child process sees; anything else is 404.

use std::cell::Cell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use http_types::{Method, Request, Response, StatusCode};

/// The longest `/slow` waits.
const SLOW_CAP_MS: u64 = 60_000;

struct Args {
    addrs: Vec<String>,
    drain_timeout: Duration,
    upgrade_timeout: Duration,
    header_timeout: Duration,
    keep_alive_timeout: Duration,
    max_head: Option<usize>,
    max_body: Option<u64>,
    pid_file: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    max_connections: Option<usize>,
    write_timeout: Option<Duration>,
    body_timeout: Option<Duration>,
    startup_delay: Duration,
    hand_over: bool,
    async_h1: bool,
}

const USAGE: &str = "usage: hello [--addr HOST:PORT] [--drain-timeout 5s] [--upgrade-timeout 10s]
             [--header-timeout 10s] [--keep-alive-timeout 60s] [--max-head-bytes N]
             [--max-body-bytes N] [--codec baton|async-h1]
  --addr                where to listen (default 127.0.0.1:8080; :8080 means every interface,
                        unix:/path a Unix socket); repeat it for several listeners
  --drain-timeout       how long a draining process waits for in-flight requests (default 5s)
  --upgrade-timeout     how long a restart waits for the new process to be ready (default 10s)
  --header-timeout      how long a client may take to send a request head (default 10s)
  --keep-alive-timeout  how long a connection may sit idle between requests (default 60s)
  --max-head-bytes      largest request head accepted (default 16384)
  --max-body-bytes      largest request body accepted (default 16777216)
  --pid-file            keep the serving process's pid in this file
  --tls-cert, --tls-key PEM certificate chain and key for tls:HOST:PORT addresses
                        (built with --features tls)
  --max-connections     most connections served at once (default 10000)
  --write-timeout       how long a client may stall a response write (default 30s)
  --body-timeout        how long a request body may stall (default 30s)
  --startup-delay       wait this long before binding, as an application that loads its
                        configuration first would (default 0s)
  --no-hand-over        on a restart, close keep-alive connections (Connection: close)
                        instead of moving them to the new process
  --codec               baton (default) or async-h1 (built with --features async-h1)";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addrs: Vec::new(),
        drain_timeout: Duration::from_secs(5),
        upgrade_timeout: Duration::from_secs(10),
        header_timeout: Duration::from_secs(10),
        keep_alive_timeout: Duration::from_secs(60),
        max_head: None,
        max_body: None,
        pid_file: None,
        tls_cert: None,
        tls_key: None,
        max_connections: None,
        write_timeout: None,
        body_timeout: None,
        startup_delay: Duration::ZERO,
        hand_over: true,
        async_h1: false,
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
        if name == "--no-hand-over" {
            args.hand_over = false;
            continue;
        }
        let value = match inline.or_else(|| argv.next()) {
            Some(value) => value,
            None => return Err(format!("{name} needs a value\n{USAGE}")),
        };
        match name.as_str() {
            "--addr" => args.addrs.push(value),
            "--drain-timeout" => args.drain_timeout = parse_duration(&name, &value)?,
            "--upgrade-timeout" => args.upgrade_timeout = parse_duration(&name, &value)?,
            "--header-timeout" => args.header_timeout = parse_duration(&name, &value)?,
            "--keep-alive-timeout" => args.keep_alive_timeout = parse_duration(&name, &value)?,
            "--max-head-bytes" => args.max_head = Some(parse_number(&name, &value)?),
            "--max-body-bytes" => args.max_body = Some(parse_number(&name, &value)?),
            "--pid-file" => args.pid_file = Some(value),
            "--tls-cert" => args.tls_cert = Some(value),
            "--tls-key" => args.tls_key = Some(value),
            "--max-connections" => args.max_connections = Some(parse_number(&name, &value)?),
            "--write-timeout" => args.write_timeout = Some(parse_duration(&name, &value)?),
            "--body-timeout" => args.body_timeout = Some(parse_duration(&name, &value)?),
            "--startup-delay" => args.startup_delay = parse_duration(&name, &value)?,
            "--codec" => match value.as_str() {
                "baton" => args.async_h1 = false,
                "async-h1" if cfg!(feature = "async-h1") => args.async_h1 = true,
                "async-h1" => return Err("--codec async-h1 needs the async-h1 feature".into()),
                _ => return Err(format!("--codec {value:?}: expected baton or async-h1")),
            },
            _ => return Err(format!("unknown option {name}\n{USAGE}")),
        }
    }
    if args.addrs.is_empty() {
        args.addrs.push("127.0.0.1:8080".into());
    }
    Ok(args)
}

fn parse_number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag} {text:?}: expected a whole number"))
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

async fn route(mut req: Request, pid: u32, count: Rc<Cell<u64>>) -> http_types::Result<Response> {
    match (req.method(), req.url().path()) {
        (Method::Get, "/count") => {
            // Counts across restarts: the count travels to each successor with hand-over.
            count.set(count.get() + 1);
            Ok(Response::from(format!(
                "count {} from {pid}\n",
                count.get()
            )))
        }
        (Method::Get | Method::Head, "/hello") => {
            Ok(Response::from(format!("Hello from {pid}!\n")))
        }
        (Method::Get, "/slow") => {
            let ms = query(&req, "ms").unwrap_or(1000).min(SLOW_CAP_MS);
            async_io::Timer::after(Duration::from_millis(ms)).await;
            Ok(Response::from(format!(
                "Slow hello from {pid} after {ms} ms\n"
            )))
        }
        (Method::Post, "/echo") => {
            let body = req.body_bytes().await?;
            let mut response = Response::from(body);
            // A chunked request's trailer fields come back as `echo-trailer-<name>` headers.
            if let Some(trailers) = req.recv_trailers().await {
                for (name, values) in trailers.iter() {
                    response.append_header(format!("echo-trailer-{name}").as_str(), values);
                }
            }
            Ok(response)
        }
        (Method::Get, "/child-env") => {
            // What a process the handler starts inherits: names only, values stay private.
            let output = smol::unblock(|| std::process::Command::new("env").output()).await?;
            let names: String = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(name, _)| format!("{name}\n"))
                .collect();
            Ok(Response::from(names))
        }
        (Method::Get, "/stream") => {
            // A body of unknown length: sent chunked.
            let lines = query(&req, "lines").unwrap_or(3).min(10_000);
            let text: String = (0..lines)
                .map(|i| format!("line {i} from {pid}\n"))
                .collect();
            let reader = smol::io::BufReader::new(smol::io::Cursor::new(text.into_bytes()));
            let mut response = Response::new(StatusCode::Ok);
            response.set_body(http_types::Body::from_reader(reader, None));
            Ok(response)
        }
        (_, "/hello" | "/slow" | "/echo" | "/stream" | "/child-env") => {
            Ok(Response::new(StatusCode::MethodNotAllowed))
        }
        _ => Ok(Response::new(StatusCode::NotFound)),
    }
}

fn query(req: &Request, key: &str) -> Option<u64> {
    req.url()
        .query_pairs()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    std::thread::sleep(args.startup_delay);
    let server = match baton::Server::bind_all(&args.addrs) {
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
    let server = match args.max_head {
        Some(bytes) => server.max_head_bytes(bytes),
        None => server,
    };
    let server = match args.max_body {
        Some(bytes) => server.max_body_bytes(bytes),
        None => server,
    };
    let server = server.hand_over_connections(args.hand_over);
    let server = match args.max_connections {
        Some(limit) => server.max_connections(limit),
        None => server,
    };
    let server = match args.body_timeout {
        Some(timeout) => server.body_timeout(timeout),
        None => server,
    };
    let server = match args.write_timeout {
        Some(timeout) => server.write_timeout(timeout),
        None => server,
    };
    let server = match args.pid_file {
        Some(path) => server.pid_file(path),
        None => server,
    };
    #[cfg(feature = "tls")]
    let server = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => server.tls_files(cert, key),
        _ => server,
    };
    #[cfg(not(feature = "tls"))]
    if args.tls_cert.is_some() || args.tls_key.is_some() {
        eprintln!(
            "hello: --tls-cert and --tls-key need the tls feature (cargo run --features tls)"
        );
        return ExitCode::from(2);
    }
    #[cfg(feature = "async-h1")]
    let server = server.async_h1(args.async_h1);
    let _ = args.async_h1;
    let pid = std::process::id();
    let count = Rc::new(Cell::new(0u64));
    let (give, take) = (count.clone(), count.clone());
    let server = server
        .on_hand_over_state(move || serde_json::json!({ "count": give.get() }))
        .on_inherit_state(move |state| take.set(state["count"].as_u64().unwrap_or(0)));
    match smol::block_on(server.serve(move |req| route(req, pid, count.clone()))) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("hello: {error}");
            ExitCode::FAILURE
        }
    }
}
