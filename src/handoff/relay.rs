//! Handing live connections to the successor (on by default: `Config::hand_over_connections`): a
//! Unix SEQPACKET socket pair made at spawn, one message per connection, the connection's fd
//! travelling as `SCM_RIGHTS` with the bytes already read from it but not yet parsed. The
//! client sees nothing: same TCP connection, no `Connection: close`, no reconnect.
//!
//! Messages: once, before the successor serves, the application's state; then connections
//! (each alone, or a group of sockets that move together), forwarded relays and the
//! generations still draining. The same kind of channel connects a supervising process to
//! each of its workers (the control channel): retire, quit, stop at once; its EOF tells a
//! worker that its supervising process is gone. [`super::wire`] encodes and decodes them all.
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

pub(crate) use super::wire::{MAX_GROUP, Message, Received};
use super::wire::{MAX_MESSAGE, decode, encode};

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

    /// Sends `message`, waiting (at most [`RELAY_TIMEOUT`]) for room if the channel is full.
    /// On success the other process owns the fds it carries; on an error nothing went (an
    /// encoding error says what could not go).
    pub(crate) async fn send(&self, message: Message<'_>) -> io::Result<()> {
        let encoded = encode(&message)?;
        let fds = encoded.fds();
        bounded(
            self.socket
                .write_with(|socket| send_with_fds(socket, &encoded.parts, &fds)),
        )
        .await
    }

    /// [`Relay::send`] without waiting: `WouldBlock` if there is no room (a control message
    /// to a busy worker waits in the channel).
    pub(crate) fn try_send(&self, message: Message<'_>) -> io::Result<()> {
        let encoded = encode(&message)?;
        send_with_fds(self.socket.get_ref(), &encoded.parts, &encoded.fds())
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
        let max_held = self.max_held.load(std::sync::atomic::Ordering::Relaxed);
        decode(&buffer[..bytes], fds, max_held)
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

/// One datagram of `parts`, with `fds` as `SCM_RIGHTS`.
fn send_with_fds(
    socket: &UnixStream,
    parts: &[std::borrow::Cow<'_, [u8]>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_GROUP + 1))];
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

    async fn send_connection(
        relay: &Relay,
        sockets: &[(BorrowedFd<'_>, &[u8])],
        kind: &str,
        state: &str,
        max_held: usize,
    ) -> io::Result<()> {
        relay
            .send(Message::Connection {
                sockets,
                kind,
                state,
                max_held,
            })
            .await
    }

    #[test]
    fn a_connection_and_its_unparsed_bytes_cross_over() {
        smol::block_on(async {
            let (ours, theirs) = pair().unwrap();
            let (sender, receiver) = (Relay::new(ours).unwrap(), Relay::new(theirs).unwrap());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server_side, _) = listener.accept().unwrap();
            let sockets = [(server_side.as_fd(), &b"GET / HT"[..])];
            send_connection(&sender, &sockets, "http", r#"{"n":1}"#, 1 << 20)
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
            sender.send(Message::State(&state)).await.unwrap();
            let Some(Received::State(state)) = receiver.receive(&mut buffer).await.unwrap() else {
                panic!("expected the state");
            };
            assert_eq!(state.into_state(1 << 20).unwrap(), br#"{"count":3}"#);
            // A state too large for a message comes in a sealed memfd, whole.
            let large = vec![b'7'; 1 << 20];
            let state = crate::handoff::state::Outgoing::new(Some(&large), 1 << 21);
            sender.send(Message::State(&state)).await.unwrap();
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
                send_connection(
                    &sender,
                    &[(server_side.as_fd(), &held)],
                    kind,
                    state,
                    4 << 20,
                )
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
            let refused = send_connection(
                &sender,
                &[(server_side.as_fd(), &over)],
                kind,
                state,
                4 << 20,
            )
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
            send_connection(
                &sender,
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
            send_connection(
                &sender,
                &[(server_side.as_fd(), b"ok")],
                kind,
                state,
                4 << 20,
            )
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
                send_connection(&sender, &group, "proxy", "{}", 1 << 20)
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
            let error = send_connection(&sender, &none, "proxy", "{}", 1).await;
            assert_eq!(error.unwrap_err().kind(), io::ErrorKind::InvalidInput);
            // A malformed message (cut short) is an error, its fd closed, and the relay
            // carries on.
            let parts = [std::borrow::Cow::Borrowed(&b"N\x05\0\0\0pro"[..])];
            send_with_fds(sender.socket.get_ref(), &parts, &[a.as_fd()]).unwrap();
            let error = receiver.receive(&mut buffer).await.unwrap_err();
            assert!(
                error.to_string().contains("its kind runs past the end"),
                "{error}"
            );
            sender.send(Message::Generations(&[7])).await.unwrap();
            let next = receiver.receive(&mut buffer).await.unwrap();
            assert!(matches!(next, Some(Received::Generations(pids)) if pids == [7]));
        });
    }
}
