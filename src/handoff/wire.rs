//! The messages of the relay and control channels, as typed values: one encoder
//! ([`encode`]) and one decoder ([`decode`]) for all of them. [`super::relay`] moves the
//! encoded bytes and fds over the socket.
//!
//! Each message is one SEQPACKET datagram: a tag byte, then what the tag says.
//!
//! | tag | message | fds |
//! |---|---|---|
//! | `S` | the application's state ([`super::state`]: inline, or in a sealed memfd) | the memfd, if any |
//! | `U` | a connection: `[kind][state JSON]` (each a u32 LE length and the text), then its held bytes | the socket |
//! | `N` | a group, or held bytes too large to go inline: `[kind][state JSON][count: u32 LE][each socket's held length: u64 LE][where: 0 inline, 1 memfd][the held bytes, if inline]` | the sockets in order, then the memfd if not inline |
//! | `F` | an older process's relay, forwarded | the relay |
//! | `G` | the generations still draining: a JSON array of pids, oldest first | none |
//! | `R` | (control) retire: drain and exit, handing over on the relay given | the relay, if any |
//! | `Q` | (control) the service shuts down, on the signal named after the tag | none |
//! | `K` | (control) stop at once: empty for a shutdown signal, else the generation limit in decimal | none |
//!
//! A message that does not parse is an error that names what was wrong; its fds are closed.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::report::CutBy;

/// Largest message: a request head's worth of unparsed bytes, a kind and state (and an
/// inline state, [`super::state::INLINE`]).
pub(crate) const MAX_MESSAGE: usize = 96 * 1024;

/// The most sockets one hand-over moves together.
pub(crate) const MAX_GROUP: usize = 8;

/// A message to send.
pub(crate) enum Message<'a> {
    /// The application's state, encoded by [`super::state::Outgoing`].
    State(&'a super::state::Outgoing),
    /// A connection, or a group of sockets that move together, under `kind`, with its
    /// `state` (JSON text) and each socket's held bytes, up to `max_held` in all.
    Connection {
        sockets: &'a [(BorrowedFd<'a>, &'a [u8])],
        kind: &'a str,
        state: &'a str,
        max_held: usize,
    },
    /// This process's inbound relay, forwarded to the successor.
    Relay(BorrowedFd<'a>),
    /// The generations still draining, oldest first, the sender last.
    Generations(&'a [u32]),
    /// (Control) drain and exit, handing over on this relay, if any.
    Retire(Option<BorrowedFd<'a>>),
    /// (Control) the service shuts down, on this signal.
    Quit(crate::signals::Signal),
    /// (Control) a draining worker stops at once, cut by this.
    StopNow(CutBy),
}

/// A message as it goes on the wire: its bytes (in parts) and its fds.
pub(crate) struct Encoded<'a> {
    pub(crate) parts: Vec<std::borrow::Cow<'a, [u8]>>,
    fds: Vec<BorrowedFd<'a>>,
    /// Held bytes too large for the message, sealed; sent after `fds`.
    memfd: Option<OwnedFd>,
}

impl Encoded<'_> {
    /// The fds to send with it, in order.
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = self.fds.clone();
        fds.extend(self.memfd.as_ref().map(AsFd::as_fd));
        fds
    }
}

/// What arrives on a relay or control channel.
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
    /// (Control channel) a draining worker stops at once, cut by this.
    StopNow(CutBy),
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

