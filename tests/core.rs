//! The core's promises to any program, through `examples/echo.rs` (the core alone, no HTTP),
//! each in every process model: a single process, a supervising process with 2 workers, and
//! PID 1 of a new PID namespace (which supervises one worker by default). Nothing a restart
//! moves is lost, and what is lost is said and counted: lines in flight, an unfinished line of
//! 1 MB, a connection of a kind the successor does not take, held bytes over the limit, a
//! connection still open when the drain gives up.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{DEADLINE, Scratch, Server, Signal, example, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Single,
    Workers,
    Pid1,
}

const MODELS: [Model; 3] = [Model::Single, Model::Workers, Model::Pid1];

/// An echo service in one model, and what a restart of it needs.
struct Echo {
    server: Server,
    model: Model,
    /// The serving process (single model), or the generation serving (the others).
    serving: u32,
    generation: u64,
    /// Where it was started from, when a test swaps the binary.
    _scratch: Scratch,
    start_path: PathBuf,
}

impl Echo {
    fn start(model: Model, test: &str, args: &[&str]) -> Echo {
        Echo::start_example("echo", model, test, args)
    }

    /// `examples/<name>` (a program on the core) in `model`, from a start path of its own.
    fn start_example(name: &str, model: Model, test: &str, args: &[&str]) -> Echo {
        let scratch = Scratch::new(&format!("core-{test}-{model:?}"));
        let start_path = scratch.install("echo", &std::fs::read(example(name)).unwrap());
        let mut command = Command::new(&start_path);
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        let server = match model {
            Model::Single => Server::start(command),
            Model::Workers => {
                command.args(["--workers", "2"]);
                Server::start(command)
            }
            Model::Pid1 => Server::start_in_pid_namespace(command),
        };
        let serving = match model {
            Model::Single => server.pid,
            Model::Workers => {
                server.workers_ready(1, 2);
                1
            }
            Model::Pid1 => {
                server.workers_ready(1, 1);
                1
            }
        };
        Echo {
            server,
            model,
            serving,
            generation: 1,
            _scratch: scratch,
            start_path,
        }
    }

    /// One restart, waited for until the new code serves. Returns the process that drains
    /// (single model), or nothing: workers' pids are the namespace's or many.
    fn restart(&mut self) -> Option<u32> {
        match self.model {
            Model::Single => {
                let old = self.serving;
                self.serving = self.server.restart(old);
                Some(old)
            }
            Model::Workers | Model::Pid1 => {
                self.generation += 1;
                self.server.restart_workers(self.generation);
                let count = if self.model == Model::Workers { 2 } else { 1 };
                self.server.workers_ready(self.generation, count);
                None
            }
        }
    }

    /// Puts `script` (a shell script) at the start path: the next restart runs it.
    fn swap_binary(&self, script: &str) {
        let dir = self.start_path.parent().unwrap();
        let staged = dir.join(".echo.new");
        std::fs::write(&staged, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&staged, &self.start_path).unwrap();
    }

    fn connect(&self) -> Line {
        Line::connect(self.server.addr)
    }
}

/// A client connection that speaks lines.
struct Line {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Line {
    fn connect(addr: std::net::SocketAddr) -> Line {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Line {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, text: &[u8]) {
        self.writer.write_all(text).unwrap();
    }

    /// The next answer, split into the answering pid and the text.
    fn answer(&mut self) -> Result<(u32, String), String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Err("the connection closed".into()),
            Err(e) => return Err(e.to_string()),
            Ok(_) => {}
        }
        let (pid, text) = line
            .trim_end_matches('\n')
            .split_once(": ")
            .ok_or(format!("not an answer: {line:?}"))?;
        let pid = pid.parse().map_err(|_| format!("no pid in {line:?}"))?;
        Ok((pid, text.to_owned()))
    }

