//! What arrives from older processes: their relays, connections, forwarded relays.

use super::*;

/// What comes from older processes: relays connections come in on, until each is closed (the
/// previous process's, and older ones it forwarded when it started draining), and the
/// generations still draining, oldest first.
#[derive(Default)]
pub(super) struct Inbound {
    pub(super) relays: Vec<Relay>,
    pub(super) older: Vec<u32>,
}

impl Inbound {
    /// Keeps, of the older generations, those still running (oldest first).
    pub(super) fn prune_exited(&mut self) {
        // Running, not a zombie: an exited generation waits for its (possibly new) parent to
        // reap it, and must not count.
        self.older.retain(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            matches!(state, Some(state) if state != 'Z' && state != 'X')
        });
    }
}

/// The next message on any of `relays`, with the relay's index.
pub(super) async fn receive_any(
    relays: &[Relay],
    buffer: &mut Vec<u8>,
) -> (usize, io::Result<Option<Received>>) {
    if relays.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for (index, relay) in relays.iter().enumerate() {
            if let std::task::Poll::Ready(message) = relay.poll_receive(cx, buffer) {
                return std::task::Poll::Ready((index, message));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Acts on a message from inbound relay `index`: a connection for the program to resume, an
/// older relay to take connections from too, or the end of that relay.
pub(super) fn relayed(
    program: &dyn Program,
    drain: &Drain,
    emit: &Rc<dyn Fn(&Event<'_>)>,
    inbound: &mut Inbound,
    index: usize,
    message: io::Result<Option<Received>>,
) {
    let resume =
        |fds: Vec<std::os::fd::OwnedFd>, kind: String, state: String, held: Vec<Vec<u8>>| {
            // (Written by the predecessor's encoder as JSON. Text that is not JSON came from
            // something else: the program is not handed a state it would take for the
            // connection's; the connection, never registered here, is lost, and said.)
            let state = match crate::json::parse(&state) {
                Ok(state) => state,
                Err(e) => {
                    let why = format!("its state is not JSON ({e})");
                    return drain.lose(&**emit, &kind, None, &why);
                }
            };
            // Non-blocking already (the flag belongs to the open file each shares).
            let streams: io::Result<Vec<Stream>> = fds
                .into_iter()
                .zip(held)
                .map(|(fd, held)| Ok(Stream::register(fd)?.holding(held).counted(drain.work())))
                .collect();
            match streams {
                Ok(streams) => program.resumed(Resumed::new(
                    streams,
                    kind,
                    state,
                    drain.clone(),
                    emit.clone(),
                )),
                Err(error) => drain.lose(&**emit, &kind, None, &error.to_string()),
            }
        };
    match message {
        Ok(Some(Received::Connection(handed))) => {
            resume(handed.fds, handed.name, handed.state, handed.held);
        }
        Ok(Some(Received::Relay(fd))) => {
            if let Ok(relay) = Relay::new(fd) {
                inbound.relays.push(relay);
            }
        }
        Ok(Some(Received::Generations(pids))) => inbound.older = pids,
        // A connection that came unusable (more held bytes than this process takes, a
        // memfd that does not match): lost, and said; the relay carries on (its messages
        // keep their boundaries).
        Err(error) if error.kind() == io::ErrorKind::InvalidData => {
            drain.lose(&**emit, "?", None, &error.to_string());
        }
        // State comes first, before serving; one later (or a control message) is not for a
        // relay that is serving: ignored.
        Ok(Some(Received::State(_) | Received::Retire(_) | Received::Quit(_))) => {}
        // The process on the other end is done handing over (or its relay broke).
        _ if index < inbound.relays.len() => {
            inbound.relays.swap_remove(index);
        }
        _ => {}
    }
}

/// Draining with a successor to hand connections to: forwards every inbound relay to it, so
/// that this process need not outlive the older processes still sending on them (restart
/// storms would otherwise keep every generation alive until the oldest is done). A relay that
/// cannot be forwarded stays, and this process goes on taking its connections.
pub(super) async fn forward_inbound(drain: &Drain, inbound: &mut Vec<Relay>) {
    let Some(outbound) = drain.relay() else {
        return;
    };
    let mut kept = Vec::new();
    for relay in inbound.drain(..) {
        if outbound
            .send(Message::Relay(std::os::fd::AsFd::as_fd(&relay)))
            .await
            .is_err()
        {
            kept.push(relay);
        }
    }
    *inbound = kept;
}
