//! A tiny blocking HTTP/1.1 client: one request per connection, or keep-alive on one.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::DEADLINE;

/// One request over a Unix socket, on a connection that asks to be closed afterwards.
pub fn get_unix(path: &std::path::Path, target: &str) -> Result<Reply, Failure> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: unix\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    read_reply(&mut BufReader::new(stream))
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The pid in a `... from <pid> ...` body.
    pub fn pid(&self) -> Option<u32> {
        let rest = self.body.split("from ").nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// How a request failed, as a load generator counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Refused,
    Reset,
    /// The connection closed before a whole response arrived.
    Eof,
    Timeout,
    Status(u16),
    Other(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        match e.kind() {
            ErrorKind::ConnectionRefused => Failure::Refused,
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
                Failure::Reset
            }
            ErrorKind::UnexpectedEof => Failure::Eof,
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Other(e.to_string()),
        }
    }
}

/// A keep-alive HTTP/1.1 client on one connection at a time; reconnects after `Connection: close`.
pub struct Client {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    /// TCP connections opened so far.
    pub connects: usize,
    pub timeout: Duration,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            stream: None,
            connects: 0,
            timeout: DEADLINE,
        }
    }

    pub fn get(&mut self, path: &str) -> Result<Reply, Failure> {
        self.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.addr
        ))
    }

    /// Sends raw request bytes and reads one response.
    pub fn send(&mut self, request: &str) -> Result<Reply, Failure> {
        self.send_only(request)?;
        self.receive()
    }

    /// Sends raw request bytes, connecting first if needed.
    pub fn send_only(&mut self, request: &str) -> Result<(), Failure> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_nodelay(true)?;
            self.connects += 1;
            self.stream = Some(BufReader::new(stream));
        }
        let stream = self.stream.as_mut().expect("connected above");
        let written = stream.get_mut().write_all(request.as_bytes());
        if written.is_err() {
            self.stream = None;
        }
        Ok(written?)
    }

    /// The client side's address of the current connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.as_ref()?.get_ref().local_addr().ok()
    }

    /// Reads one response; forgets the connection if it is closing or broken.
    pub fn receive(&mut self) -> Result<Reply, Failure> {
        let stream = self
            .stream
            .as_mut()
            .ok_or(Failure::Other("not connected".into()))?;
        let result = read_reply(stream);
        match &result {
            Ok(reply) if !reply.closes() => {}
            _ => self.stream = None,
        }
        result
    }
}

/// The pid that answers `/hello` on a fresh connection now.
/// Waits until a fresh connection is answered by `pid` (after a restart, a process that is
/// still to hear that it retires may answer one more), and panics with the last answer's pid
/// if none is within the deadline.
pub fn served_by(addr: SocketAddr, pid: u32) {
    let deadline = std::time::Instant::now() + super::DEADLINE;
    loop {
        let answered = serving_pid(addr);
        if answered == pid {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} never answered; {answered} still does"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub fn serving_pid(addr: SocketAddr) -> u32 {
    get(addr, "/hello")
        .expect("hello")
        .pid()
        .expect("pid in the body")
}

/// The names of the environment variables a process started by the server's handler sees
/// (`hello`'s `/child-env`).
pub fn child_env(addr: SocketAddr) -> Vec<String> {
    let reply = get(addr, "/child-env").expect("child-env");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body.lines().map(str::to_owned).collect()
}

/// One request on a fresh connection that asks to be closed afterwards.
pub fn get(addr: SocketAddr, path: &str) -> Result<Reply, Failure> {
    Client::new(addr).send(&format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ))
}

pub fn read_reply(stream: &mut impl BufRead) -> Result<Reply, Failure> {
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Err(Failure::Eof);
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::Other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if stream.read_line(&mut line)? == 0 {
            return Err(Failure::Eof);
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed
            .split_once(':')
            .ok_or_else(|| Failure::Other(format!("bad header {trimmed:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        read_chunked(stream)?
    } else {
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .ok_or_else(|| Failure::Other("response without content-length".into()))?;
        let mut body = vec![0; length];
        stream.read_exact(&mut body)?;
        body
    };
    let body = String::from_utf8(body).map_err(|e| Failure::Other(e.to_string()))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn read_chunked(stream: &mut impl BufRead) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim_end(), 16)
            .map_err(|_| Failure::Other(format!("bad chunk size {line:?}")))?;
        let mut chunk = vec![0; size + 2];
        stream.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// One server-sent event stream (`path`, after `last` if given) read to its end: the ids it
/// carried, in order; panics unless it ended cleanly (the zero-length chunk, the last event
/// whole).
pub fn event_stream(addr: std::net::SocketAddr, path: &str, last: Option<u64>) -> Vec<u64> {
    event_stream_seen(addr, path, last, &Seen::default())
}

/// A count that one thread advances as things arrive (events, answers) and another waits on,
/// instead of sleeping while they accumulate.
#[derive(Clone, Debug, Default)]
pub struct Seen(Arc<(Mutex<usize>, Condvar)>);

impl Seen {
    /// `n` more have arrived.
    pub fn add(&self, n: usize) {
        *self.0.0.lock().unwrap() += n;
        self.0.1.notify_all();
    }

    /// How many have arrived.
    pub fn count(&self) -> usize {
        *self.0.0.lock().unwrap()
    }

    /// Waits until `n` more than now have arrived; panics after [`DEADLINE`].
    pub fn wait_more(&self, n: usize) {
        self.wait_until(self.count() + n);
    }

    /// Waits until `target` have arrived in all; panics after [`DEADLINE`].
    pub fn wait_until(&self, target: usize) {
        assert!(
            self.reaches(target),
            "{} of {target} arrived within {DEADLINE:?}",
            self.count()
        );
    }

    /// Waits up to [`DEADLINE`] for `target` to have arrived in all; whether they did.
    pub fn reaches(&self, target: usize) -> bool {
        let deadline = Instant::now() + DEADLINE;
        let mut count = self.0.0.lock().unwrap();
        while *count < target {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            count = self.0.1.wait_timeout(count, left).unwrap().0;
        }
        true
    }
}

/// [`event_stream`], adding each event to `seen` as it arrives.
pub fn event_stream_seen(
    addr: std::net::SocketAddr,
    path: &str,
    last: Option<u64>,
    seen: &Seen,
) -> Vec<u64> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let resume = last.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{resume}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200 "), "{line:?}");
    let mut chunked = false;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
    }
    assert!(chunked, "an event stream of unknown length is chunked");
    let mut text = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let size = usize::from_str_radix(line.trim_end(), 16).expect("a chunk size");
        if size == 0 {
            // The zero-length chunk: the stream ended cleanly, not cut.
            break;
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        text.extend_from_slice(&chunk[..size]);
        seen.add(chunk.windows(4).filter(|w| w == b"id: ").count());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.ends_with("\n\n"), "the last event is cut: {text:?}");
    text.lines()
        .filter_map(|l| l.strip_prefix("id: ")?.parse().ok())
        .collect()
}
