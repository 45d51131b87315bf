//! The phases of a serving process driven in this process, without spawning one: the test
//! plays the supervising process (on the worker's control channel) and the predecessor (on
//! its relay), and a small program holds, hands over or resumes connections. Each test
//! goes through start, serving and draining to the report, the way the one loop runs them.

use std::cell::RefCell;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::Duration;

use super::*;
use crate::handoff::relay;

/// Long enough for anything these tests wait for; a failure, not a pace.
const DEADLINE: Duration = Duration::from_secs(10);

/// The drain and the edge are the process's: these tests take turns.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let guard = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // A fresh serving round: the one before ended with its test.
    crate::drain::next_round();
    guard
}

/// What the program does with an accepted connection once the drain starts.
#[derive(Clone, Copy)]
enum Treat {
    /// Keeps it until the drain gives up on it.
    Hold,
    /// Moves it to the successor as `line`, with held bytes and a state.
    HandOver,
}

/// The test's program: says when it accepted, treats accepted connections as told, and
/// resumes the kind `line` (echoing what it holds), dropping any other.
struct Test {
    treat: Treat,
    accepted: mpsc::Sender<()>,
}

impl Program for Test {
    fn accepted(&self, connection: Connection) {
        let Connection { stream, drain, .. } = connection;
        let treat = self.treat;
        let _ = self.accepted.send(());
        smol::spawn(async move {
            drain.wait().await;
            if let Treat::HandOver = treat {
                let state = serde_json::json!({ "line": 1 });
                if drain
                    .hand_over(&stream, "line", &state, b"half a")
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            drain.cut().await;
            drop(stream);
        })
        .detach();
    }

    fn resumed(&self, resumed: Resumed) {
        if resumed.kind() != "line" {
            return;
        }
        let stream = resumed.take();
        smol::spawn(async move {
            let mut held = [0u8; 64];
            let n = stream.read(&mut held).await.unwrap_or(0);
            let answer = [b"resumed: ", &held[..n]].concat();
            let _ = stream.write_all(&answer).await;
        })
        .detach();
    }
}

/// A worker serving on its own thread of this process, with the test at the other end of
/// its control channel.
struct Worker {
    addr: SocketAddr,
    control: Relay,
    accepted: mpsc::Receiver<()>,
    ended: std::thread::JoinHandle<(io::Result<Report>, Vec<String>)>,
}

impl Worker {
    /// Starts one that treats connections as told, drains for `drain_timeout`, and (given
    /// `predecessor`, a relay's end) takes connections and state from it first.
    fn start(treat: Treat, drain_timeout: Duration, predecessor: Option<OwnedFd>) -> Worker {
        let (control, theirs) = relay::pair().unwrap();
        let (accepted_tx, accepted) = mpsc::channel();
        let (addr_tx, addr) = mpsc::channel();
        let ended = std::thread::spawn(move || {
            let baton = crate::Baton::bind("127.0.0.1:0").unwrap();
            addr_tx.send(baton.local_addr().unwrap()).unwrap();
            let mut setup = baton.into_setup();
            setup.control = Some(theirs);
            setup.relay = predecessor;
            setup.config.drain_timeout = drain_timeout;
            let events = Rc::new(RefCell::new(Vec::new()));
            let log = events.clone();
            setup.on_event = Rc::new(move |event: &Event<'_>| {
                log.borrow_mut().push(event.to_string());
            });
            let program = Rc::new(Test {
                treat,
                accepted: accepted_tx,
            });
            let report = smol::block_on(run(setup, program));
            (report, events.take())
        });
        Worker {
            addr: addr.recv_timeout(DEADLINE).unwrap(),
            control: Relay::new(control).unwrap(),
            accepted,
            ended,
        }
    }

    /// A client connected and accepted by the program.
    fn client(&self) -> TcpStream {
        let client = TcpStream::connect(self.addr).unwrap();
        self.accepted.recv_timeout(DEADLINE).expect("accepted");
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        client
    }

    /// Sends `message` as the supervising process would.
    fn tell(&self, message: Message<'_>) {
        smol::block_on(self.control.send(message)).unwrap();
    }

    /// Its report and every event it emitted, once it has ended.
    fn end(self) -> (Report, Vec<String>) {
        drop(self.control);
        let (report, events) = self.ended.join().unwrap();
        (report.unwrap(), events)
    }
}

/// Reads until the peer closes; what came.
fn read_to_close(client: &mut TcpStream) -> String {
    let mut text = String::new();
    client.read_to_string(&mut text).unwrap();
    text
}

