//! A line echo on baton's core, no HTTP: each line `l` is answered `<pid>: l`. On a restart
//! (`kill -HUP`), every connection moves to the successor at a line boundary, with what it had
//! read of the next line (of any size): the client keeps its TCP connection and notices
//! nothing. With `--no-hand-over` it gets `<pid>: goodbye` and a clean close instead. Each
//! connection is a task on smol's global executor, not on the thread that runs the core,
//! reading and writing baton's [`Stream`] (edge-triggered: a read and a write per echoed line).
//! With `--local`, connections are tasks on the core's own thread instead
//! ([`Baton::serve_local`]: tokio `current_thread`'s shape, the thread waiting on the
//! connections' epoll itself).
//!
//! State shared by every connection: the count of lines answered, which a restart carries to
//! the successor (`?count` answers it). With workers, each worker counts its own, and hands
//! it to the worker that takes its place.
//!
//! UDP too: with `--addr udp:127.0.0.1:7000` each datagram `d` is answered `<pid>: d`, across
//! restarts (`--addr` may be given more than once).
//!
//! Run with: `cargo run --example echo [-- --addr 127.0.0.1:7000 --workers 2 --pid-file P]`,
//! then `nc 127.0.0.1 7000`. Lines that start with `?` ask: `?thread` (the thread serving the
//! connection), `?peer` (the client's address as this end sees it), `?count`, `?linger` (this connection ignores the drain: it stays until the
//! drain timeout cuts it, which the report counts).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use baton::{Baton, Connection, Datagrams, Drain, Program, Resumed, Stream};

/// What every connection of the process shares.
struct Echo {
    /// The kind connections move under (`--kind`: a build that names it differently).
    kind: &'static str,
    /// Lines answered, carried across restarts.
    count: Arc<AtomicU64>,
    /// Where connections run (`--local`: the core's thread), else smol's global executor.
    local: Option<baton::Local>,
}

impl Program for Echo {
    fn accepted(&self, connection: Connection) {
        self.spawn(echo(connection.stream, connection.drain, self.shared()));
    }

    fn resumed(&self, resumed: Resumed) {
        // Another kind (from a build that named it differently) is dropped untaken: baton
        // closes it with a warning, and counts it as lost.
        if resumed.kind() == self.kind {
            let drain = resumed.drain().clone();
            self.spawn(echo(resumed.take(), drain, self.shared()));
        }
    }

    fn datagrams(&self, datagrams: Datagrams, drain: Drain) {
        self.spawn(answer_datagrams(datagrams, drain, self.shared()));
    }
}

/// Answers each datagram `<pid>: <datagram>`, until the drain notice: the successor, serving
/// by then, reads the ones that come next. Dropping the socket here tells the drain it is done.
async fn answer_datagrams(datagrams: Datagrams, drain: Drain, shared: Shared) {
    let prefix = format!("{}: ", std::process::id());
    let mut buf = vec![0u8; 65536];
    let mut answer = Vec::new();
    loop {
        let received = async { Some(datagrams.recv_from(&mut buf).await) };
        let drained = async {
            drain.wait().await;
            None
        };
        let Some(Ok((n, from))) = smol::future::or(received, drained).await else {
            return;
        };
        answer.clear();
        answer.extend_from_slice(prefix.as_bytes());
        answer.extend_from_slice(&buf[..n]);
        shared.count.fetch_add(1, Ordering::Relaxed);
        let _ = datagrams.send_to(&answer, from).await;
    }
}

impl Echo {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        match &self.local {
            Some(local) => local.spawn(task).detach(),
            None => smol::spawn(task).detach(),
        }
    }

    fn shared(&self) -> Shared {
        Shared {
            kind: self.kind,
            count: self.count.clone(),
        }
    }
}

/// What one connection's task holds of the program.
struct Shared {
    kind: &'static str,
    count: Arc<AtomicU64>,
}

