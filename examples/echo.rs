//! A line echo on baton's core, no HTTP: each line `l` is answered `<pid>: l`. On a restart
//! (`kill -HUP`), every connection moves to the successor at a line boundary, with what it had
//! read of the next line: the client keeps its TCP connection and notices nothing. With
//! `--no-hand-over` it gets `<pid>: goodbye` and a clean close instead. Each connection is a
//! task on smol's global executor, not on the thread that runs the core, reading and writing
//! baton's [`Stream`] (edge-triggered: a read and a write per echoed line).
//!
//! Run with: `cargo run --example echo [-- --addr 127.0.0.1:7000 --workers 2 --pid-file P]`,
//! then `nc 127.0.0.1 7000`. The line `?thread` answers the name of the thread serving it.

use std::process::ExitCode;

use baton::{Baton, Connection, Program, Resumed, Service, Stream};

/// The kind this program's connections move under.
const KIND: &str = "echo";

struct Echo;

impl Program for Echo {
    fn accepted(&self, connection: Connection) {
        smol::spawn(echo(connection.stream, connection.service)).detach();
    }

    fn resumed(&self, resumed: Resumed) {
        // Another kind (from a build that named it differently) is refused: closed, with a
        // warning, and counted as lost.
        if resumed.kind() == KIND {
            let service = resumed.service().clone();
            smol::spawn(echo(resumed.take(), service)).detach();
        }
    }
}

/// Answers each whole line; at the drain, at a line boundary, moves the connection to the
/// successor (with the part of a line already read), or says goodbye and closes. The stream
/// counts the connection for the drain until it drops here.
async fn echo(stream: Stream, service: Service) {
    let pid = std::process::id();
    let prefix = format!("{pid}: ");
    let notice = service.notice();
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut answer = Vec::new();
    loop {
        answer.clear();
        let mut used = 0;
        while let Some(end) = read[used..].iter().position(|&b| b == b'\n') {
            let line = &read[used..used + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line == b"?thread" {
                answer.extend_from_slice(format!("{pid}: thread {}\n", thread_name()).as_bytes());
            } else {
                answer.extend_from_slice(prefix.as_bytes());
                answer.extend_from_slice(line);
                answer.push(b'\n');
            }
            used += end + 1;
        }
        read.drain(..used);
        // Every whole line's answer in one write.
        if !answer.is_empty() && stream.write_all(&answer).await.is_err() {
            return;
        }
        if service.is_draining() {
            let moved = service.hand_over(&stream, KIND, "{}", &read).await;
            if moved.is_err() {
                let _ = stream
                    .write_all(format!("{pid}: goodbye\n").as_bytes())
                    .await;
                let _ = stream.shutdown_write();
            }
            // Moved: dropping this copy leaves the connection to the successor.
            return;
        }
        let more = smol::future::or(async { Some(stream.read(&mut chunk).await) }, async {
            notice.wait().await;
            None
        });
        match more.await {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(n)) => read.extend_from_slice(&chunk[..n]),
            None => {}
        }
    }
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned()
}

fn main() -> ExitCode {
    let (mut addr, mut workers, mut pid_file) = (String::from("127.0.0.1:7000"), None, None);
    let mut drain_timeout = None;
    let mut hand_over = true;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-hand-over" {
            hand_over = false;
            continue;
        }
        let Some(value) = args.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--addr" => addr = value,
            "--workers" => match value.parse::<usize>() {
                Ok(n) => workers = Some(n),
                Err(_) => return usage(&format!("--workers {value:?}: expected a number")),
            },
            "--pid-file" => pid_file = Some(value),
            "--drain-timeout" => match parse_duration(&value) {
                Some(timeout) => drain_timeout = Some(timeout),
                None => return usage(&format!("--drain-timeout {value:?}: expected 5s or 500ms")),
            },
            _ => return usage(&format!("unknown option {flag}")),
        }
    }
    let baton = match Baton::bind(&addr) {
        Ok(baton) => baton.hand_over_connections(hand_over),
        Err(error) => return usage(&format!("echo: {error}")),
    };
    let baton = match workers {
        Some(n) => baton.workers(n),
        None => baton,
    };
    let baton = match pid_file {
        Some(path) => baton.pid_file(path),
        None => baton,
    };
    let baton = match drain_timeout {
        Some(timeout) => baton.drain_timeout(timeout),
        None => baton,
    };
    match smol::block_on(baton.serve(Echo)) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("echo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `5s` or `500ms`.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    match text.strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(std::time::Duration::from_millis),
        None => text
            .strip_suffix('s')?
            .parse()
            .ok()
            .map(std::time::Duration::from_secs),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!(
        "{message}\nusage: echo [--addr HOST:PORT] [--workers N] [--pid-file PATH] \
         [--drain-timeout 5s] [--no-hand-over]"
    );
    ExitCode::from(2)
}
