//! Moving a WebSocket to the successor while a WebSocket library does the framing.
//!
//! A library reads ahead: tungstenite reads up to 128 KiB at a time into a buffer of its own,
//! keeps the start of a frame (and the first fragments of a message) there while it waits for
//! the rest, and drops it all on `into_inner`, so a hand-over would lose what it held.
//! [`Boundary`] sits between the library and the connection and gives the library one whole
//! message at a time (its frames, read by their headers, RFC 6455 section 5.2), never a part:
//! between messages the library holds nothing, and the bytes read past the last message are
//! here, in [`Boundary::into_parts`], to travel with the connection
//! ([`crate::Upgraded::hand_over`]). A message over [`WHOLE`] bytes is passed on as it comes;
//! a socket cannot move in its middle ([`Boundary::between_messages`] says when it can).
//!
//! ```ignore
//! let ws = WebSocketStream::from_raw_socket(Boundary::new(upgraded), Role::Server, None).await;
//! // ... messages ...; at the drain, between two messages:
//! ws.flush().await?;
//! let (upgraded, held) = ws.into_inner().into_parts();
//! upgraded.hand_over("chat", state, &held).await
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use smol::io::{AsyncRead, AsyncWrite};

/// The most bytes read from the connection at once.
const CHUNK: usize = 16 * 1024;
/// The largest message gathered whole before the library gets it.
pub const WHOLE: usize = 1 << 20;

/// A connection that a WebSocket library reads one whole message at a time (see the module).
#[derive(Debug)]
pub struct Boundary<S> {
    inner: S,
    /// Read from the connection, not yet given to the library: `buffer[start..]`.
    buffer: Vec<u8>,
    start: usize,
    /// Bytes of the current message still to give (0: between messages).
    message_left: usize,
}

impl<S> Boundary<S> {
    /// Wraps `inner`, which must be between messages (right after the handshake, or a
    /// connection resumed with the bytes it held first).
    pub fn new(inner: S) -> Boundary<S> {
        Boundary {
            inner,
            buffer: Vec::new(),
            start: 0,
            message_left: 0,
        }
    }

    /// The connection, and the bytes read from it that the library was not given yet. Taken
    /// between messages (the library holds nothing then), the two are the whole connection.
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        self.buffer.drain(..self.start);
        (self.inner, self.buffer)
    }

    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `true` between messages: the library was given every byte of the messages it has,
    /// and nothing of the next.
    pub fn between_messages(&self) -> bool {
        self.message_left == 0
    }

    fn buffered(&self) -> &[u8] {
        &self.buffer[self.start..]
    }
}

/// The whole length (header and payload) of the frame that `bytes` starts with, if its header
/// is all there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let [_, second, rest @ ..] = bytes else {
        return None;
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, payload) = match second & 0x7F {
        126 => (
            2,
            u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as u64,
        ),
        127 => (8, u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)),
        n => (0, u64::from(n)),
    };
    let header = 2 + extended + mask;
    // A length no buffer can hold goes to the library as it is, for it to refuse.
    usize::try_from(payload)
        .ok()
        .and_then(|payload| payload.checked_add(header))
        .or(Some(usize::MAX))
}

/// Where the first whole message in `bytes` ends (its data frames up to the one with FIN, and
/// the control frames among them; a control frame on its own is a message too), if it is all
/// there.
fn message_end(bytes: &[u8]) -> Option<usize> {
    let (mut at, mut fragmented) = (0usize, false);
    loop {
        let rest = &bytes[at..];
        let len = frame_len(rest)?;
        if len > rest.len() {
            return None;
        }
        let (fin, opcode) = (rest[0] & 0x80 != 0, rest[0] & 0x0F);
        at += len;
        match (opcode >= 8, fin) {
            // A control frame between messages, or the last frame of a data message.
            (true, _) if !fragmented => return Some(at),
            (false, true) => return Some(at),
            (false, false) => fragmented = true,
            (true, _) => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Boundary<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            let buffered = this.buffer.len() - this.start;
            if this.message_left == 0 {
                this.message_left = match message_end(this.buffered()) {
                    Some(end) => end,
                    // Too large to gather: passed on as it comes.
                    None if buffered >= WHOLE => buffered,
                    None => 0,
                };
            }
            if this.message_left > 0 && buffered > 0 {
                let n = out.len().min(buffered).min(this.message_left);
                out[..n].copy_from_slice(&this.buffer[this.start..this.start + n]);
                this.start += n;
                this.message_left -= n;
                return Poll::Ready(Ok(n));
            }
            // More bytes are needed: for the message's rest, or for the next one.
            if this.start == this.buffer.len() {
                this.buffer.clear();
                this.start = 0;
            }
            let at = this.buffer.len();
            this.buffer.resize(at + CHUNK, 0);
            let read = Pin::new(&mut this.inner).poll_read(cx, &mut this.buffer[at..]);
            let n = match &read {
                Poll::Ready(Ok(n)) => *n,
                _ => 0,
            };
            this.buffer.truncate(at + n);
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                // The end of the connection: what is left (a cut header, say) goes to the
                // library as it is, then the end.
                Poll::Ready(Ok(0)) if buffered == 0 => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(0)) => this.message_left = buffered,
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Boundary<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::AsyncReadExt as _;

    /// A masked client text frame with `payload`.
    fn frame(payload: &[u8]) -> Vec<u8> {
        fragment(0x81, payload)
    }

    /// A masked client frame with the first byte `first` (FIN and opcode).
    fn fragment(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn reads_stop_at_each_frame_and_the_rest_stays_here() {
        smol::block_on(async {
            let (a, b) = (frame(b"one"), frame(&[7; 300]));
            let mut wire = [a.clone(), b.clone()].concat();
            wire.extend_from_slice(&frame(b"three")[..4]);
            let mut boundary = Boundary::new(smol::io::Cursor::new(wire));
            let mut out = vec![0; 64 * 1024];
            let n = boundary.read(&mut out).await.unwrap();
            assert_eq!(&out[..n], &a[..], "the first message, and no more");
            assert!(boundary.between_messages());
            let n = boundary.read(&mut out).await.unwrap();
            assert_eq!(&out[..n], &b[..]);
            // Between frames: the start of the third is held here.
            let (_, held) = boundary.into_parts();
            assert_eq!(held, frame(b"three")[..4]);
        });
    }

    #[test]
    fn a_fragmented_message_goes_whole_with_the_pings_among_its_fragments() {
        smol::block_on(async {
            let message = [
                fragment(0x01, b"one "),
                fragment(0x89, b"ping"),
                fragment(0x80, b"two"),
            ]
            .concat();
            let next = frame(b"three");
            let wire = [message.clone(), next[..3].to_vec()].concat();
            let mut boundary = Boundary::new(smol::io::Cursor::new(wire));
            let mut out = vec![0; 1024];
            let n = boundary.read(&mut out).await.unwrap();
            assert_eq!(&out[..n], &message[..]);
            assert!(boundary.between_messages());
            // The start of the next message is not given before its end is there.
            let (_, held) = boundary.into_parts();
            assert_eq!(held, next[..3]);
        });
    }

    #[test]
    fn a_cut_frame_goes_to_the_library_at_the_end() {
        smol::block_on(async {
            let cut = frame(b"hello")[..5].to_vec();
            let mut boundary = Boundary::new(smol::io::Cursor::new(cut.clone()));
            let mut out = [0; 64];
            let n = boundary.read(&mut out).await.unwrap();
            assert_eq!(&out[..n], &cut[..]);
            assert_eq!(boundary.read(&mut out).await.unwrap(), 0);
        });
    }
}
