//! Shared by the integration tests: start the real example binary, read its event log, send it
//! signals, talk HTTP/1.1 to it with a tiny blocking client, and generate load from threads.
//! Every process a test starts is SIGKILLed when its [`Server`] guard drops, even on failure.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

/// Generous bound for anything that normally takes milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Path of an example binary; `cargo test` builds the examples next to the test binaries.
pub fn example(name: &str) -> PathBuf {
    let mut path = std::env::current_exe().expect("test binary path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.push("examples");
    path.push(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo test`, which builds examples",
        path.display()
    );
    path
}

/// A private directory for one test, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("baton-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Puts `contents` at `name` atomically, as a deploy does: write beside it, then rename.
    pub fn install(&self, name: &str, contents: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let staged = self.0.join(format!(".{name}.new"));
        std::fs::write(&staged, contents).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = self.0.join(name);
        std::fs::rename(&staged, &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pid in a `... child <pid> ready` (or `failed`, `exited`) line.
pub fn child_pid(line: &str) -> u32 {
    line.split("child ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("a child pid in the line")
}

/// Every stderr line of a server and all its successors (they inherit the pipe).
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A running example server and every process it spawned, killed on drop.
pub struct Server {
    child: Child,
    log: Arc<Log>,
    /// The first process's pid.
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `examples/hello` on 127.0.0.1 with a kernel-chosen port, plus `args`.
    pub fn hello(args: &[&str]) -> Server {
        let mut command = Command::new(example("hello"));
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        Server::start(command)
    }

    /// Starts `command` (stderr is captured) and waits until it listens.
    pub fn start(mut command: Command) -> Server {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the example");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Log::default());
        let writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("BATON_TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                writer.lines.lock().unwrap().push(line);
                writer.grew.notify_all();
            }
        });
        let pid = child.id();
        let mut server = Server {
            child,
            log,
            pid,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let needle = format!("baton[{pid}]: listening on ");
        let deadline = Instant::now() + DEADLINE;
        let line = loop {
            if let Some(line) = server.try_wait_line(&needle, Duration::from_millis(50)) {
                break line;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                // Give the reader a moment to collect what it printed on the way out.
                server.try_wait_line("\u{0}", Duration::from_millis(100));
                panic!(
                    "the server exited ({status}) before listening; log:\n{}",
                    server.dump()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the server never listened; log:\n{}",
                server.dump()
            );
        };
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next());
        server.addr = addr
            .map(|a| a.trim_start_matches("tls:"))
            .and_then(|a| a.parse().ok())
            .expect("address in the listening line");
        server
    }

    /// The `n` addresses the first process listens on, in order (`unix:/path` for Unix
    /// sockets), once it has logged them all.
    pub fn addresses(&self, n: usize) -> Vec<String> {
        let needle = format!("baton[{}]: listening on ", self.pid);
        self.wait_for("every listening line", |lines| {
            let found: Vec<String> = lines
                .iter()
                .filter_map(|l| {
                    l.split_once(&needle)?
                        .1
                        .split(' ')
                        .next()
                        .map(str::to_owned)
                })
                .collect();
            (found.len() >= n).then_some(found)
        })
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle`, returns it; panics with the log after [`DEADLINE`].
    pub fn wait_line(&self, needle: &str) -> String {
        self.wait_for(needle, |lines| {
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    pub fn try_wait_line(&self, needle: &str, within: Duration) -> Option<String> {
        self.poll_log(within, |lines| {
            lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// Waits until `check` finds what it looks for in the log; panics after [`DEADLINE`].
    pub fn wait_for<T>(&self, what: &str, check: impl FnMut(&[String]) -> Option<T>) -> T {
        self.poll_log(DEADLINE, check)
            .unwrap_or_else(|| panic!("no {what:?} within {DEADLINE:?}; log:\n{}", self.dump()))
    }

    fn poll_log<T>(
        &self,
        within: Duration,
        mut check: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + within;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(found) = check(&lines) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Number of lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn dump(&self) -> String {
        self.lines().join("\n")
    }

    /// SIGHUP to `pid`; waits until its successor is ready and returns the successor's pid.
    pub fn restart(&self, pid: u32) -> u32 {
        let prefix = format!("baton[{pid}]: child ");
        let before = self.count(&prefix);
        signal(pid, Signal::HUP);
        let outcome = self.wait_for("the successor's ready line", |lines| {
            let line = lines.iter().filter(|l| l.contains(&prefix)).nth(before)?;
            Some(line.clone())
        });
        assert!(
            outcome.ends_with(" ready"),
            "restart of {pid} failed: {outcome}\nlog:\n{}",
            self.dump()
        );
        let successor = outcome
            .split("child ")
            .nth(1)
            .and_then(|r| r.split(' ').next());
        successor
            .and_then(|p| p.parse().ok())
            .expect("pid in the ready line")
    }

    /// Every pid that logged, or was logged as a spawned child (it may not have logged yet).
    pub fn pids(&self) -> HashSet<u32> {
        let lines = self.lines();
        let spawned = lines
            .iter()
            .filter_map(|l| l.split_once("spawned child ")?.1.trim().parse().ok());
        lines
            .iter()
            .filter_map(|l| log_pid(l))
            .chain(spawned)
            .collect()
    }

    /// Waits for the first process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for pid in self.pids() {
            if pid != self.pid {
                let _ = kill(pid, Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_pid(line: &str) -> Option<u32> {
    line.strip_prefix("baton[")?.split(']').next()?.parse().ok()
}

pub fn kill(pid: u32, signal: Signal) -> rustix::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("non-zero pid");
    rustix::process::kill_process(pid, signal)
}

pub fn signal(pid: u32, signal: Signal) {
    kill(pid, signal).unwrap_or_else(|e| panic!("signal {signal:?} to {pid}: {e}"));
}

/// `/proc/<pid>/stat`'s state letter, or `None` if the process is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Running (a zombie counts as gone: it has exited and waits only for its parent to reap it).
pub fn alive(pid: u32) -> bool {
    !matches!(state(pid), None | Some('Z') | Some('X'))
}

/// Polls until `pid` has exited; `false` if it still runs after `within`.
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A numeric field of `/proc/<pid>/status`, e.g. `Threads`.
pub fn status_field(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of a process so far, in clock ticks (usually 10 ms).
pub fn status_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .expect("stat format")
        .1
        .split(' ')
        .collect();
    fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count()
}

/// Children of `pid` that have exited and were not reaped.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if state == Some("Z") && ppid == Some(pid) {
            zombies.push(child);
        }
    }
    zombies
}

/// One request over a Unix socket, on a connection that asks to be closed afterwards.
pub fn get_unix(path: &std::path::Path, target: &str) -> Result<Reply, Failure> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: unix\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    read_reply(&mut BufReader::new(stream))
}

/// Waits until the server has read everything the client at `client` sent it: the server's
/// end of that connection has an empty receive queue in `/proc/net/tcp`. Panics after
/// [`DEADLINE`].
pub fn wait_until_read(server: SocketAddr, client: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let queued = table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
            if port(fields.get(1)?)? != server.port() || port(fields.get(2)?)? != client.port() {
                return None;
            }
            usize::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok()
        });
        if queued == Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server never read from {client} (queue {queued:?})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
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

/// Results of a load run.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: usize,
    pub failures: Vec<Failure>,
    pub pids: HashSet<u32>,
    pub connects: usize,
}

impl Stats {
    /// Fails the test, listing them, if any request failed.
    pub fn assert_no_failures(&self) {
        assert!(
            self.failures.is_empty(),
            "{} failed: {:?}",
            self.failures.len(),
            self.failures
        );
    }
}

/// Client threads sending `GET /hello` in a loop until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Stats>>,
}

impl Load {
    /// `clients` keep-alive connections, each sending requests back to back.
    pub fn keep_alive(addr: SocketAddr, clients: usize) -> Load {
        Load::run(
            clients,
            move |client: &mut Client| client.get("/hello"),
            addr,
        )
    }

    /// `clients` threads, each opening a new connection for every request.
    pub fn per_request(addr: SocketAddr, clients: usize) -> Load {
        let request = move |client: &mut Client| {
            let mut fresh = Client::new(addr);
            let request =
                format!("GET /hello HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let reply = fresh.send(&request);
            client.connects += fresh.connects;
            reply
        };
        Load::run(clients, request, addr)
    }

    fn run(
        clients: usize,
        request: impl Fn(&mut Client) -> Result<Reply, Failure> + Send + Clone + 'static,
        addr: SocketAddr,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let request = request.clone();
                std::thread::spawn(move || {
                    let mut client = Client::new(addr);
                    let mut stats = Stats::default();
                    while !stop.load(Ordering::Relaxed) {
                        match request(&mut client) {
                            Ok(reply) if reply.status == 200 => {
                                stats.ok += 1;
                                stats.pids.extend(reply.pid());
                            }
                            Ok(reply) => stats.failures.push(Failure::Status(reply.status)),
                            Err(failure) => stats.failures.push(failure),
                        }
                    }
                    stats.connects = client.connects;
                    stats
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients and sums up what they saw.
    pub fn finish(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Stats::default();
        for thread in self.threads {
            let stats = thread.join().expect("load thread panicked");
            total.ok += stats.ok;
            total.failures.extend(stats.failures);
            total.pids.extend(stats.pids);
            total.connects += stats.connects;
        }
        total
    }
}
