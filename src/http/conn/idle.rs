//! Between requests: what a connection waits on (a request, the drain, its deadlines), and
//! its hand-over to the successor at a request boundary.

use super::*;

/// What a connection waits on between requests, kept for its whole life so that waiting
/// registers nothing new: the listener for the start of a drain, one keep-alive timer re-armed
/// only when it fires, and when the last request was done.
pub(crate) struct Idle<'a, D> {
    drain_started: Pin<&'a mut D>,
    /// The loop hands an idle connection over at a drain (else it closes it, after the
    /// grace).
    moves: bool,
    timer: Deadline,
    /// When `timer` fires.
    armed: Instant,
    since: Instant,
}

impl<'a, D: Future<Output = ()>> Idle<'a, D> {
    /// `drain_started` is the connection's pinned `Drain::started()`; `moves`, whether the
    /// loop hands an idle connection to the successor when it can; `first_head`, when the
    /// first request head is due (see [`Idle::wait`]).
    pub(crate) fn new(
        drain_started: Pin<&'a mut D>,
        moves: bool,
        options: &Options,
        first_head: Option<Instant>,
    ) -> Self {
        let since = Instant::now();
        let armed = first_head.unwrap_or(since + options.keep_alive_timeout);
        Idle {
            drain_started,
            moves,
            timer: Deadline::at(armed),
            armed,
            since,
        }
    }

    /// Whether the loop still hands this connection over at a drain.
    pub(crate) fn moves(&self) -> bool {
        self.moves
    }

    /// The connection stays here (its hand-over failed): at a drain it closes after the idle
    /// grace, as without a successor.
    pub(crate) fn stay(&mut self) {
        self.moves = false;
    }

    /// A request is done: the keep-alive timeout counts from now.
    pub(crate) fn restart(&mut self) {
        self.since = Instant::now();
    }

    /// Waits until the client sends something (or closes): [`Waited::Readable`]. Or the
    /// connection should be closed instead: idle past the keep-alive timeout, or through the
    /// grace of a drain ([`Waited::Close`]), or, before its first request, past `first_head`
    /// ([`Waited::HeadTimedOut`]).
    pub(crate) async fn wait(
        &mut self,
        io: &Stream,
        drain: &Drain,
        options: &Options,
        first_head: Option<Instant>,
    ) -> Waited {
        let Idle {
            drain_started,
            moves,
            timer,
            armed,
            since,
        } = self;
        let readable = async {
            match io.readable().await {
                Ok(()) => Waited::Readable,
                Err(_) => Waited::Close,
            }
        };
        let grace = async {
            // Once draining, the drain future has completed and must not be polled again.
            if !drain.is_draining() {
                drain_started.as_mut().await;
            }
            // With a relay the connection moves at once; no request can race a close. A loop
            // that does not move connections (async-h1's) closes, and a request sent
            // meanwhile would meet a reset: it waits the grace first.
            if !(*moves && relayable(io, drain)) {
                Timer::after(options.idle_grace).await;
            }
            Waited::Close
        };
        let idle = async {
            let kept = *since + options.keep_alive_timeout;
            let deadline = first_head.map_or(kept, |first| first.min(kept));
            if *armed > deadline {
                // Armed for the first head, which came: the keep-alive deadline is sooner.
                timer.set_at(deadline);
                *armed = deadline;
            }
            loop {
                if Instant::now() >= deadline {
                    return match first_head {
                        Some(first) if first <= kept => Waited::HeadTimedOut,
                        _ => Waited::Close,
                    };
                }
                // The timer may still hold an earlier deadline: re-arm it only when it fires,
                // not on every request.
                (&mut *timer).await;
                timer.set_at(deadline);
                *armed = deadline;
            }
        };
        readable.or(grace).or(idle).await
    }
}

/// What ended [`Idle::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The client sent something (or closed: the read finds out).
    Readable,
    /// Idle too long, or through a drain's grace.
    Close,
    /// No first request head within the header timeout of the accept: answer 408.
    HeadTimedOut,
}

/// The kind a keep-alive HTTP connection moves under (see [`Drain::hand_over`]), with no
/// state; its held bytes are what the client sent past the last request.
pub(crate) const KEEP_ALIVE: &str = "baton/http";

