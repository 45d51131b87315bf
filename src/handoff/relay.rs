//! Handing live connections to the successor (opt-in, `Server::hand_over_connections`): a
//! Unix SEQPACKET socket pair made at spawn, one message per connection, the connection's fd
//! travelling as `SCM_RIGHTS` with the bytes already read from it but not yet parsed. The
//! client sees nothing: same TCP connection, no `Connection: close`, no reconnect.
//!
//! Messages: once, before the successor serves, the application's state, `S...` (see
//! [`super::state`]: inline, or in a sealed memfd passed as its fd); then connections.
//!
//! A connection moves as `U[kind][state JSON][held bytes]` (each of the first two a u32 LE
//! length and the text) with its fd: the successor's program resumes it by kind. A group of
//! sockets that move together (a proxy's client and upstream), or held bytes that would not
//! fit in [`MAX_MESSAGE`], move as `N[kind][state JSON][count: u32 LE][each socket's held
//! length: u64 LE][where: 0 inline, 1 memfd][the held bytes, one after another, if inline]`
//! with the sockets' fds in order, then a sealed memfd holding the held bytes if not inline
//! (up to the sender's `max_held_bytes` in all).
//!
//! A draining process also sends `G[JSON array of pids]`: the generations still draining.
//! A draining process forwards its own inbound relay, if it still has one, as `F` with that
//! relay's fd, so that it need not stay alive for an older process that is still draining.
//!
//! The same kind of channel connects a supervising process to each of its workers (the
//! control channel): `R`, "retire: drain and exit", with, as its fd, the relay to hand the
//! worker's connections and state to (none: close them); `Q[signal]`, "the service shuts
//! down: stop accepting at once, drain and exit" (the signal's name); `K`, "stop at once" (a
//! second shutdown signal). Its EOF tells a worker that its supervising process is gone.
//!
//! Every async send is bounded by [`RELAY_TIMEOUT`]: a successor that stops reading its relay
//! must not hold this process (or one of its connections) hostage.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use async_io::{Async, Timer};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use smol::future::FutureExt as _;

use crate::config::timing::RELAY_TIMEOUT;
use crate::io::ready::Readiness;

/// Largest message: addresses plus at most a request head's worth of unparsed bytes (and an
/// inline state, [`super::state::INLINE`]).
const MAX_MESSAGE: usize = 96 * 1024;

/// The most sockets one hand-over moves together.
pub(crate) const MAX_GROUP: usize = 8;

/// A new socket pair for one successor: (this process's end, the successor's end).
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// One end of the channel.
#[derive(Debug)]
pub(crate) struct Relay {
    socket: Async<UnixStream>,
    /// Whether a receive may find a message without waiting.
    ready: Readiness,
    /// The most held bytes a connection received here may come with.
    max_held: std::sync::atomic::AtomicUsize,
    /// (A worker's control channel) an fd kept in reserve and closed just before each
    /// receive, so that a worker at its fd limit can still take the relay a retire message
    /// carries (its connections would be lost otherwise); taken again after.
    reserve: std::sync::Mutex<Option<Option<OwnedFd>>>,
}

/// What arrives on the relay.
#[derive(Debug)]
pub(crate) enum Received {
    /// The application's state (or why there is none).
    State(super::state::Arrived),
    /// (Control channel) drain and exit, handing connections over on this relay, if any.
    Retire(Option<OwnedFd>),
    /// (Control channel) the service shuts down (on this signal, by name): stop accepting at
    /// once, drain and exit.
    Quit(String),
    /// A connection, or a group of sockets, to resume under its kind.
    Connection(Handed),
    /// An older process's relay, forwarded by a process that drains: take its connections
    /// from it too, so the forwarding process need not wait for it.
    Relay(OwnedFd),
    /// The pids of the generations still draining, oldest first, the sender last.
    Generations(Vec<u32>),
    /// (Control channel) a draining worker stops at once: a second shutdown signal.
    StopNow(crate::CutBy),
}

