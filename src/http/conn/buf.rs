//! A connection's read buffer, and when to read it without waiting for readiness.

use std::io;

use crate::http::stream::Stream;

/// The read buffer a connection starts with; a larger head grows it, up to `max_head`.
const FIRST_READ_BUFFER: usize = 2048;

/// First-size buffers of ended connections kept for the next ones on the same thread: at most
/// this many (32 KiB), each ready without an allocation or zeroing (glibc serves 2 KiB outside
/// its per-thread cache: ~2,600 instructions a connection with the zeroing).
const SPARE_BUFFERS: usize = 16;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A first-size buffer: a spare one if the thread has it (its old bytes are never read: only
/// what a read puts in is), else a new one.
fn first_buffer(len: usize) -> Vec<u8> {
    let spare = if len == FIRST_READ_BUFFER {
        SPARE
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
    } else {
        None
    };
    spare.unwrap_or_else(|| vec![0; len])
}

/// Bytes read from the connection and not yet consumed: `data[start..end]`.
#[derive(Debug, Default)]
pub(super) struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    /// A buffer holding `pending` (bytes a previous process read and did not parse).
    pub(super) fn with(pending: Vec<u8>) -> ReadBuf {
        ReadBuf {
            end: pending.len(),
            data: pending,
            start: 0,
        }
    }

    pub(super) fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(super) fn pending_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into: moves pending bytes to the front, and grows the buffer (doubling,
    /// up to `max`) only if it is full.
    pub(super) fn room(&mut self, max: usize) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = first_buffer(FIRST_READ_BUFFER.min(max.max(1)));
        }
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < max {
            let grown = (self.data.len() * 2).min(max);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    /// Back to the first size once a large head is done with, if what is pending fits.
    pub(super) fn shrink(&mut self) {
        let pending = self.end - self.start;
        if self.data.len() > FIRST_READ_BUFFER && pending <= FIRST_READ_BUFFER {
            self.data.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
            self.data.truncate(FIRST_READ_BUFFER);
            self.data.shrink_to_fit();
        }
    }

    /// `n` bytes were read into [`ReadBuf::room`].
    pub(super) fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// One read from the socket into the buffer if something is there, without waiting.
    pub(super) fn try_fill(&mut self, io: &Stream, max: usize) -> io::Result<usize> {
        let room = self.room(max);
        if room.is_empty() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let n = io.try_read(room)?;
        self.end += n;
        Ok(n)
    }

    /// One read from the socket into the buffer; `Ok(0)` at EOF.
    pub(super) async fn fill(&mut self, io: &Stream, max: usize) -> io::Result<usize> {
        let room = self.room(max);
        if room.is_empty() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let n = io.read(room).await?;
        self.end += n;
        Ok(n)
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        // Only a buffer of exactly the first size is kept, however it came (a moved
        // connection's held bytes may sit in a larger allocation), so the bound holds.
        if self.data.len() != FIRST_READ_BUFFER || self.data.capacity() != FIRST_READ_BUFFER {
            return;
        }
        let data = std::mem::take(&mut self.data);
        // Gone with the thread's other locals at its end: then the buffer is simply freed.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(data);
            }
        });
    }
}

/// When to read a connection's next request without waiting for readiness first. It pays
/// off under load, when the request is there by the time the other connections had their
/// turn; when the client is slower, each attempt is a wasted `recv`, so after a miss the
/// connection skips attempts, twice as many after each further miss (up to 64), and goes back
/// to trying every time after a hit.
#[derive(Debug, Default)]
pub(super) struct EagerRead {
    /// Attempts still to skip.
    skip: u8,
    /// Misses in a row (the backoff's exponent).
    misses: u8,
}

impl EagerRead {
    const MAX_SKIP: u8 = 64;

    /// Whether to try now (never for TLS, whose records go through the session).
    pub(super) fn try_now(&mut self, io: &Stream) -> bool {
        if !io.can_try_read() {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    pub(super) fn hit(&mut self) {
        self.misses = 0;
    }

    pub(super) fn miss(&mut self) {
        self.skip = (1u8 << self.misses.min(6)).min(Self::MAX_SKIP);
        self.misses = self.misses.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The eager read backs off after misses (1, 2, 4 ... 64 skipped attempts) and is back
    /// to every request after a hit.
    #[test]
    fn eager_read_backs_off_after_misses_and_recovers_on_a_hit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let io = Stream::Plain(crate::io::stream::for_tests(listener.accept().unwrap().0));
        let mut eager = EagerRead::default();
        let mut skipped_after = Vec::new();
        for _ in 0..9 {
            assert!(eager.try_now(&io));
            eager.miss();
            let mut skipped = 0;
            while !eager.try_now(&io) {
                skipped += 1;
            }
            skipped_after.push(skipped);
        }
        assert_eq!(skipped_after, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        eager.hit();
        for _ in 0..10 {
            assert!(eager.try_now(&io));
            eager.hit();
        }
        eager.miss();
        assert!(!eager.try_now(&io), "one skip after the first miss again");
        assert!(eager.try_now(&io));
    }

    /// A read without waiting finds nothing on a quiet connection, then what the client sent.
    #[test]
    fn try_fill_reads_only_what_is_there() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let io = Stream::Plain(crate::io::stream::for_tests(listener.accept().unwrap().0));
        let mut buf = ReadBuf::default();
        let quiet = buf.try_fill(&io, 1024).unwrap_err();
        assert_eq!(quiet.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match buf.try_fill(&io, 1024) {
                Ok(n) => {
                    assert_eq!(n, 16);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(buf.pending(), b"GET / HTTP/1.1\r\n");
    }

    /// An ended connection's first-size buffer goes to the next connection on the thread, with
    /// none of its old bytes pending; at most `SPARE_BUFFERS` are kept, and a grown buffer is
    /// not.
    #[test]
    fn first_buffers_are_reused_on_the_thread_and_bounded() {
        let spare = || SPARE.with(|spare| spare.borrow().len());
        let filled = |bytes: &[u8]| {
            let mut buf = ReadBuf::default();
            let room = buf.room(8192);
            room[..bytes.len()].copy_from_slice(bytes);
            buf.filled(bytes.len());
            buf
        };
        let old = filled(b"secret");
        let at = old.data.as_ptr();
        drop(old);
        assert_eq!(spare(), 1);
        let mut next = ReadBuf::default();
        assert!(next.pending().is_empty());
        assert_eq!(next.room(8192).len(), FIRST_READ_BUFFER);
        assert_eq!(next.data.as_ptr(), at, "the spare buffer is taken");
        assert_eq!(spare(), 0);
        drop(next);

        let bufs: Vec<ReadBuf> = (0..SPARE_BUFFERS + 5).map(|_| filled(b"x")).collect();
        drop(bufs);
        assert_eq!(spare(), SPARE_BUFFERS);
        let mut grown = filled(&[b'a'; FIRST_READ_BUFFER]);
        assert_eq!(grown.room(8192).len(), FIRST_READ_BUFFER);
        SPARE.with(|spare| spare.borrow_mut().clear());
        drop(grown);
        assert_eq!(spare(), 0, "a grown buffer is freed");
        let mut held = Vec::with_capacity(64 * 1024);
        held.resize(FIRST_READ_BUFFER, b'h');
        drop(ReadBuf::with(held));
        assert_eq!(spare(), 0, "held bytes in a larger allocation are freed");
    }
}