    /// Whether the server closed the connection (EOF, or a reset) before `DEADLINE`.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Waits until the clients counting into `progress` have had `more` answers since the call
/// (what a test would otherwise sleep for between restarts).
fn more_answered(progress: &std::sync::atomic::AtomicU64, more: u64) {
    let target = progress.load(std::sync::atomic::Ordering::Relaxed) + more;
    let deadline = std::time::Instant::now() + DEADLINE;
    while progress.load(std::sync::atomic::Ordering::Relaxed) < target {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress: {target} not reached"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Clients with two lines in flight at all times keep every line, in order, across five
/// restarts: nothing is answered twice, nothing lost.
fn lines_in_flight_cross_restarts(model: Model, args: &[&str]) {
    // (A scratch directory of its own for each set of flags: the tests run at once.)
    let mut echo = Echo::start(model, &format!("inflight{}", args.concat()), args);
    let addr = echo.server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Each client's own count too: the last wait is for every one of them to have kept going.
    let each: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>> =
        std::sync::Arc::new((0..4).map(|_| Default::default()).collect());
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, progress, each) = (stop.clone(), progress.clone(), each.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut line = Line::connect(addr);
                let mut sent = 0u64;
                let mut answered = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || answered < sent {
                    while sent < answered + 2 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        line.send(format!("line {sent}\n").as_bytes());
                        sent += 1;
                    }
                    let (_, text) = line.answer().map_err(|e| format!("line {answered}: {e}"))?;
                    if text != format!("line {answered}") {
                        return Err(format!("line {answered} answered {text:?}"));
                    }
                    answered += 1;
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    each[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(answered)
            })
        })
        .collect();
    for _ in 0..5 {
        more_answered(&progress, 20);
        echo.restart();
    }
    more_answered(&progress, 20);
    for count in each.iter() {
        let so_far = count.load(std::sync::atomic::Ordering::Relaxed);
        more_answered(count, 21u64.saturating_sub(so_far));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        let answered = client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{model:?}: a client failed: {e}\n{}", echo.server.dump()));
        assert!(answered > 20, "{model:?}: only {answered} lines answered");
    }
}

#[test]
fn lines_in_flight_cross_restarts_of_a_single_process() {
    lines_in_flight_cross_restarts(Model::Single, &[]);
}

#[test]
fn lines_in_flight_cross_restarts_of_two_workers() {
    lines_in_flight_cross_restarts(Model::Workers, &[]);
}

#[test]
fn lines_in_flight_cross_restarts_as_pid_1() {
    lines_in_flight_cross_restarts(Model::Pid1, &[]);
}

/// An unfinished line of 1 MB (more than a relay message carries) moves with its connection
/// and is answered whole by the successor once its end arrives.
#[test]
fn an_unfinished_line_of_1_mb_is_answered_whole_by_the_successor_in_every_model() {
    for model in MODELS {
        let mut echo = Echo::start(model, "megabyte", &[]);
        let mut client = echo.connect();
        client.send(b"before\n");
        let (first, _) = client.answer().unwrap();
        let big = vec![b'x'; 1 << 20];
        client.send(&big);
        echo.restart();
        client.send(b"\n");
        let (pid, text) = client
            .answer()
            .unwrap_or_else(|e| panic!("{model:?}: {e}\n{}", echo.server.dump()));
        assert_ne!(pid, first, "{model:?}: answered by the old process");
        assert!(
            text.len() == big.len() && text.bytes().all(|b| b == b'x'),
            "{model:?}: the line came back {} bytes long",
            text.len()
        );
        client.send(b"after\n");
        assert_eq!(client.answer().unwrap(), (pid, "after".to_owned()));
    }
}