/// A connection (or a group of sockets that move together) received from the previous
/// process.
#[derive(Debug)]
pub(crate) struct Handed {
    /// The sockets, in the order they were sent.
    pub(crate) fds: Vec<OwnedFd>,
    /// What the application named it (the successor's handler for that name resumes it).
    pub(crate) name: String,
    /// The application's JSON state for it.
    pub(crate) state: String,
    /// For each socket, the bytes the old process had read from it and not consumed.
    pub(crate) held: Vec<Vec<u8>>,
}

impl AsFd for Relay {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Relay {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Relay> {
        Ok(Relay {
            socket: Async::new(UnixStream::from(fd))?,
            ready: Readiness::default(),
            max_held: std::sync::atomic::AtomicUsize::new(crate::config::DEFAULT_MAX_HELD),
            reserve: std::sync::Mutex::new(None),
        })
    }

    /// Keeps an fd in reserve for the fds messages bring (see `reserve`): for a channel
    /// whose messages must arrive whole even at the fd limit.
    pub(crate) fn with_reserve(self) -> Relay {
        let spare = rustix::io::fcntl_dupfd_cloexec(self.socket.as_fd(), 0).ok();
        *self.reserve.lock().unwrap_or_else(|e| e.into_inner()) = Some(spare);
        self
    }

