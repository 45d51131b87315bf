//! [`Datagrams`]: a UDP listener as a program gets it ([`crate::Program::datagrams`]), once per
//! serving process, on the same edge-triggered readiness as connections.
//!
//! A UDP socket handed to a successor is the same socket: datagrams that arrive while no
//! process reads wait in its buffer for whichever reads next. The old process stops reading
//! at the drain notice, after the successor is ready, so none is lost between them.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::edge::{Conn, Edge};

/// A bound UDP socket (a `udp:host:port` listener) on the process's edge-triggered
/// readiness, `Send + Sync`: receive and send from any thread and executor. It counts for the
/// drain until dropped, like a connection: drop it at the drain notice, once what was received
/// is answered, and the successor (already serving by then) reads what comes next.
pub struct Datagrams {
    conn: Conn,
    local: SocketAddr,
    listener: usize,
    /// What counts it for the drain (the core's).
    _count: Box<dyn Send + Sync>,
}

impl fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datagrams")
            .field("fd", &self.conn.as_fd())
            .field("local", &self.local)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Datagrams {
    /// A duplicate of the listener's socket, registered on the edge and counted by `count`.
    pub(crate) fn register(
        socket: OwnedFd,
        local: SocketAddr,
        listener: usize,
        count: impl Send + Sync + 'static,
    ) -> io::Result<Datagrams> {
        Ok(Datagrams {
            conn: Edge::global()?.register(socket)?,
            local,
            listener,
            _count: Box::new(count),
        })
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Which listener it is: its index in the order the addresses were given.
    pub fn listener(&self) -> usize {
        self.listener
    }

    /// Receives one datagram into `buf` (cut to its length if longer), waiting for one if
    /// none is there; its length and sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| {
            self.conn.poll_with(cx, false, |fd| {
                let (n, _, from) =
                    rustix::net::recvfrom(fd, &mut *buf, rustix::net::RecvFlags::empty())?;
                let from = from.and_then(|from| SocketAddr::try_from(from).ok());
                let from = from.ok_or_else(|| io::Error::other("a datagram with no sender"))?;
                Ok((n, from))
            })
        })
        .await
    }

    /// Sends `buf` to `to` as one datagram, waiting for room if the socket has none.
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        poll_fn(|cx| {
            self.conn.poll_with(cx, true, |fd| {
                Ok(rustix::net::sendto(
                    fd,
                    buf,
                    rustix::net::SendFlags::NOSIGNAL,
                    &to,
                )?)
            })
        })
        .await
    }
}

impl AsFd for Datagrams {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_received_and_answered_on_the_edge() {
        super::super::edge::drive_global();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let local = socket.local_addr().unwrap();
        let server = Datagrams::register(socket.into(), local, 0, ()).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        smol::block_on(async {
            for text in [&b"one"[..], b"two"] {
                client.send_to(text, local).unwrap();
                let mut buf = [0u8; 16];
                let (n, from) = server.recv_from(&mut buf).await.unwrap();
                assert_eq!((&buf[..n], from), (text, client.local_addr().unwrap()));
                server.send_to(&buf[..n], from).await.unwrap();
                let mut back = [0u8; 16];
                let n = client.recv(&mut back).unwrap();
                assert_eq!(&back[..n], text);
            }
        });
    }
}
