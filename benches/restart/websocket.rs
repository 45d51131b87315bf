//! WebSockets across restarts: `examples/websocket.rs` with its sockets moving to each
//! successor (the default) and with `--no-hand-over` (closed with 1012, clients reconnect).
//! Clients send a message, wait for its echo, and send the next, while the server restarts;
//! a message without an echo is lost, a new connection is a reconnect.

use std::cell::Cell;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_io::{Async, Timer};
use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt as _;
use smol::future::FutureExt as _;

use crate::procs::{Flavor, Running};
use crate::{Plan, release_build};

const CLIENTS: usize = 16;
const RESTARTS: usize = 10;

/// Counts of one run.
#[derive(Default)]
struct Counts {
    answered: Cell<u64>,
    lost: Cell<u64>,
    connects: Cell<u64>,
}

pub fn scenarios(root: &Path, plan: &Plan) -> String {
    release_build(
        root,
        &["--example", "websocket"],
        None,
        "the websocket example",
    );
    let binary = root.join("target/release/examples/websocket");
    let flavors = [
        Flavor {
            name: "hand-over",
            binary: binary.clone(),
            prefix: "baton",
            args: Vec::new(),
            addr: "127.0.0.1:0",
            features: "",
        },
        Flavor {
            name: "--no-hand-over",
            binary,
            prefix: "baton",
            args: vec!["--no-hand-over".into()],
            addr: "127.0.0.1:0",
            features: "",
        },
    ];
    let mut out = format!(
        "\n## WebSockets across {RESTARTS} restarts ({CLIENTS} clients, echo after echo)\n\n\
         | flavor | messages answered | messages lost | reconnects per restart |\n\
         |---|---:|---:|---:|\n"
    );
    for run in 0..plan.runs {
        for flavor in &flavors {
            eprintln!(
                "[bench] websockets, run {}/{}: {}",
                run + 1,
                plan.runs,
                flavor.name
            );
            let mut server = Running::start(flavor, None);
            let stop = Arc::new(AtomicBool::new(false));
            let (addr, flag) = (server.addr, stop.clone());
            let clients = std::thread::spawn(move || clients(addr, flag));
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..RESTARTS {
                server.restart();
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            let (answered, lost, connects) = clients.join().expect("websocket clients");
            let reconnects = connects.saturating_sub(CLIENTS as u64) as f64 / RESTARTS as f64;
            eprintln!(
                "[bench]   {answered} answered, {lost} lost, {reconnects:.1} reconnects per restart"
            );
            out.push_str(&format!(
                "| {} | {answered} | {lost} | {reconnects:.1} |\n",
                flavor.name
            ));
        }
    }
    out
}

/// Runs the clients until `stop`: (answered, lost, connects).
fn clients(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64, u64) {
    let counts = Rc::new(Counts::default());
    let executor = smol::LocalExecutor::new();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| executor.spawn(client(addr, i, stop.clone(), counts.clone())))
        .collect();
    smol::block_on(executor.run(async {
        for task in tasks {
            task.await;
        }
    }));
    (
        counts.answered.get(),
        counts.lost.get(),
        counts.connects.get(),
    )
}

async fn client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, counts: Rc<Counts>) {
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = Async::<TcpStream>::connect(addr).await else {
            Timer::after(Duration::from_millis(5)).await;
            continue;
        };
        let url = format!("ws://{addr}/ws");
        let Ok((mut socket, _)) = async_tungstenite::client_async(url, stream).await else {
            continue;
        };
        counts.connects.set(counts.connects.get() + 1);
        while !stop.load(Ordering::Relaxed) {
            sequence += 1;
            let text = format!("{id}-{sequence}");
            if socket.send(Message::text(text.clone())).await.is_err() {
                counts.lost.set(counts.lost.get() + 1);
                break;
            }
            let reply = async { socket.next().await }
                .or(async {
                    Timer::after(Duration::from_secs(5)).await;
                    None
                })
                .await;
            match reply {
                Some(Ok(Message::Text(reply))) if reply.ends_with(&format!(": {text}")) => {
                    counts.answered.set(counts.answered.get() + 1);
                }
                // Closed (1012 on a restart without hand-over) or broken: that message is lost.
                _ => {
                    counts.lost.set(counts.lost.get() + 1);
                    break;
                }
            }
        }
    }
}