/// Answers each whole line; at the drain, at a line boundary, moves the connection to the
/// successor (with the part of a line already read). If it cannot move (no successor takes
/// connections, or more held bytes than allowed), it finishes the line it is in, says goodbye
/// and closes. The stream counts the connection for the drain until it drops here.
async fn echo(stream: Stream, drain: Drain, shared: Shared) {
    let pid = std::process::id();
    let prefix = format!("{pid}: ");
    let lingers = AtomicBool::new(false);
    let mut read = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut answer = Vec::new();
    // Set once a hand-over failed: finish the line in progress, then close.
    let mut closing = false;
    // One wait for the whole connection, not one per read.
    let mut drained = std::pin::pin!(drain.wait());
    loop {
        answer.clear();
        let mut used = 0;
        while let Some(end) = read[used..].iter().position(|&b| b == b'\n') {
            let line = &read[used..used + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            answer.extend_from_slice(prefix.as_bytes());
            match line {
                b"?thread" => answer.extend_from_slice(thread_name().as_bytes()),
                b"?peer" => answer.extend_from_slice(stream.peer().to_string().as_bytes()),
                b"?count" => {
                    let count = shared.count.load(Ordering::Relaxed);
                    answer.extend_from_slice(count.to_string().as_bytes());
                }
                b"?linger" => {
                    lingers.store(true, Ordering::Relaxed);
                    answer.extend_from_slice(b"lingering");
                }
                line => answer.extend_from_slice(line),
            }
            answer.push(b'\n');
            shared.count.fetch_add(1, Ordering::Relaxed);
            used += end + 1;
        }
        read.drain(..used);
        // Every whole line's answer in one write.
        if !answer.is_empty() && stream.write_all(&answer).await.is_err() {
            return;
        }
        if closing && read.is_empty() {
            return goodbye(&stream, pid).await;
        }
        if drain.is_draining() && !closing && !lingers.load(Ordering::Relaxed) {
            match drain
                .hand_over(&stream, shared.kind, &serde_json::Value::Null, &read)
                .await
            {
                // Moved: dropping this copy leaves the connection to the successor.
                Ok(()) => return,
                Err(error) if read.is_empty() => {
                    say(&format!("not handed over: {error}"));
                    return goodbye(&stream, pid).await;
                }
                Err(error) => {
                    say(&format!(
                        "not handed over: {error}; finishing its line here"
                    ));
                    closing = true;
                }
            }
        }
        let more = async { Some(stream.read(&mut chunk).await) };
        let wake = async {
            // Only while the drain can still change what this connection does.
            if closing || lingers.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            drained.as_mut().await;
            None
        };
        match smol::future::or(more, wake).await {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(n)) => read.extend_from_slice(&chunk[..n]),
            None => {}
        }
    }
}

async fn goodbye(stream: &Stream, pid: u32) {
    let _ = stream
        .write_all(format!("{pid}: goodbye\n").as_bytes())
        .await;
    let _ = stream.shutdown_write();
}

fn thread_name() -> String {
    let thread = std::thread::current();
    format!("thread {}", thread.name().unwrap_or("unnamed"))
}

/// The command line.
struct Options {
    addrs: Vec<String>,
    workers: Option<usize>,
    pid_file: Option<String>,
    drain_timeout: Option<Duration>,
    max_held_bytes: Option<usize>,
    hand_over: bool,
    kind: String,
    local: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        addrs: Vec::new(),
        workers: None,
        pid_file: None,
        drain_timeout: None,
        max_held_bytes: None,
        hand_over: true,
        kind: "echo".into(),
        local: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        // The flags without a value.
        match flag.as_str() {
            "--no-hand-over" => {
                options.hand_over = false;
                continue;
            }
            "--local" => {
                options.local = true;
                continue;
            }
            _ => {}
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} {value:?}: expected a number"))
        };
        match flag.as_str() {
            "--addr" => options.addrs.push(value.clone()),
            "--workers" => options.workers = Some(number()?),
            "--pid-file" => options.pid_file = Some(value.clone()),
            "--max-held-bytes" => options.max_held_bytes = Some(number()?),
            "--kind" => options.kind = value.clone(),
            "--drain-timeout" => {
                let timeout = parse_duration(&value);
                let timeout = timeout.ok_or(format!("{flag} {value:?}: expected 5s or 500ms"))?;
                options.drain_timeout = Some(timeout);
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.addrs.is_empty() {
        options.addrs.push("127.0.0.1:7000".into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => return usage(&message),
    };
    let baton = match Baton::bind_all(&options.addrs) {
        Ok(baton) => baton.hand_over_connections(options.hand_over),
        Err(error) => return usage(&format!("echo: {error}")),
    };
    let mut config = baton.config().clone();
    config.workers = options.workers.or(config.workers);
    config.pid_file = options.pid_file.map(Into::into);
    config.drain_timeout = options.drain_timeout.unwrap_or(config.drain_timeout);
    config.max_held_bytes = options.max_held_bytes.unwrap_or(config.max_held_bytes);
    let count = Arc::new(AtomicU64::new(0));
    let (given, taken) = (count.clone(), count.clone());
    let baton = baton
        .with_config(config)
        .on_hand_over_state(move || given.load(Ordering::Relaxed).into())
        .on_inherit_state(move |state| taken.store(state.as_u64().unwrap_or(0), Ordering::Relaxed));
    // (The kind lives as long as the process.)
    let kind: &'static str = Box::leak(options.kind.into_boxed_str());
    let local = options.local.then(baton::Local::new);
    let echo = Echo {
        kind,
        count,
        local: local.clone(),
    };
    let served = match local {
        Some(local) => smol::block_on(baton.serve_local(echo, local)),
        None => smol::block_on(baton.serve(echo)),
    };
    match served {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("echo: {error}");
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

/// One line on stderr, in one write: the processes of a restart share stderr, and their
/// lines must not interleave.
fn say(line: &str) {
    let line = format!("echo[{}]: {line}\n", std::process::id());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

fn usage(message: &str) -> ExitCode {
    eprintln!(
        "{message}\nusage: echo [--addr HOST:PORT|udp:HOST:PORT|unix:PATH]... [--workers N] [--pid-file PATH] \
         [--drain-timeout 5s] [--max-held-bytes N] [--kind NAME] [--no-hand-over] [--local]"
    );
    ExitCode::from(2)
}