    /// Connections received here may come with at most `max` held bytes.
    pub(crate) fn set_max_held(&self, max: usize) {
        self.max_held
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends a connection, or a group of sockets that move together, under `kind`, with
    /// its `state` (JSON text) and, for each socket, the bytes held from it: in the message
    /// if all fits, else in a sealed memfd beside it, up to `max_held` bytes in all. On
    /// success the successor owns them.
    pub(crate) async fn send_connection(
        &self,
        sockets: &[(BorrowedFd<'_>, &[u8])],
        kind: &str,
        state: &str,
        max_held: usize,
    ) -> io::Result<()> {
        if sockets.is_empty() || sockets.len() > MAX_GROUP {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a hand-over moves 1 to {MAX_GROUP} sockets, not {}",
                    sockets.len()
                ),
            ));
        }
        let total: usize = sockets.iter().map(|(_, held)| held.len()).sum();
        if total > max_held {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the connection holds {total} unread bytes, over max_held_bytes ({max_held}): \
                     it stays with this process",
                ),
            ));
        }
        let too_much = "the connection's kind and state are over 96 KiB";
        if let [(fd, held)] = sockets {
            if let Ok(head) = head(b'U', [kind, state], held.len(), too_much) {
                return self.send_with_fds(&[&head, held], &[*fd]).await;
            }
        }
        let mut fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(fd, _)| *fd).collect();
        let lengths = 4 + 9 * sockets.len();
        let mut head = head(b'N', [kind, state], lengths, too_much)?;
        let inline = head.len() + lengths + total <= MAX_MESSAGE;
        head.extend_from_slice(&(sockets.len() as u32).to_le_bytes());
        for (_, held) in sockets {
            head.extend_from_slice(&(held.len() as u64).to_le_bytes());
        }
        if inline {
            head.push(0);
            let mut parts: Vec<&[u8]> = vec![&head];
            parts.extend(sockets.iter().map(|(_, held)| *held));
            return self.send_with_fds(&parts, &fds).await;
        }
        head.push(1);
        let all: Vec<u8> = sockets
            .iter()
            .flat_map(|(_, held)| held.iter().copied())
            .collect();
        let memfd = super::state::sealed(&all, "baton-held")?;
        fds.push(memfd.as_fd());
        self.send_with_fds(&[&head], &fds).await
    }

    /// Tells the successor which generations are still draining (oldest first, this one
    /// last), so that it can keep their number bounded.
    pub(crate) async fn send_generations(&self, pids: &[u32]) -> io::Result<()> {
        let text = serde_json::to_string(pids).map_err(io::Error::other)?;
        self.send_with_fd(&[b"G", text.as_bytes()], None).await
    }

    /// Forwards `relay` (the relay this process receives on) to the successor.
    pub(crate) async fn send_relay(&self, relay: &Relay) -> io::Result<()> {
        self.send_with_fd(&[b"F"], Some(relay.as_fd())).await
    }

    /// (Control channel) tells a worker to drain and exit, handing its connections over on
    /// `relay` if given. Does not wait: the channel holds it if the worker is busy.
    pub(crate) fn try_retire(&self, relay: Option<BorrowedFd<'_>>) -> io::Result<()> {
        send_with_fd(self.socket.get_ref(), &[b"R"], relay)
    }

    /// (Control channel) tells a worker that the service shuts down, on `signal`.
    pub(crate) fn try_quit(&self, signal: crate::signals::Signal) -> io::Result<()> {
        send_with_fd(
            self.socket.get_ref(),
            &[b"Q", signal.name().as_bytes()],
            None,
        )
    }

    /// (Control channel) tells a draining worker to stop at once, and why: a second
    /// shutdown signal (`None`), or the generation limit `Some(max)`.
    pub(crate) fn try_stop_now(&self, limit: Option<usize>) -> io::Result<()> {
        let max = limit.map(|max| max.to_string()).unwrap_or_default();
        send_with_fd(self.socket.get_ref(), &[b"K", max.as_bytes()], None)
    }

    async fn send_with_fd(&self, parts: &[&[u8]], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.send_with_fds(parts, &fds).await
    }

    async fn send_with_fds(&self, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        bounded(
            self.socket
                .write_with(|socket| send_with_fds(socket, parts, fds)),
        )
        .await
    }

    /// Sends the application's state (before the successor serves), waiting for room if the
    /// channel is full.
    pub(crate) async fn send_state(&self, state: &super::state::Outgoing) -> io::Result<()> {
        let fd = state.fd.as_ref().map(AsFd::as_fd);
        self.send_with_fd(&[&state.message], fd).await
    }

    /// Like [`Relay::send_state`], without waiting: `WouldBlock` if there is no room.
    pub(crate) fn try_send_state(&self, state: &super::state::Outgoing) -> io::Result<()> {
        let fd = state.fd.as_ref().map(AsFd::as_fd);
        send_with_fd(self.socket.get_ref(), &[&state.message], fd)
    }

    /// The next message, or `None` once the other process has closed the channel.
    pub(crate) async fn receive(&self, buffer: &mut Vec<u8>) -> io::Result<Option<Received>> {
        std::future::poll_fn(|cx| self.poll_receive(cx, buffer)).await
    }

    /// [`Relay::receive`], as a poll: the next message if one is there, else registers for
    /// readability (so several relays can be waited on at once).
    pub(crate) fn poll_receive(
        &self,
        cx: &mut std::task::Context<'_>,
        buffer: &mut Vec<u8>,
    ) -> std::task::Poll<io::Result<Option<Received>>> {
        self.ready.poll(
            cx,
            |cx| self.socket.poll_readable(cx),
            || self.try_receive(buffer),
        )
    }

    /// The next message if one is there (`WouldBlock` if not).
    fn try_receive(&self, buffer: &mut Vec<u8>) -> io::Result<Option<Received>> {
        buffer.resize(MAX_MESSAGE, 0);
        let mut reserve = self.reserve.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(spare) = reserve.as_mut() {
            // Its number is free for an fd the message brings.
            drop(spare.take());
        }
        let received = self.receive_fds(buffer);
        if let Some(spare) = reserve.as_mut() {
            *spare = rustix::io::fcntl_dupfd_cloexec(self.socket.as_fd(), 0).ok();
        }
        drop(reserve);
        let (bytes, fds) = received?;
        self.decode(&buffer[..bytes], fds)
    }

    /// One `recvmsg`: the message's length and the fds that came with it. A message whose
    /// fds did not fit (this process at its fd limit: the kernel drops them) is an error
    /// that says so, not a message without them.
    fn receive_fds(&self, buffer: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let (bytes, fds) = {
            let socket = self.socket.get_ref();
            {
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_GROUP + 1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut parts = [IoSliceMut::new(buffer)];
                let received = rustix::net::recvmsg(
                    socket,
                    &mut parts,
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
                )?;
                // Every fd that came is owned here (and closed if the message is refused).
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(more) = message {
                        fds.extend(more);
                    }
                }
                if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a relay message's fds were dropped: this process is at its fd limit \
                         (RLIMIT_NOFILE)",
                    ));
                }
                (received.bytes, fds)
            }
        };
        Ok((bytes, fds))
    }

    /// A message as received: its bytes and fds.
    fn decode(&self, message: &[u8], mut fds: Vec<OwnedFd>) -> io::Result<Option<Received>> {
        if let Some((b'N', group)) = message.split_first() {
            return self
                .group(group, fds)
                .map(|group| Some(Received::Connection(group)));
        }
        let second = (fds.len() == 2).then(|| fds.pop()).flatten();
        let fd = fds.pop();
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed relay message");
        match (message.split_first(), fd) {
            (None, None) => Ok(None),
            (Some((b'S', state)), fd) => super::state::Arrived::parse(state, fd)
                .map(|state| Some(Received::State(state)))
                .ok_or_else(bad),
            (Some((b'Q', signal)), None) => Ok(Some(Received::Quit(
                String::from_utf8_lossy(signal).into_owned(),
            ))),
            (Some((b'R', [])), relay) => Ok(Some(Received::Retire(relay))),
            (Some((b'K', [])), None) => Ok(Some(Received::StopNow(crate::CutBy::Signal))),
            (Some((b'K', max)), None) => std::str::from_utf8(max)
                .ok()
                .and_then(|max| max.parse().ok())
                .map(|max| Some(Received::StopNow(crate::CutBy::GenerationLimit { max })))
                .ok_or_else(bad),
            (Some((b'F', [])), Some(relay)) => Ok(Some(Received::Relay(relay))),
            (Some((b'G', list)), None) => serde_json::from_slice(list)
                .map(|pids| Some(Received::Generations(pids)))
                .map_err(|_| bad()),
            (Some((b'U', message)), Some(fd)) if second.is_none() => {
                let (name, rest) = text(message)?;
                let (state, rest) = text(rest)?;
                Ok(Some(Received::Connection(Handed {
                    fds: vec![fd],
                    name,
                    state,
                    held: vec![rest.to_vec()],
                })))
            }
            _ => Err(bad()),
        }
    }

    /// An `N` message (after its tag) and the fds that came with it: the sockets, then the
    /// held bytes' memfd if they are not inline. Every fd is closed if it is malformed.
    fn group(&self, message: &[u8], mut fds: Vec<OwnedFd>) -> io::Result<Handed> {
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a malformed relay message: {why}"),
            )
        };
        let (name, rest) = text(message)?;
        let (state, rest) = text(rest)?;
        let (count, mut rest) = rest.split_at_checked(4).ok_or_else(|| bad("no count"))?;
        let count = u32::from_le_bytes(count.try_into().map_err(|_| bad("no count"))?) as usize;
        if count == 0 || count > MAX_GROUP {
            return Err(bad("a group of no socket, or too many"));
        }
        let mut lengths = Vec::with_capacity(count);
        for _ in 0..count {
            let (len, after) = rest.split_at_checked(8).ok_or_else(|| bad("cut lengths"))?;
            lengths.push(u64::from_le_bytes(len.try_into().map_err(|_| bad("cut"))?));
            rest = after;
        }
        let (&place, rest) = rest.split_first().ok_or_else(|| bad("no place"))?;
        let total: u64 = lengths.iter().sum();
        let max = self.max_held.load(std::sync::atomic::Ordering::Relaxed);
        if total > max as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a connection came with {total} held bytes, over this process's \
                     max_held_bytes ({max})"
                ),
            ));
        }
        let all = match place {
            0 if fds.len() == count && rest.len() as u64 == total => rest.to_vec(),
            1 if fds.len() == count + 1 && rest.is_empty() => {
                let memfd = fds.pop().ok_or_else(|| bad("no memfd"))?;
                super::state::read_sealed(memfd, total)?
            }
            _ => return Err(bad("the fds or held bytes do not match the lengths")),
        };
        let mut held = Vec::with_capacity(count);
        let mut at = 0usize;
        for len in lengths {
            held.push(all[at..at + len as usize].to_vec());
            at += len as usize;
        }
        Ok(Handed {
            fds,
            name,
            state,
            held,
        })
    }
}