/// `message` as bytes and fds; an error (nothing sent, the sender keeps what it would have
/// moved) if it cannot go: a group of no socket or too many, held bytes over `max_held`, a
/// kind and state over [`MAX_MESSAGE`].
pub(crate) fn encode<'a>(message: &Message<'a>) -> io::Result<Encoded<'a>> {
    let plain = |bytes: Vec<u8>, fds: Vec<BorrowedFd<'a>>| Encoded {
        parts: vec![bytes.into()],
        fds,
        memfd: None,
    };
    Ok(match *message {
        Message::State(state) => Encoded {
            parts: vec![state.message.as_slice().into()],
            fds: state.fd.as_ref().map(AsFd::as_fd).into_iter().collect(),
            memfd: None,
        },
        Message::Connection {
            sockets,
            kind,
            state,
            max_held,
        } => return connection(sockets, kind, state, max_held),
        Message::Relay(relay) => plain(b"F".to_vec(), vec![relay]),
        Message::Generations(pids) => {
            let mut bytes = b"G".to_vec();
            bytes.extend(serde_json::to_vec(pids).map_err(io::Error::other)?);
            plain(bytes, Vec::new())
        }
        Message::Retire(relay) => plain(b"R".to_vec(), relay.into_iter().collect()),
        Message::Quit(signal) => plain([b"Q", signal.name().as_bytes()].concat(), Vec::new()),
        Message::StopNow(CutBy::GenerationLimit { max }) => {
            plain(format!("K{max}").into_bytes(), Vec::new())
        }
        Message::StopNow(_) => plain(b"K".to_vec(), Vec::new()),
    })
}

/// A `U` message if one socket's held bytes fit, else an `N`.
fn connection<'a>(
    sockets: &'a [(BorrowedFd<'a>, &'a [u8])],
    kind: &str,
    state: &str,
    max_held: usize,
) -> io::Result<Encoded<'a>> {
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
    let fds: Vec<BorrowedFd<'a>> = sockets.iter().map(|(fd, _)| *fd).collect();
    if let [(_, held)] = sockets {
        if let Ok(head) = head(b'U', [kind, state], held.len()) {
            return Ok(Encoded {
                parts: vec![head.into(), (*held).into()],
                fds,
                memfd: None,
            });
        }
    }
    let lengths = 4 + 9 * sockets.len();
    let mut head = head(b'N', [kind, state], lengths)?;
    let inline = head.len() + lengths + total <= MAX_MESSAGE;
    head.extend_from_slice(&(sockets.len() as u32).to_le_bytes());
    for (_, held) in sockets {
        head.extend_from_slice(&(held.len() as u64).to_le_bytes());
    }
    head.push(u8::from(!inline));
    let mut parts = vec![head.into()];
    if inline {
        parts.extend(sockets.iter().map(|(_, held)| (*held).into()));
        return Ok(Encoded {
            parts,
            fds,
            memfd: None,
        });
    }
    let all: Vec<u8> = sockets
        .iter()
        .flat_map(|(_, held)| held.iter().copied())
        .collect();
    Ok(Encoded {
        parts,
        fds,
        memfd: Some(super::state::sealed(&all, "baton-held")?),
    })
}

/// The head of a `tag` message that carries two texts, each after its length (read back by
/// [`text`]), and then `rest` bytes; an error if the whole is over [`MAX_MESSAGE`].
fn head(tag: u8, texts: [&str; 2], rest: usize) -> io::Result<Vec<u8>> {
    let len = 1 + texts.iter().map(|text| 4 + text.len()).sum::<usize>();
    if len + rest > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the connection's kind and state are over 96 KiB",
        ));
    }
    let mut head = Vec::with_capacity(len);
    head.push(tag);
    for text in texts {
        head.extend_from_slice(&(text.len() as u32).to_le_bytes());
        head.extend_from_slice(text.as_bytes());
    }
    Ok(head)
}

/// A malformed message: `InvalidData`, saying what was wrong.
fn malformed(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a malformed relay message: {why}"),
    )
}

