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
//! with the names of the variables that child process sees, `GET /exit-status?code=N` runs
//! `sh -c "exit N"` and answers the exit status it got, `GET /orphan?ms=N` leaves a
//! process behind that exits N ms later (and answers its pid), `GET /events` serves
//! server-sent events (every 100 ms, continuing after `Last-Event-ID`, ending when a drain
//! starts; `GET /events-elsewhere` the same, produced on a thread of its own), `GET
//! /draining-elsewhere?ms=N` answers whether a thread the server does not run saw the drain
//! notice within N ms, `GET /drip?ms=N` sends a byte every N ms, `GET /raw-echo` upgrades (101) to a
//! connection that echoes every byte, `PUT /note` keeps the request body (UTF-8 text, up to
//! `--max-body-bytes`) in the state handed to each successor and `GET /note` answers it,
//! `GET /fail?status=N` returns a handler error (default 500, "the database is down");
//! anything else is 404.

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use http_types::{Method, Request, Response, StatusCode};
use smol::stream::Stream as _;

/// The longest `/slow` waits.
const SLOW_CAP_MS: u64 = 60_000;

/// What the command line asks for: the server's settings, and the example's own switches.
struct Args {
    addrs: Vec<String>,
    /// The core's settings.
    config: baton::Config,
    /// The HTTP server's.
    http: baton::http::Options,
    testing: Testing,
}

/// Switches the integration tests and the benchmark use; a user's deployment needs none.
#[derive(Default)]
struct Testing {
    /// Serve `/hello` from the lean handler path (`baton::lean`) instead of http-types.
    lean: bool,
    /// Wait this long before binding, as an application that loads its configuration first.
    startup_delay: Duration,
}