/// `send`, or `TimedOut` if the other process has not made room for it within
/// [`RELAY_TIMEOUT`].
async fn bounded(send: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    let stalled = async {
        Timer::after(RELAY_TIMEOUT).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the successor did not take it within 1 s",
        ))
    };
    send.or(stalled).await
}

/// The head of a `kind` message that carries two texts, each after its length (read back by
/// [`text`]), and then `rest` bytes; `too_much` if the whole is over [`MAX_MESSAGE`].
fn head(kind: u8, texts: [&str; 2], rest: usize, too_much: &'static str) -> io::Result<Vec<u8>> {
    let len = 1 + texts.iter().map(|text| 4 + text.len()).sum::<usize>();
    if len + rest > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, too_much));
    }
    let mut head = Vec::with_capacity(len);
    head.push(kind);
    for text in texts {
        head.extend_from_slice(&(text.len() as u32).to_le_bytes());
        head.extend_from_slice(text.as_bytes());
    }
    Ok(head)
}

/// One text of a message, after its length, and what follows it.
fn text(message: &[u8]) -> io::Result<(String, &[u8])> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed relay message");
    let len = message.get(..4).ok_or_else(bad)?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
    let body = message.get(4..4 + len).ok_or_else(bad)?;
    let text = String::from_utf8(body.to_vec()).map_err(|_| bad())?;
    Ok((text, &message[4 + len..]))
}