/// Can this connection be handed to the successor? (Not in a TLS session: its state stays
/// with this process.)
pub(super) fn relayable(io: &Stream, drain: &Drain) -> bool {
    io.plain().is_some() && drain.can_hand_over()
}

/// Sends the connection to the successor. `true`: it is the successor's now; drop it without
/// closing it. `false`: it stays here (no relay, or the relay failed: then no more are sent).
pub(super) async fn hand_over(io: &Stream, drain: &Drain, pending: &[u8]) -> bool {
    let Some(stream) = io.plain() else {
        return false;
    };
    if !drain.can_hand_over() {
        return false;
    }
    // (Bounded: a successor that stops reading its relay does not hold this connection.)
    let sent = drain.hand_over(stream, KEEP_ALIVE, &serde_json::Value::Null, pending);
    sent.await.is_ok()
}

/// A request racing a drain, for the connection loops' tests: a client on a connection that
/// `serve` serves on its own thread (given the accepted socket, the client's and the
/// listener's addresses, and the drain) has one request answered keep-alive; then the drain
/// starts while the connection is idle, with a relay set (`relay_alive`: the successor's end
/// kept, else gone), and a second request follows 20 ms later. It must be answered with
/// `Connection: close`, not reset. Returns the drain.
#[cfg(test)]
pub(crate) fn a_request_races_the_drain(
    relay_alive: bool,
    serve: impl FnOnce(std::net::TcpStream, std::net::SocketAddr, std::net::SocketAddr, Drain)
    + Send
    + 'static,
) -> Drain {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let (server, peer) = listener.accept().unwrap();
    let drain = Drain::new();
    let (ours, theirs) = crate::handoff::relay::pair().unwrap();
    let _theirs = relay_alive.then_some(theirs);
    let relay = crate::handoff::relay::Relay::new(ours).unwrap();
    drain.set_relay(std::sync::Arc::new(relay), 1024);
    let serving = drain.clone();
    let server = std::thread::spawn(move || serve(server, peer, addr, serving));
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    // One request answered: the connection is idle, its socket read empty.
    client.write_all(request).unwrap();
    let mut first = [0u8; 1024];
    let n = client.read(&mut first).unwrap();
    let first = String::from_utf8_lossy(&first[..n]).to_ascii_lowercase();
    assert!(first.starts_with("http/1.1 200"), "{first:?}");
    assert!(!first.contains("connection: close"), "{first:?}");
    // The drain starts while it is idle; the next request is already on its way.
    assert!(drain.can_hand_over());
    drain.start(false);
    std::thread::sleep(std::time::Duration::from_millis(20));
    client.write_all(request).unwrap();
    let mut received = String::new();
    let read = client.read_to_string(&mut received);
    server.join().unwrap();
    read.expect("answered, not reset");
    let received = received.to_ascii_lowercase();
    assert!(received.starts_with("http/1.1 200"), "{received:?}");
    assert!(received.contains("connection: close"), "{received:?}");
    drain
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection whose hand-over fails at a drain (the successor's end of the relay
    /// is gone) stays, and closes as it would without a successor: after the idle grace, so a
    /// request sent as the drain starts is answered (with `Connection: close`), not reset.
    #[test]
    fn an_idle_connection_whose_hand_over_fails_answers_a_racing_request() {
        let drain = a_request_races_the_drain(false, |server, peer, local, drain| {
            let incoming = Incoming {
                stream: Stream::Plain(crate::io::stream::for_tests(server)),
                peer: crate::Address::Tcp(peer),
                local: crate::Address::Tcp(local),
                tls: None,
                pending: Vec::new(),
                fresh: false,
            };
            let handler =
                Rc::new(|_: http_types::Request| async { Ok(http_types::Response::from("hello")) });
            let events: Rc<dyn Fn(&crate::Event<'_>)> = Rc::new(|_: &crate::Event<'_>| {});
            let options = Options::from(&crate::http::Options::default());
            smol::block_on(serve(incoming, handler, None, drain, options, events));
        });
        assert!(!drain.can_hand_over(), "the failed relay is not used again");
    }
}