/// After a deploy that renames the kind, a moved connection the successor does not take is
/// closed, with a warning naming the kind and the client, and counted: the successor's report
/// is not clean.
#[test]
fn a_kind_the_successor_does_not_take_is_closed_warned_and_counted_in_every_model() {
    for model in MODELS {
        let mut echo = Echo::start(model, "kind", &[]);
        let mut client = echo.connect();
        client.send(b"hello\n");
        client.answer().unwrap();
        let client_addr = client.writer.local_addr().unwrap();
        let binary = example("echo");
        echo.swap_binary(&format!(
            "#!/bin/sh\nexec {} \"$@\" --kind renamed\n",
            binary.display()
        ));
        echo.restart();
        assert!(
            client.closed(),
            "{model:?}: the refused connection stayed open"
        );
        let warning = echo
            .server
            .wait_line("was closed: this program does not take");
        assert!(
            warning.contains("kind \"echo\"") && warning.contains(&client_addr.to_string()),
            "{model:?}: {warning}"
        );
        // New connections are served by the renamed build.
        let mut again = echo.connect();
        again.send(b"again\n");
        assert_eq!(again.answer().unwrap().1, "again");
        // The process that refused it says so when it exits, and exits unclean.
        let target = match model {
            Model::Single => echo.serving,
            _ => echo.server.pid,
        };
        signal(target, Signal::TERM);
        let exiting = echo.server.wait_line("1 handed-over connections lost");
        assert!(exiting.contains("exiting"), "{model:?}: {exiting}");
        if model == Model::Single {
            // (Not the test's child: the first process restarted.)
            assert!(common::wait_gone(echo.serving, DEADLINE));
        } else {
            // The supervising process saw its worker exit unclean.
            echo.server.wait_line("exited (exit status: 1)");
        }
    }
}

/// Held bytes over `max_held_bytes`: the hand-over fails with an error that says so, and the
/// old process keeps the connection, finishes its line, says goodbye and closes.
#[test]
fn held_bytes_over_the_limit_stay_with_the_old_process_which_finishes_the_line() {
    for model in MODELS {
        let mut echo = Echo::start(model, "limit", &["--max-held-bytes", "65536"]);
        let mut client = echo.connect();
        client.send(b"before\n");
        let (old, _) = client.answer().unwrap();
        let big = vec![b'y'; 300_000];
        client.send(&big);
        echo.restart();
        let error = echo.server.wait_line("not handed over: ");
        assert!(
            error.contains("unread bytes, over max_held_bytes (65536)")
                && error.contains("finishing its line here"),
            "{model:?}: {error}"
        );
        client.send(b"\n");
        let (pid, text) = client.answer().unwrap();
        assert_eq!(pid, old, "{model:?}: not the old process");
        assert_eq!(text.len(), big.len(), "{model:?}");
        assert_eq!(client.answer().unwrap(), (old, "goodbye".to_owned()));
        assert!(client.closed(), "{model:?}");
    }
}

/// A connection the program keeps open through the drain is cut at the drain timeout, and
/// the report counts it: the exiting line says so, and the process exits unclean.
#[test]
fn a_connection_open_when_the_drain_gives_up_is_counted_as_dropped_in_every_model() {
    for model in MODELS {
        let mut echo = Echo::start(model, "linger", &["--drain-timeout", "500ms"]);
        let mut client = echo.connect();
        client.send(b"?linger\n");
        let (old, text) = client.answer().unwrap();
        assert_eq!(text, "lingering");
        echo.restart();
        let exiting = echo.server.wait_line(&format!(
            "[{old}]: exiting: 0 requests cut by the drain timeout, 1 connections dropped"
        ));
        assert!(!exiting.is_empty());
        assert!(client.closed(), "{model:?}: still open after the drain");
        if model != Model::Single {
            // The supervising process saw the worker exit unclean.
            echo.server
                .wait_line(&format!("worker {old} exited (exit status: 1)"));
        }
    }
}