/// Serving, then a shutdown from the supervising process: the worker stops accepting, counts
/// the connection it drains, and cuts it at the drain timeout; the report says so (not
/// clean) and the connection is closed, not left open.
#[test]
fn a_quit_drains_and_cuts_what_outlives_the_timeout() {
    let _turn = turn();
    let worker = Worker::start(Treat::Hold, Duration::from_millis(200), None);
    let mut client = worker.client();
    let addr = worker.addr;
    worker.tell(Message::Quit(Signal::Term));
    let (report, events) = worker.end();
    assert_eq!(
        report.stop,
        Stop::Shutdown {
            signal: Signal::Term
        }
    );
    assert_eq!((report.cut, report.dropped), (0, 1), "{report:?}");
    assert_eq!(report.cut_by, Some(CutBy::DrainTimeout));
    assert!(!report.is_clean());
    assert!(
        events.contains(&"draining 1 connections (0 requests in flight)".to_string()),
        "{events:#?}"
    );
    assert_eq!(read_to_close(&mut client), "");
    // A worker's copies of the sockets close at any drain; this one held the only copy.
    assert!(TcpStream::connect(addr).is_err());
}

/// Retired with a relay to the new worker: the connection moves on it with its held bytes
/// and state, stays open across the move, and the old worker's report is clean.
#[test]
fn a_retire_hands_connections_to_the_new_worker() {
    let _turn = turn();
    let worker = Worker::start(Treat::HandOver, DEADLINE, None);
    let mut client = worker.client();
    let (ours, theirs) = relay::pair().unwrap();
    worker.tell(Message::Retire(Some(theirs.as_fd())));
    drop(theirs);
    let successor = Relay::new(ours).unwrap();
    let mut buffer = Vec::new();
    let handed = loop {
        match smol::block_on(successor.receive(&mut buffer)).unwrap() {
            Some(Received::Connection(handed)) => break handed,
            Some(Received::Generations(_) | Received::State(_)) => continue,
            other => panic!("unexpected on the relay: {other:?}"),
        }
    };
    assert_eq!(handed.name, "line");
    assert_eq!(handed.held, [b"half a".to_vec()]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&handed.state).unwrap(),
        serde_json::json!({ "line": 1 })
    );
    let (report, events) = worker.end();
    assert_eq!(report.stop, Stop::Retired);
    assert!(report.is_clean(), "{report:?}\n{events:#?}");
    // The same connection, now the successor's, and still open after the old one ended.
    let mut moved = TcpStream::from(handed.fds.into_iter().next().unwrap());
    moved.write_all(b"from the successor").unwrap();
    drop(moved);
    assert_eq!(read_to_close(&mut client), "from the successor");
}

/// The supervising process is gone (its end of the control channel closed): the worker
/// drains and exits rather than serve on unsupervised.
#[test]
fn a_worker_whose_supervising_process_is_gone_drains_and_exits() {
    let _turn = turn();
    let worker = Worker::start(Treat::Hold, DEADLINE, None);
    let (report, _) = worker.end();
    assert_eq!(report.stop, Stop::Retired);
    assert!(report.is_clean(), "{report:?}");
}

/// Start-up takes what the predecessor relays before its state: a connection of a kind the
/// program resumes is served with its held bytes first; one of a kind it does not know, or
/// whose state is not JSON, is closed with a warning that says so, and counted lost, so the
/// report is not clean.
#[test]
fn relayed_connections_are_resumed_by_kind_or_counted_lost() {
    let _turn = turn();
    let (ours, theirs) = relay::pair().unwrap();
    let predecessor = Relay::new(ours).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    let relayed = [
        ("line", &b"hello"[..], "null"),
        ("renamed", b"", "null"),
        ("line", b"", "{\"line\": 1"),
    ];
    for (kind, held, state) in relayed {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        let (served, _) = listener.accept().unwrap();
        let sockets = [(served.as_fd(), held)];
        let message = Message::Connection {
            sockets: &sockets,
            kind,
            state,
            max_held: 1024,
        };
        smol::block_on(predecessor.send(message)).unwrap();
        drop(served);
        clients.push(client);
    }
    let state = crate::handoff::state::Outgoing::new(None, 1024);
    smol::block_on(predecessor.send(Message::State(&state))).unwrap();
    // The predecessor has handed everything over and exits (a drain waits for it otherwise).
    drop(predecessor);
    let worker = Worker::start(Treat::Hold, DEADLINE, Some(theirs));
    let mut answer = [0u8; 64];
    let n = clients[0].read(&mut answer).unwrap();
    assert_eq!(&answer[..n], b"resumed: hello");
    assert_eq!(read_to_close(&mut clients[1]), "");
    assert_eq!(read_to_close(&mut clients[2]), "");
    worker.tell(Message::Quit(Signal::Term));
    let (report, events) = worker.end();
    assert_eq!(report.lost, 2, "{report:?}\n{events:#?}");
    assert_eq!(report.cut_by, None, "{report:?}");
    assert!(!report.is_clean());
    assert!(
        events
            .iter()
            .any(|e| e.contains("kind \"renamed\"") && e.contains("was closed")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.contains("kind \"line\"") && e.contains("its state is not JSON")),
        "{events:#?}"
    );
}