/// A message as received (its bytes, and the fds that came with it), at most `max_held`
/// held bytes per connection; `None` for the channel's end (no bytes, no fds). The fds of a
/// message that does not parse are closed.
pub(crate) fn decode(
    message: &[u8],
    mut fds: Vec<OwnedFd>,
    max_held: usize,
) -> io::Result<Option<Received>> {
    let Some((&tag, body)) = message.split_first() else {
        return match fds.is_empty() {
            true => Ok(None),
            false => Err(malformed("fds without a message")),
        };
    };
    let fd_count = fds.len();
    let no_fds = |received: Received| match fd_count {
        0 => Ok(Some(received)),
        n => Err(malformed(format!(
            "{n} fds with a {:?} message",
            tag as char
        ))),
    };
    match tag {
        b'S' => super::state::Arrived::parse(body, fds.pop())
            .filter(|_| fds.is_empty())
            .map(|state| Some(Received::State(state)))
            .ok_or_else(|| malformed("a state message that does not parse")),
        b'U' => {
            let fd = match (fds.pop(), fds.is_empty()) {
                (Some(fd), true) => fd,
                _ => {
                    return Err(malformed(format!(
                        "a connection with {fd_count} fds, not 1"
                    )));
                }
            };
            let (name, rest) = text(body, "kind")?;
            let (state, rest) = text(rest, "state")?;
            if rest.len() > max_held {
                return Err(over_max_held(rest.len() as u64, max_held));
            }
            Ok(Some(Received::Connection(Handed {
                fds: vec![fd],
                name,
                state,
                held: vec![rest.to_vec()],
            })))
        }
        b'N' => group(body, fds, max_held).map(|group| Some(Received::Connection(group))),
        b'F' if !body.is_empty() => Err(malformed("bytes after F")),
        b'F' => match (fds.pop(), fds.is_empty()) {
            (Some(relay), true) => Ok(Some(Received::Relay(relay))),
            _ => Err(malformed(format!(
                "a forwarded relay with {fd_count} fds, not 1"
            ))),
        },
        b'G' => match serde_json::from_slice(body) {
            Ok(pids) => no_fds(Received::Generations(pids)),
            Err(e) => Err(malformed(format!("G is not a JSON array of pids: {e}"))),
        },
        b'R' if !body.is_empty() || fd_count > 1 => {
            Err(malformed("a retire with bytes or more than one fd"))
        }
        b'R' => Ok(Some(Received::Retire(fds.pop()))),
        b'Q' => match std::str::from_utf8(body) {
            Ok(signal) if !signal.is_empty() => no_fds(Received::Quit(signal.to_owned())),
            _ => Err(malformed("Q without a signal's name")),
        },
        b'K' if body.is_empty() => no_fds(Received::StopNow(CutBy::Signal)),
        b'K' => match std::str::from_utf8(body)
            .ok()
            .and_then(|max| max.parse().ok())
        {
            Some(max) => no_fds(Received::StopNow(CutBy::GenerationLimit { max })),
            None => Err(malformed("K with something other than a number")),
        },
        tag => Err(malformed(format!("unknown tag {tag:#04x}"))),
    }
}

fn over_max_held(total: u64, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "a connection came with {total} held bytes, over this process's max_held_bytes \
             ({max})"
        ),
    )
}