/// Datagrams to a `udp:` listener, one at a time, sent on through five restarts: every one
/// is answered, by the old process until its drain and by the successor after.
fn datagrams_cross_restarts(model: Model, args: &[&str]) {
    let name = format!("udp{}", args.concat());
    let args = [&["--addr", "udp:127.0.0.1:0"], args].concat();
    let mut echo = Echo::start(model, &name, &args);
    let udp = echo.server.addresses(2)[1].clone();
    let udp: std::net::SocketAddr = udp
        .strip_prefix("udp:")
        .unwrap_or_else(|| panic!("not a udp address: {udp}"))
        .parse()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stopping, counted) = (stop.clone(), progress.clone());
    let client = std::thread::spawn(move || -> Result<(u64, Vec<u32>), String> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut pids = Vec::new();
        let mut n = 0u64;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            socket
                .send_to(format!("datagram {n}").as_bytes(), udp)
                .unwrap();
            let mut buf = [0u8; 256];
            let len = socket
                .recv(&mut buf)
                .map_err(|e| format!("datagram {n} unanswered: {e}"))?;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            let (pid, rest) = text.split_once(": ").ok_or(format!("{text:?}"))?;
            if rest != format!("datagram {n}") {
                return Err(format!("datagram {n} answered {text:?}"));
            }
            let pid: u32 = pid.parse().map_err(|_| format!("{text:?}"))?;
            if pids.last() != Some(&pid) {
                pids.push(pid);
            }
            n += 1;
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok((n, pids))
    });
    for _ in 0..5 {
        more_answered(&progress, 10);
        echo.restart();
    }
    more_answered(&progress, 10);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, pids) = client
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{model:?}: {e}\n{}", echo.server.dump()));
    assert!(answered > 50, "{model:?}: {answered} answered");
    // Answered by the processes of at least the first and the last generation.
    assert!(pids.len() >= 2, "{model:?}: answered only by {pids:?}");
}

#[test]
fn datagrams_cross_restarts_of_a_single_process() {
    datagrams_cross_restarts(Model::Single, &[]);
}

#[test]
fn datagrams_cross_restarts_of_two_workers() {
    datagrams_cross_restarts(Model::Workers, &[]);
}

#[test]
fn datagrams_cross_restarts_as_pid_1() {
    datagrams_cross_restarts(Model::Pid1, &[]);
}

/// The same with echo's connections and datagrams as tasks on the core's thread
/// (`Baton::serve_local`), whose thread waits on the connections' epoll itself.
#[test]
fn lines_and_datagrams_cross_restarts_on_the_cores_thread_in_every_model() {
    for model in MODELS {
        lines_in_flight_cross_restarts(model, &["--local"]);
        datagrams_cross_restarts(model, &["--local"]);
    }
}

/// A proxy's pair of sockets (its client's and its upstream's) moves as one hand-over: across
/// restarts of the proxy, the upstream server sees the same connection (the same peer
/// address) and every line goes through, in order.
#[test]
fn a_proxy_moves_its_client_and_upstream_sockets_as_one_in_every_model() {
    let upstream = Server::start({
        let mut command = Command::new(example("echo"));
        command.args(["--addr", "127.0.0.1:0"]);
        command
    });
    let target = upstream.addr.to_string();
    for model in MODELS {
        let mut proxy = Echo::start_example("proxy", model, "proxy", &["--upstream", &target]);
        let mut client = proxy.connect();
        client.send(b"?peer\n");
        let (pid, peer) = client.answer().unwrap();
        assert_eq!(pid, upstream.pid, "{model:?}: not the upstream's answer");
        for round in 0..3 {
            proxy.restart();
            for n in 0..5 {
                client.send(format!("line {round}.{n}\n").as_bytes());
                let answer = client
                    .answer()
                    .unwrap_or_else(|e| panic!("{model:?}: {e}\n{}", proxy.server.dump()));
                assert_eq!(answer, (upstream.pid, format!("line {round}.{n}")));
            }
            client.send(b"?peer\n");
            assert_eq!(
                client.answer().unwrap(),
                (upstream.pid, peer.clone()),
                "{model:?}: the upstream connection changed"
            );
        }
        assert_eq!(
            proxy.server.count("was closed"),
            0,
            "{}",
            proxy.server.dump()
        );
    }
}
