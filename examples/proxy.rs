//! A TCP proxy on baton's core: each client connection gets its own connection to
//! `--upstream`, and bytes are copied both ways. On a restart the pair moves to the successor
//! as one hand-over (the client's socket and the upstream's, with one state): neither the
//! client nor the upstream server sees a reconnect, and nothing in flight is lost.
//!
//! Run with: `cargo run --example proxy -- --addr 127.0.0.1:7001 --upstream 127.0.0.1:7000`
//! (in front of `cargo run --example echo`), then `nc 127.0.0.1 7001`.

use std::net::SocketAddr;
use std::process::ExitCode;

use baton::{Baton, Connection, Drain, Program, Resumed, Stream};

/// The kind a pair moves under.
const KIND: &str = "proxy/pair";

struct Proxy {
    upstream: SocketAddr,
}

impl Program for Proxy {
    fn accepted(&self, connection: Connection) {
        let (client, drain, upstream) = (connection.stream, connection.drain, self.upstream);
        smol::spawn(async move {
            // Connecting blocks: on a thread of smol's blocking pool.
            let connected = smol::unblock(move || std::net::TcpStream::connect(upstream)).await;
            match connected.and_then(Stream::from_tcp) {
                Ok(upstream) => relay(client, upstream, drain).await,
                Err(error) => say(&format!("cannot reach {upstream}: {error}")),
            }
        })
        .detach();
    }

    fn resumed(&self, resumed: Resumed) {
        if resumed.kind() != KIND || resumed.streams().len() != 2 {
            // Not ours: baton closes it with a warning, and counts it as lost.
            return;
        }
        let drain = resumed.drain().clone();
        let mut pair = resumed.take_all().into_iter();
        if let (Some(client), Some(upstream)) = (pair.next(), pair.next()) {
            smol::spawn(relay(client, upstream, drain)).detach();
        }
    }
}

/// Copies bytes both ways until either side closes; at the drain, between two copies (so
/// nothing read is left unwritten), moves both sockets to the successor together. If they
/// cannot move, the pair is served here until it ends or the drain gives up.
async fn relay(client: Stream, upstream: Stream, drain: Drain) {
    let (mut to_upstream, mut to_client) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut moving = true;
    loop {
        enum Next {
            FromClient(std::io::Result<usize>),
            FromUpstream(std::io::Result<usize>),
            Drain,
        }
        let from_client = async { Next::FromClient(client.read(&mut to_upstream).await) };
        let from_upstream = async { Next::FromUpstream(upstream.read(&mut to_client).await) };
        let drained = async {
            if !moving {
                std::future::pending::<()>().await;
            }
            drain.wait().await;
            Next::Drain
        };
        let next = smol::future::or(drained, smol::future::or(from_client, from_upstream)).await;
        let done = match next {
            Next::FromClient(Ok(n @ 1..)) => upstream.write_all(&to_upstream[..n]).await.is_err(),
            Next::FromUpstream(Ok(n @ 1..)) => client.write_all(&to_client[..n]).await.is_err(),
            Next::FromClient(_) | Next::FromUpstream(_) => true,
            Next::Drain => {
                let pair = [(&client, &[][..]), (&upstream, &[][..])];
                match drain
                    .hand_over_group(&pair, KIND, &serde_json::Value::Null)
                    .await
                {
                    // The successor has both: dropping these copies leaves them open.
                    Ok(()) => return,
                    Err(error) => {
                        say(&format!("the pair stays here: {error}"));
                        moving = false;
                        false
                    }
                }
            }
        };
        if done {
            // One side ended: end the other's writing too, as a proxy passes a close on.
            let _ = client.shutdown_write();
            let _ = upstream.shutdown_write();
            return;
        }
    }
}

fn main() -> ExitCode {
    let (mut addr, mut upstream, mut workers) = (String::from("127.0.0.1:7001"), None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--addr" => addr = value,
            "--upstream" => match value.parse() {
                Ok(parsed) => upstream = Some(parsed),
                Err(_) => return usage(&format!("--upstream {value:?}: expected HOST:PORT")),
            },
            "--workers" => match value.parse() {
                Ok(n) => workers = Some(n),
                Err(_) => return usage(&format!("--workers {value:?}: expected a number")),
            },
            _ => return usage(&format!("unknown option {flag}")),
        }
    }
    let Some(upstream) = upstream else {
        return usage("--upstream is required");
    };
    let baton = match Baton::bind(&addr) {
        Ok(baton) => baton,
        Err(error) => return usage(&format!("proxy: {error}")),
    };
    let baton = match workers {
        Some(n) => baton.workers(n),
        None => baton,
    };
    match smol::block_on(baton.serve(Proxy { upstream })) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// One line on stderr, in one write: the processes of a restart share stderr, and their
/// lines must not interleave.
fn say(line: &str) {
    let line = format!("proxy[{}]: {line}\n", std::process::id());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

fn usage(message: &str) -> ExitCode {
    eprintln!("{message}\nusage: proxy --upstream HOST:PORT [--addr HOST:PORT] [--workers N]");
    ExitCode::from(2)
}