fn usage() -> String {
    let (d, h) = (baton::Config::default(), baton::http::Options::default());
    format!(
        "usage: hello [--addr HOST:PORT]... [options]
  --addr                where to listen (default: what the parent handed over, else
                        127.0.0.1:8080; :8080 means every interface,
                        unix:/path a Unix socket, tls:HOST:PORT TLS); repeat for several
  --drain-timeout       how long a draining process waits for in-flight requests ({:?})
  --upgrade-timeout     how long a restart waits for the new process to be ready ({:?})
  --header-timeout      how long a client may take to send a request head ({:?})
  --keep-alive-timeout  how long a connection may sit idle between requests ({:?})
  --write-timeout       how long a client may stall a response write ({:?})
  --body-timeout        how long a request body may stall ({:?})
  --max-head-bytes      largest request head accepted ({})
  --max-body-bytes      largest request body accepted ({})
  --max-connections     most connections served at once ({})
  --max-state-bytes     largest state (/count, /note) a restart hands over ({})
  --pid-file PATH       keep the serving process's pid in this file
  --tls-cert, --tls-key PEM certificate chain and key for tls: addresses (--features tls)
  --no-hand-over        on a restart, close keep-alive connections (Connection: close)
                        instead of moving them to the new process
  --max-generations N   most generations alive at once, the serving one counted ({})
  --ready-after 1s      count a successor that cannot report readiness (a Go server)
                        as ready once it has run this long (default: wait for its report)
  --workers N           a supervising process that keeps the PID and the sockets, serving
                        through N worker processes (default: 1 as PID 1, else 0: one
                        process that replaces itself on restart)
usage: hello reload --pid-file PATH [--timeout 30s]
  restarts the server that PATH names and exits 0 once the new code serves, 1 (with the
  reason) if the restart failed
For tests and the benchmark:
  --startup-delay       wait this long before binding (0s)
  --lean                serve /hello from the lean handler path (no http-types values)
  --codec               baton (default) or async-h1 (--features async-h1)",
        d.drain_timeout,
        d.ready_timeout,
        h.header_timeout,
        h.keep_alive_timeout,
        h.write_timeout,
        h.body_timeout,
        h.max_head_bytes,
        h.max_body_bytes,
        d.max_connections,
        d.max_state_bytes,
        d.max_generations,
    )
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addrs: Vec::new(),
        config: baton::Config::default(),
        http: baton::http::Options::default(),
        testing: Testing::default(),
    };
    let (mut tls_cert, mut tls_key) = (None, None);
    let (config, http) = (&mut args.config, &mut args.http);
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(usage());
        }
        if name == "--no-hand-over" {
            config.hand_over_connections = false;
            continue;
        }
        if name == "--lean" {
            args.testing.lean = true;
            continue;
        }
        let value = match inline.or_else(|| argv.next()) {
            Some(value) => value,
            None => return Err(format!("{name} needs a value\n{}", usage())),
        };
        let duration = || parse_duration(&name, &value);
        match name.as_str() {
            "--addr" => args.addrs.push(value),
            "--drain-timeout" => config.drain_timeout = duration()?,
            "--upgrade-timeout" => config.ready_timeout = duration()?,
            "--header-timeout" => http.header_timeout = duration()?,
            "--keep-alive-timeout" => http.keep_alive_timeout = duration()?,
            "--write-timeout" => http.write_timeout = duration()?,
            "--body-timeout" => http.body_timeout = duration()?,
            "--max-head-bytes" => http.max_head_bytes = parse_number(&name, &value)?,
            "--max-body-bytes" => http.max_body_bytes = parse_number(&name, &value)?,
            "--max-connections" => config.max_connections = parse_number(&name, &value)?,
            "--max-state-bytes" => config.max_state_bytes = parse_number(&name, &value)?,
            "--workers" => config.workers = Some(parse_number(&name, &value)?),
            "--max-generations" => config.max_generations = parse_number(&name, &value)?,
            "--ready-after" => config.successor_ready_after = Some(duration()?),
            "--pid-file" => config.pid_file = Some(value.into()),
            "--tls-cert" => tls_cert = Some(value),
            "--tls-key" => tls_key = Some(value),
            "--startup-delay" => args.testing.startup_delay = duration()?,
            "--codec" => match value.as_str() {
                "baton" => http.async_h1 = false,
                "async-h1" if cfg!(feature = "async-h1") => http.async_h1 = true,
                "async-h1" => return Err("--codec async-h1 needs the async-h1 feature".into()),
                _ => return Err(format!("--codec {value:?}: expected baton or async-h1")),
            },
            _ => return Err(format!("unknown option {name}\n{}", usage())),
        }
    }
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) if cfg!(feature = "tls") => {
            http.tls_files = Some((cert.into(), key.into()));
        }
        (None, None) => {}
        _ if !cfg!(feature = "tls") => {
            return Err(
                "--tls-cert and --tls-key need the tls feature (cargo run --features tls)".into(),
            );
        }
        _ => return Err("--tls-cert and --tls-key go together".into()),
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

/// What `hello` hands to each successor: the `/count` counter and the `/note`.
#[derive(Default)]
struct State {
    count: Cell<u64>,
    note: RefCell<String>,
}