/// An `N` message (after its tag) and the fds that came with it: the sockets, then the
/// held bytes' memfd if they are not inline.
fn group(message: &[u8], mut fds: Vec<OwnedFd>, max_held: usize) -> io::Result<Handed> {
    let (name, rest) = text(message, "kind")?;
    let (state, rest) = text(rest, "state")?;
    let (count, mut rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed("a group without its count"))?;
    let count = u32::from_le_bytes(*count) as usize;
    if count == 0 || count > MAX_GROUP {
        return Err(malformed(format!(
            "a group of {count} sockets (1 to {MAX_GROUP})"
        )));
    }
    let mut lengths = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, after) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| malformed("a group cut in its lengths"))?;
        lengths.push(u64::from_le_bytes(*len));
        rest = after;
    }
    let (&place, rest) = rest
        .split_first()
        .ok_or_else(|| malformed("a group without its held bytes' place"))?;
    let total = lengths
        .iter()
        .try_fold(0u64, |sum, &len| sum.checked_add(len));
    let total = match total {
        Some(total) if total <= max_held as u64 => total,
        Some(total) => return Err(over_max_held(total, max_held)),
        None => return Err(malformed("held lengths that overflow")),
    };
    let all = match place {
        0 if fds.len() == count && rest.len() as u64 == total => rest.to_vec(),
        1 if fds.len() == count + 1 && rest.is_empty() => {
            let memfd = fds.pop().ok_or_else(|| malformed("no memfd"))?;
            super::state::read_sealed(memfd, total)?
        }
        _ => {
            return Err(malformed("the fds or held bytes do not match the lengths"));
        }
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

/// One text of a message, after its length, and what follows it; `what` names it in the
/// error.
fn text<'m>(message: &'m [u8], what: &str) -> io::Result<(String, &'m [u8])> {
    let cut = || malformed(format!("its {what} runs past the end"));
    let (len, rest) = message.split_first_chunk::<4>().ok_or_else(cut)?;
    let len = u32::from_le_bytes(*len) as usize;
    let (body, rest) = rest.split_at_checked(len).ok_or_else(cut)?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| malformed(format!("its {what} is not UTF-8")))?;
    Ok((text, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes and fds of `message`, as the other end receives them (the fds duplicated).
    fn wire(message: &Message<'_>) -> (Vec<u8>, Vec<OwnedFd>) {
        let encoded = encode(message).unwrap();
        let bytes = encoded.parts.concat();
        let fds = encoded
            .fds()
            .iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect();
        (bytes, fds)
    }

    fn round_trip(message: &Message<'_>) -> Received {
        let (bytes, fds) = wire(message);
        decode(&bytes, fds, 1 << 20).unwrap().expect("a message")
    }

    #[test]
    fn every_message_decodes_to_what_was_encoded() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let sockets = [(a.as_fd(), &b"GET / HT"[..])];
        let one = Message::Connection {
            sockets: &sockets,
            kind: "http",
            state: "{}",
            max_held: 1 << 20,
        };
        let Received::Connection(handed) = round_trip(&one) else {
            panic!("a connection")
        };
        assert_eq!(
            (handed.name.as_str(), handed.state.as_str()),
            ("http", "{}")
        );
        assert_eq!(
            (handed.fds.len(), handed.held),
            (1, vec![b"GET / HT".to_vec()])
        );
        let group = [(a.as_fd(), &b"x"[..]), (b.as_fd(), &b"yz"[..])];
        let two = Message::Connection {
            sockets: &group,
            kind: "proxy",
            state: r#"{"n":1}"#,
            max_held: 1 << 20,
        };
        let Received::Connection(handed) = round_trip(&two) else {
            panic!("a group")
        };
        assert_eq!(handed.held, [b"x".to_vec(), b"yz".to_vec()]);
        assert_eq!(handed.fds.len(), 2);
        assert!(matches!(
            round_trip(&Message::Relay(a.as_fd())),
            Received::Relay(_)
        ));
        let Received::Generations(pids) = round_trip(&Message::Generations(&[3, 4])) else {
            panic!("generations")
        };
        assert_eq!(pids, [3, 4]);
        assert!(matches!(
            round_trip(&Message::Retire(None)),
            Received::Retire(None)
        ));
        assert!(matches!(
            round_trip(&Message::Retire(Some(a.as_fd()))),
            Received::Retire(Some(_))
        ));
        let quit = round_trip(&Message::Quit(crate::signals::Signal::Term));
        assert!(matches!(quit, Received::Quit(name) if name == "SIGTERM"));
        for by in [CutBy::Signal, CutBy::GenerationLimit { max: 3 }] {
            assert!(matches!(round_trip(&Message::StopNow(by)), Received::StopNow(b) if b == by));
        }
        let state = super::super::state::Outgoing::new(Some(br#"{"count":3}"#), 1 << 20);
        let Received::State(state) = round_trip(&Message::State(&state)) else {
            panic!("a state")
        };
        assert_eq!(state.into_state(1 << 20).unwrap(), br#"{"count":3}"#);
        assert!(decode(b"", Vec::new(), 1).unwrap().is_none());
    }

    /// Every message cut short at every length: an error that names what was wrong, never a
    /// message that says less.
    #[test]
    fn truncated_messages_are_errors_that_say_why() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let sockets = [(a.as_fd(), &b"held"[..])];
        let group = [(a.as_fd(), &b"x"[..]), (b.as_fd(), &b"yz"[..])];
        let messages = [
            Message::Connection {
                sockets: &sockets,
                kind: "http",
                state: "{}",
                max_held: 64,
            },
            Message::Connection {
                sockets: &group,
                kind: "proxy",
                state: "{}",
                max_held: 64,
            },
            Message::Generations(&[3, 4]),
            // (K and Q cut short are other valid messages: a shorter number, or name.)
        ];
        for message in &messages {
            let (bytes, _) = wire(message);
            // Cut anywhere after the tag (a U message's held bytes may be cut: any length
            // is a length of held bytes, and its fd stays the one connection).
            let tag = bytes[0];
            for cut in 1..bytes.len() {
                let (_, fds) = wire(message);
                let decoded = decode(&bytes[..cut], fds, 64);
                if tag == b'U' && cut >= bytes.len() - 4 {
                    continue;
                }
                let error = decoded.expect_err(&format!("{:?} cut at {cut}", tag as char));
                assert_eq!(error.kind(), io::ErrorKind::InvalidData);
                assert!(
                    error.to_string().starts_with("a malformed relay message: "),
                    "{error}"
                );
            }
        }
    }

    /// Messages with the wrong fds or bytes, and held bytes over the receiver's bound: each
    /// an error that names what was wrong.
    #[test]
    fn malformed_messages_are_errors_that_say_why() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let sockets = [(a.as_fd(), &b"held"[..])];
        let owned = || a.as_fd().try_clone_to_owned().unwrap();
        let cases: [(&[u8], Vec<OwnedFd>, &str); 10] = [
            (b"Z", Vec::new(), "unknown tag 0x5a"),
            (b"", vec![owned()], "fds without a message"),
            (
                b"U\x04\0\0\0http\x02\0\0\0{}",
                Vec::new(),
                "a connection with 0 fds",
            ),
            (
                b"U\xff\0\0\0http",
                vec![owned()],
                "its kind runs past the end",
            ),
            (
                b"U\x02\0\0\0\xff\xfe\x02\0\0\0{}",
                vec![owned()],
                "its kind is not UTF-8",
            ),
            (b"F", Vec::new(), "a forwarded relay with 0 fds"),
            (b"G[1,", Vec::new(), "G is not a JSON array of pids"),
            (b"Kmany", Vec::new(), "K with something other than a number"),
            (b"K", vec![owned()], "1 fds with a 'K' message"),
            (b"Q", Vec::new(), "Q without a signal's name"),
        ];
        for (bytes, fds, why) in cases {
            let error = decode(bytes, fds, 64).unwrap_err();
            assert!(error.to_string().contains(why), "{bytes:?}: {error}");
        }
        // Held bytes over the receiver's bound, in either form.
        let (bytes, fds) = wire(&Message::Connection {
            sockets: &sockets,
            kind: "http",
            state: "{}",
            max_held: 64,
        });
        let error = decode(&bytes, fds, 3).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("over this process's max_held_bytes (3)"),
            "{error}"
        );
        let mut head = head(b'N', ["proxy", "{}"], 0).unwrap();
        head.extend_from_slice(&1u32.to_le_bytes());
        head.extend_from_slice(&u64::MAX.to_le_bytes());
        head.push(0);
        let error = decode(&head, vec![owned()], 64).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("over this process's max_held_bytes"),
            "{error}"
        );
    }

    #[test]
    fn what_cannot_be_sent_is_refused_before_anything_goes() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let none: [(BorrowedFd<'_>, &[u8]); 0] = [];
        let nine: Vec<(BorrowedFd<'_>, &[u8])> = (0..9).map(|_| (a.as_fd(), &b""[..])).collect();
        for sockets in [&none[..], &nine[..]] {
            let message = Message::Connection {
                sockets,
                kind: "k",
                state: "{}",
                max_held: 1,
            };
            let error = encode(&message).err().expect("refused");
            assert!(
                error.to_string().contains("moves 1 to 8 sockets"),
                "{error}"
            );
        }
        let state = "x".repeat(MAX_MESSAGE);
        let message = Message::Connection {
            sockets: &[(a.as_fd(), &b""[..])],
            kind: "k",
            state: &state,
            max_held: 1,
        };
        let error = encode(&message).err().expect("refused");
        assert!(error.to_string().contains("over 96 KiB"), "{error}");
    }
}
