//! Load: client threads sending requests in a loop until told to stop, and what they counted.

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
use super::client::*;

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
    /// Every pid that answered so far, while the load runs.
    served: Arc<(Mutex<HashSet<u32>>, Condvar)>,
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
        let served = Arc::new((Mutex::new(HashSet::new()), Condvar::new()));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let request = request.clone();
                let served = served.clone();
                std::thread::spawn(move || {
                    let mut client = Client::new(addr);
                    let mut stats = Stats::default();
                    while !stop.load(Ordering::Relaxed) {
                        match request(&mut client) {
                            Ok(reply) if reply.status == 200 => {
                                stats.ok += 1;
                                if let Some(pid) = reply.pid() {
                                    if stats.pids.insert(pid) {
                                        served.0.lock().unwrap().insert(pid);
                                        served.1.notify_all();
                                    }
                                }
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
        Load {
            stop,
            threads,
            served,
        }
    }

    /// Waits until `pid` has answered one of the clients; panics after [`DEADLINE`].
    pub fn wait_served_by(&self, pid: u32) {
        let deadline = Instant::now() + DEADLINE;
        let mut served = self.served.0.lock().unwrap();
        while !served.contains(&pid) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{pid} answered no client within {DEADLINE:?}"));
            served = self.served.1.wait_timeout(served, left).unwrap().0;
        }
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