async fn route(mut req: Request, pid: u32, state: Rc<State>) -> http_types::Result<Response> {
    let count = &state.count;
    match (req.method(), req.url().path()) {
        (Method::Put, "/note") => {
            let body = req.body_bytes().await?;
            let Ok(text) = String::from_utf8(body) else {
                let mut response = Response::new(StatusCode::BadRequest);
                response.set_body("a note is UTF-8 text\n");
                return Ok(response);
            };
            let bytes = text.len();
            *state.note.borrow_mut() = text;
            Ok(Response::from(format!("kept {bytes} bytes\n")))
        }
        (Method::Get, "/note") => Ok(Response::from(state.note.borrow().clone())),
        (Method::Get, "/fail") => {
            // A handler error: the client sees the status (a 5xx only its reason), the
            // server's log the message.
            let status = query(&req, "status").unwrap_or(500);
            let status = u16::try_from(status).unwrap_or(500);
            Err(http_types::Error::from_str(
                StatusCode::try_from(status).unwrap_or(StatusCode::InternalServerError),
                "the database is down",
            ))
        }
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
        (Method::Get, "/exit-status") => {
            // A child the handler waits for itself: its exit status must reach the handler,
            // whoever else in the process tree reaps orphans.
            let code = query(&req, "code").unwrap_or(0).min(255);
            let output = smol::unblock(move || {
                std::process::Command::new("sh")
                    .args(["-c", &format!("exit {code}")])
                    .output()
            })
            .await?;
            Ok(Response::from(format!("{}\n", output.status)))
        }
        (Method::Get, "/orphan") => {
            // A process that outlives the request: `sh` starts `sleep` in the background and
            // exits, so `sleep` is orphaned, and whoever reaps orphans here must reap it.
            let ms = query(&req, "ms").unwrap_or(100).min(SLOW_CAP_MS);
            let script = format!("sleep {}.{:03} & echo $!", ms / 1000, ms % 1000);
            let output = smol::unblock(move || {
                std::process::Command::new("sh")
                    .args(["-c", &script])
                    .output()
            })
            .await?;
            Ok(Response::from(
                String::from_utf8_lossy(&output.stdout).into_owned(),
            ))
        }
        (Method::Get, "/raw-echo") => {
            // An HTTP/1.1 upgrade with http-types' own API: after the 101, every byte the client
            // sends comes back.
            let mut response = Response::new(StatusCode::SwitchingProtocols);
            response.insert_header("upgrade", "raw-echo");
            response.insert_header("connection", "Upgrade");
            let upgrade = response.recv_upgrade().await;
            smol::spawn(async move {
                if let Some(connection) = upgrade.await {
                    let (reader, writer) = smol::io::split(connection);
                    let _ =
                        smol::io::copy(reader, &mut smol::io::BufWriter::with_capacity(1, writer))
                            .await;
                }
            })
            .detach();
            Ok(response)
        }
        (Method::Get, "/drip") => {
            // A body of unknown length, one byte every `ms` (default 100) for up to a minute:
            // a response a drain timeout cuts mid-body.
            let ms = query(&req, "ms").unwrap_or(100).clamp(1, 1000);
            let drip = Drip {
                tick: async_io::Timer::interval(Duration::from_millis(ms)),
                left: SLOW_CAP_MS / ms,
            };
            let reader = smol::io::BufReader::new(drip);
            let mut response = Response::new(StatusCode::Ok);
            response.set_body(http_types::Body::from_reader(reader, None));
            Ok(response)
        }
        (Method::Get, "/events") => {
            // Server-sent events, one every 100 ms, from the one after the client's
            // Last-Event-ID; the stream ends (cleanly) when this process starts draining, and
            // the client reconnects, to whichever process serves then.
            let after = req
                .header("last-event-id")
                .and_then(|v| v.as_str().trim().parse::<u64>().ok());
            let mut response = Response::new(StatusCode::Ok);
            response.insert_header("content-type", "text/event-stream");
            response.insert_header("cache-control", "no-store");
            let events = Events::new(after.map_or(0, |id| id + 1), pid);
            let events = smol::io::BufReader::new(events);
            response.set_body(http_types::Body::from_reader(events, None));
            Ok(response)
        }
        (Method::Get, "/events-elsewhere") => {
            // The same events, produced on a thread of its own with its own executor (as a
            // framework's streams run on its runtime's threads): the drain notice reaches it
            // there, and the stream ends with its last whole event.
            let after = req
                .header("last-event-id")
                .and_then(|v| v.as_str().trim().parse::<u64>().ok());
            let mut next = after.map_or(0, |id| id + 1);
            let (sender, receiver) = smol::channel::bounded::<Vec<u8>>(4);
            let notice = baton::drain();
            std::thread::spawn(move || {
                smol::block_on(async move {
                    let _ = sender.send(b"retry: 0\n\n".to_vec()).await;
                    loop {
                        let tick = async {
                            async_io::Timer::after(Duration::from_millis(100)).await;
                            true
                        };
                        let drained = async {
                            notice.wait().await;
                            false
                        };
                        if !smol::future::or(tick, drained).await {
                            break;
                        }
                        if sender.send(event(next, pid)).await.is_err() {
                            break;
                        }
                        next += 1;
                    }
                });
            });
            let mut response = Response::new(StatusCode::Ok);
            response.insert_header("content-type", "text/event-stream");
            response.insert_header("cache-control", "no-store");
            let body = smol::io::BufReader::new(Received {
                receiver: Box::pin(receiver),
                pending: Vec::new(),
            });
            response.set_body(http_types::Body::from_reader(body, None));
            Ok(response)
        }
        (Method::Get, "/draining-elsewhere") => {
            // Whether a thread the server does not run sees the drain: it waits for the
            // notice up to `ms` (default 1000) and answers what it saw.
            let ms = query(&req, "ms").unwrap_or(1000).min(SLOW_CAP_MS);
            let notice = baton::drain();
            let seen = smol::unblock(move || {
                let waited = smol::future::or(
                    async {
                        notice.wait().await;
                        true
                    },
                    async {
                        async_io::Timer::after(Duration::from_millis(ms)).await;
                        false
                    },
                );
                (smol::block_on(waited), baton::drain().is_draining())
            })
            .await;
            Ok(Response::from(format!(
                "notice {}, is_draining {}\n",
                seen.0, seen.1
            )))
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
        (
            _,
            "/hello"
            | "/slow"
            | "/echo"
            | "/stream"
            | "/events"
            | "/drip"
            | "/child-env"
            | "/orphan"
            | "/exit-status"
            | "/note"
            | "/fail"
            | "/events-elsewhere"
            | "/draining-elsewhere",
        ) => Ok(Response::new(StatusCode::MethodNotAllowed)),
        _ => Ok(Response::new(StatusCode::NotFound)),
    }
}

/// The `/drip` body: one byte per tick, `left` more.
struct Drip {
    tick: async_io::Timer,
    left: u64,
}

impl smol::io::AsyncRead for Drip {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.left == 0 || buf.is_empty() {
            return std::task::Poll::Ready(Ok(0));
        }
        match std::pin::Pin::new(&mut self.tick).poll_next(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(_) => {
                self.left -= 1;
                buf[0] = b'.';
                std::task::Poll::Ready(Ok(1))
            }
        }
    }
}

