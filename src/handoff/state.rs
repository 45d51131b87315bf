//! The application's state on its way to the successor, of any size up to
//! [`crate::Config::max_state_bytes`].
//!
//! It travels as one relay message, `S` and then:
//! - nothing: the old process has no state (no `on_hand_over_state`);
//! - the JSON text, when it is at most [`INLINE`] bytes (the format of earlier builds);
//! - `\x01` and its length (u64 LE), with a sealed memfd holding the text as the message's
//!   `SCM_RIGHTS`: any size the process can hold, without a stream protocol on the relay;
//! - `\x02` and why it was not sent (over the bound), so that the successor can say so.
//!
//! JSON text never starts with a control byte, so the three cannot be confused.

use std::io::{self, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt as _;

use rustix::fs::{MemfdFlags, SealFlags};

/// The largest state sent inside the relay message itself.
pub(crate) const INLINE: usize = 64 * 1024;

const SEALED: u8 = 1;
const NOT_SENT: u8 = 2;

/// A state message, ready to send: its bytes, and the memfd to pass with them, if any.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) message: Vec<u8>,
    pub(crate) fd: Option<OwnedFd>,
    /// What it says.
    pub(crate) sent: Content,
}

/// What a state message carries, as the old process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    /// No state.
    Nothing,
    /// This many bytes of JSON text.
    State(usize),
    /// Not the state, which was this many bytes, and why (over the bound, or no memfd).
    NotSent { bytes: usize, why: String },
}

impl Outgoing {
    /// The message for `state` (`None`: the application has none), within `max` bytes; one
    /// that says why, if it cannot carry the state.
    pub(crate) fn new(state: Option<&[u8]>, max: usize) -> Outgoing {
        let (message, fd, sent) = match state {
            None => (b"S".to_vec(), None, Content::Nothing),
            Some(state) if state.len() > max => {
                let why = format!(
                    "its state ({} bytes) is over max_state_bytes ({max})",
                    state.len()
                );
                return Outgoing::not_sent(state.len(), why);
            }
            Some(state) if state.len() <= INLINE => (
                [&b"S"[..], state].concat(),
                None,
                Content::State(state.len()),
            ),
            Some(state) => match sealed(state, "baton-state") {
                Ok(fd) => {
                    let len = (state.len() as u64).to_le_bytes();
                    let message = [&b"S"[..], &[SEALED], &len].concat();
                    (message, Some(fd), Content::State(state.len()))
                }
                Err(e) => {
                    let why = format!("a memfd for its {} bytes failed: {e}", state.len());
                    return Outgoing::not_sent(state.len(), why);
                }
            },
        };
        Outgoing { message, fd, sent }
    }

    fn not_sent(bytes: usize, why: String) -> Outgoing {
        Outgoing {
            message: [&b"S"[..], &[NOT_SENT], why.as_bytes()].concat(),
            fd: None,
            sent: Content::NotSent { bytes, why },
        }
    }
}

/// A memfd named `name` holding `state`, sealed against any change.
pub(crate) fn sealed(state: &[u8], name: &str) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(state)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// A state message as it arrived.
#[derive(Debug)]
pub(crate) enum Arrived {
    /// The old process has none.
    Nothing,
    /// The JSON text, inline.
    Inline(Vec<u8>),
    /// The JSON text in a sealed memfd, this many bytes.
    Sealed { fd: OwnedFd, len: u64 },
    /// The old process did not send its state, and says why.
    NotSent(String),
}

impl Arrived {
    /// Reads the message after its `S` (with the fd that came with it).
    pub(crate) fn parse(rest: &[u8], fd: Option<OwnedFd>) -> Option<Arrived> {
        match (rest.split_first(), fd) {
            (None, None) => Some(Arrived::Nothing),
            (Some((&SEALED, len)), Some(fd)) => {
                let len = u64::from_le_bytes(len.try_into().ok()?);
                Some(Arrived::Sealed { fd, len })
            }
            (Some((&NOT_SENT, why)), None) => {
                Some(Arrived::NotSent(String::from_utf8_lossy(why).into_owned()))
            }
            (Some(_), None) => Some(Arrived::Inline(rest.to_vec())),
            _ => None,
        }
    }

    /// The JSON text, if there is one within `max` bytes; else why there is none.
    pub(crate) fn into_state(self, max: usize) -> Result<Vec<u8>, String> {
        match self {
            Arrived::Nothing => Err(crate::event::HAD_NO_STATE.into()),
            // Earlier builds sent an empty text both for none and for a state too large.
            Arrived::Inline(text) if text.is_empty() => {
                Err("the previous process sent none".into())
            }
            Arrived::Inline(text) => Ok(text),
            Arrived::NotSent(why) => Err(format!("the previous process did not send it: {why}")),
            Arrived::Sealed { len, .. } if len > max as u64 => Err(format!(
                "its state ({len} bytes) is over this process's max_state_bytes ({max})"
            )),
            Arrived::Sealed { fd, len } => {
                read_sealed(fd, len).map_err(|e| format!("reading it failed: {e}"))
            }
        }
    }
}

/// The `len` bytes of a sealed memfd (checked: its size must be what the message said).
pub(crate) fn read_sealed(fd: OwnedFd, len: u64) -> io::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd.as_fd())?.st_size as u64;
    if size != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the memfd holds {size} bytes, the message said {len}"),
        ));
    }
    // At offset 0: the sender's writes left the shared file offset at the end.
    let mut text = vec![0; len as usize];
    std::fs::File::from(fd).read_exact_at(&mut text, 0)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(state: Option<&[u8]>, max: usize) -> (Content, Result<Vec<u8>, String>) {
        let out = Outgoing::new(state, max);
        let arrived = Arrived::parse(&out.message[1..], out.fd).unwrap();
        (out.sent, arrived.into_state(max))
    }

    #[test]
    fn any_size_up_to_the_bound_arrives_whole() {
        let small = br#"{"count":3}"#.to_vec();
        assert_eq!(
            round_trip(Some(&small), 1 << 30),
            (Content::State(11), Ok(small))
        );
        let large = format!("\"{}\"", "x".repeat(5 << 20)).into_bytes();
        let (sent, back) = round_trip(Some(&large), 1 << 30);
        assert_eq!(sent, Content::State(large.len()));
        // (Not assert_eq: a failure would print megabytes.)
        assert!(
            back.as_deref() == Ok(&large[..]),
            "the state came back changed"
        );
    }

    #[test]
    fn none_and_too_large_say_so() {
        let (sent, back) = round_trip(None, 100);
        assert_eq!(sent, Content::Nothing);
        assert!(back.unwrap_err().contains("had none"));
        let (sent, back) = round_trip(Some(&[b'1'; 200]), 100);
        assert!(
            matches!(sent, Content::NotSent { bytes: 200, .. }),
            "{sent:?}"
        );
        let why = back.unwrap_err();
        assert!(
            why.contains("200 bytes") && why.contains("max_state_bytes (100)"),
            "{why}"
        );
    }

    #[test]
    fn a_sealed_state_over_the_receivers_bound_is_refused() {
        let large = vec![b'1'; INLINE + 1];
        let out = Outgoing::new(Some(&large), 1 << 30);
        let arrived = Arrived::parse(&out.message[1..], out.fd).unwrap();
        let why = arrived.into_state(INLINE).unwrap_err();
        assert!(why.contains("this process's max_state_bytes"), "{why}");
    }
}