/// One datagram of `parts`, with `fd` as `SCM_RIGHTS` if given.
fn send_with_fd(
    socket: &UnixStream,
    parts: &[&[u8]],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    send_with_fds(socket, parts, &fds)
}

/// One datagram of `parts`, with `fds` (at most two) as `SCM_RIGHTS`.
fn send_with_fds(socket: &UnixStream, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many fds for one relay message"));
    }
    let parts: Vec<IoSlice<'_>> = parts.iter().map(|part| IoSlice::new(part)).collect();
    rustix::net::sendmsg(socket, &parts, &mut control, SendFlags::NOSIGNAL)
        .map(drop)
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_connection_and_its_unparsed_bytes_cross_over() {
        smol::block_on(async {
            let (ours, theirs) = pair().unwrap();
            let (sender, receiver) = (Relay::new(ours).unwrap(), Relay::new(theirs).unwrap());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server_side, _) = listener.accept().unwrap();
            let sockets = [(server_side.as_fd(), &b"GET / HT"[..])];
            sender
                .send_connection(&sockets, "http", r#"{"n":1}"#, 1 << 20)
                .await
                .unwrap();
            drop(server_side);
            let mut buffer = Vec::new();
            let Some(Received::Connection(mut handed)) =
                receiver.receive(&mut buffer).await.unwrap()
            else {
                panic!("expected a connection");
            };
            assert_eq!(
                (handed.name.as_str(), handed.state.as_str()),
                ("http", r#"{"n":1}"#)
            );
            assert_eq!(handed.held, [b"GET / HT"]);
            // The same TCP connection, alive on the received fd.
            let mut received = std::net::TcpStream::from(handed.fds.remove(0));
            client.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            received.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
            let state = crate::handoff::state::Outgoing::new(Some(br#"{"count":3}"#), 1 << 20);
            sender.send_state(&state).await.unwrap();
            let Some(Received::State(state)) = receiver.receive(&mut buffer).await.unwrap() else {
                panic!("expected the state");
            };
            assert_eq!(state.into_state(1 << 20).unwrap(), br#"{"count":3}"#);
            // A state too large for a message comes in a sealed memfd, whole.
            let large = vec![b'7'; 1 << 20];
            let state = crate::handoff::state::Outgoing::new(Some(&large), 1 << 21);
            sender.send_state(&state).await.unwrap();
            let Some(Received::State(state)) = receiver.receive(&mut buffer).await.unwrap() else {
                panic!("expected the state");
            };
            let back = state.into_state(1 << 21).unwrap();
            assert!(back == large, "{} bytes came back changed", back.len());
            drop(sender);
            assert!(receiver.receive(&mut buffer).await.unwrap().is_none());
        });
    }

    /// Held bytes at the message size go inline, one more byte in a sealed memfd beside the
    /// connection; both arrive whole. Over the sender's bound: an error, nothing sent; over
    /// the receiver's: an error that says so, and the relay carries on.
    #[test]
    fn held_bytes_of_any_size_cross_over_within_their_bounds() {
        smol::block_on(async {
            let (ours, theirs) = pair().unwrap();
            let (sender, receiver) = (Relay::new(ours).unwrap(), Relay::new(theirs).unwrap());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server_side, _) = listener.accept().unwrap();
            let (kind, state) = ("echo", "{}");
            let room = MAX_MESSAGE - (1 + 4 + kind.len() + 4 + state.len());
            let mut buffer = Vec::new();
            for len in [room, room + 1, 3 << 20] {
                let held: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                sender
                    .send_connection(&[(server_side.as_fd(), &held)], kind, state, 4 << 20)
                    .await
                    .unwrap();
                let Some(Received::Connection(handed)) =
                    receiver.receive(&mut buffer).await.unwrap()
                else {
                    panic!("expected a connection");
                };
                assert_eq!((handed.name.as_str(), handed.state.as_str()), (kind, state));
                assert!(handed.held == [held], "{len} held bytes came back changed");
            }
            let over = vec![0u8; 5 << 20];
            let refused = sender
                .send_connection(&[(server_side.as_fd(), &over)], kind, state, 4 << 20)
                .await
                .unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
            assert!(
                refused
                    .to_string()
                    .contains("over max_held_bytes (4194304)"),
                "{refused}"
            );
            receiver.set_max_held(1 << 20);
            sender
                .send_connection(
                    &[(server_side.as_fd(), &over[..2 << 20])],
                    kind,
                    state,
                    4 << 20,
                )
                .await
                .unwrap();
            let error = receiver.receive(&mut buffer).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert!(
                error.to_string().contains("max_held_bytes (1048576)"),
                "{error}"
            );
            // The relay still works after a refused message.
            sender
                .send_connection(&[(server_side.as_fd(), b"ok")], kind, state, 4 << 20)
                .await
                .unwrap();
            let Some(Received::Connection(handed)) = receiver.receive(&mut buffer).await.unwrap()
            else {
                panic!("expected a connection");
            };
            assert_eq!(handed.held, [b"ok"]);
        });
    }

    /// Two sockets move as one message, each with its own held bytes, inline or in a memfd;
    /// malformed groups are refused and their fds closed.
    #[test]
    fn a_group_of_sockets_moves_as_one() {
        smol::block_on(async {
            let (ours, theirs) = pair().unwrap();
            let (sender, receiver) = (Relay::new(ours).unwrap(), Relay::new(theirs).unwrap());
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut buffer = Vec::new();
            for size in [10, 200_000] {
                let (one, two) = (vec![1u8; size], vec![2u8; size / 2]);
                let group = [(a.as_fd(), &one[..]), (b.as_fd(), &two[..])];
                sender
                    .send_connection(&group, "proxy", "{}", 1 << 20)
                    .await
                    .unwrap();
                let Some(Received::Connection(handed)) =
                    receiver.receive(&mut buffer).await.unwrap()
                else {
                    panic!("expected a group");
                };
                assert_eq!(handed.fds.len(), 2);
                assert!(handed.held == [one, two], "{size}: held bytes changed");
                // The same sockets, in order: what goes into the first comes out of the second.
                let mut first =
                    std::os::unix::net::UnixStream::from(handed.fds.into_iter().next().unwrap());
                first.write_all(b"x").unwrap();
                let mut got = [0u8; 1];
                (&b).read_exact(&mut got).unwrap();
            }
            let none: [(BorrowedFd<'_>, &[u8]); 0] = [];
            let error = sender.send_connection(&none, "proxy", "{}", 1).await;
            assert_eq!(error.unwrap_err().kind(), io::ErrorKind::InvalidInput);
            // A group whose lengths do not match its bytes.
            let mut head = head(b'N', ["proxy", "{}"], 0, "").unwrap();
            head.extend_from_slice(&1u32.to_le_bytes());
            head.extend_from_slice(&5u64.to_le_bytes());
            head.push(0);
            head.extend_from_slice(b"abc");
            sender.send_with_fds(&[&head], &[a.as_fd()]).await.unwrap();
            let error = receiver.receive(&mut buffer).await.unwrap_err();
            assert!(error.to_string().contains("do not match"), "{error}");
        });
    }
}