/// Server-sent event `n` from `pid`, whole (the blank line ends it).
fn event(n: u64, pid: u32) -> Vec<u8> {
    format!("id: {n}\ndata: event {n} from {pid}\n\n").into_bytes()
}

/// Moves what fits of `pending` into `buf`; how much.
fn take(pending: &mut Vec<u8>, buf: &mut [u8]) -> usize {
    let n = buf.len().min(pending.len());
    buf[..n].copy_from_slice(&pending[..n]);
    pending.drain(..n);
    n
}

/// A body read from a channel that another thread writes into; it ends when that thread
/// closes the channel.
struct Received {
    receiver: std::pin::Pin<Box<smol::channel::Receiver<Vec<u8>>>>,
    pending: Vec<u8>,
}

impl smol::io::AsyncRead for Received {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.pending.is_empty() {
            match this.receiver.as_mut().poll_next(cx) {
                Poll::Ready(Some(bytes)) => this.pending = bytes,
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(take(&mut this.pending, buf)))
    }
}

/// The `/events` body: `retry:` once, then an event every 100 ms until the drain starts.
struct Events {
    next: u64,
    pid: u32,
    tick: async_io::Timer,
    draining: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>,
    /// Bytes of the current event not yet read.
    pending: Vec<u8>,
}

impl Events {
    fn new(first: u64, pid: u32) -> Events {
        Events {
            next: first,
            pid,
            tick: async_io::Timer::interval(Duration::from_millis(100)),
            draining: Box::pin(baton::drain().wait()),
            // Reconnect at once after the stream ends (a restart): the successor is serving.
            pending: b"retry: 0\n\n".to_vec(),
        }
    }
}

impl smol::io::AsyncRead for Events {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.pending.is_empty() {
            if this.draining.as_mut().poll(cx).is_ready() {
                // The end of the stream: the last event is whole, the body ends cleanly.
                return Poll::Ready(Ok(0));
            }
            if std::pin::Pin::new(&mut this.tick)
                .poll_next(cx)
                .is_pending()
            {
                return Poll::Pending;
            }
            this.pending = event(this.next, this.pid);
            this.next += 1;
        }
        Poll::Ready(Ok(take(&mut this.pending, buf)))
    }
}

fn query(req: &Request, key: &str) -> Option<u64> {
    req.url()
        .query_pairs()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// `hello reload --pid-file P [--timeout D]`: a restart that answers.
fn reload(mut argv: impl Iterator<Item = String>) -> ExitCode {
    let (mut pid_file, mut timeout) = (None, Duration::from_secs(30));
    while let Some(flag) = argv.next() {
        let value = argv.next();
        match (flag.as_str(), value) {
            ("--pid-file", Some(path)) => pid_file = Some(path),
            ("--timeout", Some(text)) => match parse_duration(&flag, &text) {
                Ok(t) => timeout = t,
                Err(message) => return fail(&message, 2),
            },
            _ => {
                return fail(
                    &format!("hello reload: unexpected {flag:?}\n{}", usage()),
                    2,
                );
            }
        }
    }
    let Some(pid_file) = pid_file else {
        return fail("hello reload needs --pid-file PATH", 2);
    };
    match baton::reload(&pid_file, timeout) {
        Ok(pid) => {
            println!("restarted: {pid} serves");
            ExitCode::SUCCESS
        }
        Err(error) => fail(&format!("hello reload: {error}"), 1),
    }
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("reload") {
        return reload(argv);
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    std::thread::sleep(args.testing.startup_delay);
    // Without --addr: whatever the parent handed over (a Go server re-executes its successor
    // with no arguments), else the default address.
    let bound = match args.addrs.is_empty() {
        true => baton::Server::bind_inherited_or("127.0.0.1:8080"),
        false => baton::Server::bind_all(&args.addrs),
    };
    let server = match bound {
        Ok(server) => server
            .core(|baton| baton.with_config(args.config))
            .with_options(args.http),
        Err(error) => {
            eprintln!("hello: {error}");
            return ExitCode::FAILURE;
        }
    };
    let pid = std::process::id();
    let server = match args.testing.lean {
        true => {
            let hello = format!("Hello from {pid}!\n").into_bytes();
            server.lean(move |req, res| {
                if req.path() != "/hello" || !matches!(req.method(), "GET" | "HEAD") {
                    return false;
                }
                res.body().extend_from_slice(&hello);
                true
            })
        }
        false => server,
    };
    let state = Rc::new(State::default());
    let (give, take) = (state.clone(), state.clone());
    let server = server.core(|baton| {
        baton
            .on_hand_over_state(
                move || serde_json::json!({ "count": give.count.get(), "note": *give.note.borrow() }),
            )
            .on_inherit_state(move |state| {
                take.count.set(state["count"].as_u64().unwrap_or(0));
                *take.note.borrow_mut() = state["note"].as_str().unwrap_or_default().to_owned();
            })
            .on_exit(move |report| {
                // One write for the line: the processes of a restart share stderr.
                let line = format!("hello[{pid}]: on_exit: {:?}\n", report.stop);
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                async {}
            })
    });
    match smol::block_on(server.serve(move |req| route(req, pid, state.clone()))) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("hello: {error}");
            ExitCode::FAILURE
        }
    }
}
