//! Starting, restarting and measuring a server process (and its successors) from outside:
//! its event log with arrival times, `/proc` figures, signals, CPU pinning.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

const DEADLINE: Duration = Duration::from_secs(20);

/// One server under test.
#[derive(Debug, Clone)]
pub struct Flavor {
    pub name: &'static str,
    pub binary: PathBuf,
    /// Log prefix: `baton[pid]: ` or `peer[pid]: `.
    pub prefix: &'static str,
    /// Extra arguments, e.g. the codec to use.
    pub args: Vec<String>,
    /// The address it is started on.
    pub addr: &'static str,
    /// Cargo features its crate tree is counted with.
    pub features: &'static str,
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(Instant, String)>>,
    grew: Condvar,
}

/// A running server generation chain, SIGKILLed (all of it) on drop.
pub struct Running {
    first: Child,
    log: Arc<Log>,
    prefix: &'static str,
    /// The pid serving now.
    pub pid: u32,
    pub addr: SocketAddr,
}

/// One restart as seen from outside.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    pub signal_at: Instant,
    /// When the old process logged its successor ready (the successor is accepting by then).
    pub ready_at: Instant,
    /// When the successor logged that it listens (its own view of being up).
    pub listening_at: Instant,
    pub gone_at: Instant,
}

impl Running {
    /// Starts `flavor` on a kernel-chosen loopback port, pinned to `cpu` if given (successors
    /// inherit the pinning).
    pub fn start(flavor: &Flavor, cpu: Option<usize>) -> Running {
        Running::start_wrapped(flavor, cpu, "", &[])
    }

    /// [`Running::start`] under `wrapper` (with `wrapper_args`) if not empty: valgrind, say,
    /// which runs the server in the process it starts (same pid).
    pub fn start_wrapped(
        flavor: &Flavor,
        cpu: Option<usize>,
        wrapper: &str,
        wrapper_args: &[String],
    ) -> Running {
        let mut command = if wrapper.is_empty() {
            Command::new(&flavor.binary)
        } else {
            let mut command = Command::new(wrapper);
            command.args(wrapper_args).arg(&flavor.binary);
            command
        };
        command
            .args(["--addr", flavor.addr, "--drain-timeout", "5s"])
            .args(&flavor.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(cpu) = cpu {
            // SAFETY: sched_setaffinity is a plain syscall on this (forked, about to exec) child.
            unsafe {
                command.pre_exec(move || {
                    let mut set = rustix::thread::CpuSet::new();
                    set.set(cpu);
                    rustix::thread::sched_setaffinity(None, &set)?;
                    Ok(())
                });
            }
        }
        let mut first = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", flavor.binary.display()));
        let stderr = first.stderr.take().expect("piped");
        let log = Arc::new(Log::default());
        let writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                writer.lines.lock().unwrap().push((Instant::now(), line));
                writer.grew.notify_all();
            }
        });
        let pid = first.id();
        let mut running = Running {
            first,
            log,
            prefix: flavor.prefix,
            pid,
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let (_, line) = running.wait_line(&format!("{}[{pid}]: listening on ", flavor.prefix), 0);
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .map(|a| a.trim_start_matches("tls:"));
        running.addr = addr
            .and_then(|a| a.parse().ok())
            .expect("address in the listening line");
        running
    }

    /// Waits for the `skip`-th+1 line containing `needle`.
    fn wait_line(&self, needle: &str, skip: usize) -> (Instant, String) {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(found) = lines.iter().filter(|(_, l)| l.contains(needle)).nth(skip) {
                return found.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    let all: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
                    panic!(
                        "no {needle:?} within {DEADLINE:?}; log:\n{}",
                        all.join("\n")
                    )
                });
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits until `n` lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize) {
        self.wait_line(needle, n.saturating_sub(1));
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        let lines = self.log.lines.lock().unwrap();
        lines.iter().map(|(_, l)| l.clone()).collect()
    }

    fn count(&self, needle: &str) -> usize {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    /// SIGHUP to the serving process; waits for its successor and for it to exit.
    pub fn restart(&mut self) -> Restart {
        let old = self.pid;
        let needle = format!("{}[{old}]: child ", self.prefix);
        let before = self.count(&needle);
        let signal_at = Instant::now();
        kill(old, Signal::HUP);
        let (ready_at, line) = self.wait_line(&needle, before);
        assert!(line.ends_with(" ready"), "restart failed: {line}");
        let new = line
            .split("child ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok());
        self.pid = new.expect("pid in the ready line");
        let (listening_at, _) =
            self.wait_line(&format!("{}[{}]: listening on ", self.prefix, self.pid), 0);
        while alive(old) {
            assert!(
                signal_at.elapsed() < DEADLINE,
                "old process {old} did not exit"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        Restart {
            signal_at,
            ready_at,
            listening_at,
            gone_at: Instant::now(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        let lines = self.log.lines.lock().unwrap();
        let mut pids: Vec<u32> = lines
            .iter()
            .filter_map(|(_, l)| l.split_once('[')?.1.split(']').next()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for pid in self.pids() {
            if pid != self.first.id() {
                let _ = rustix::process::kill_process(pid_of(pid), Signal::KILL);
            }
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(pid as i32).expect("non-zero pid")
}

pub fn kill(pid: u32, signal: Signal) {
    rustix::process::kill_process(pid_of(pid), signal)
        .unwrap_or_else(|e| panic!("kill {pid}: {e}"));
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    Some(rest.split(' ').map(str::to_owned).collect())
}

/// Running, not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(stat_fields(pid), Some(f) if f[0] != "Z" && f[0] != "X")
}

/// User + system CPU time of a process so far.
pub fn cpu(pid: u32) -> Duration {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Some(fields) = stat_fields(pid) else {
        return Duration::ZERO;
    };
    // After "pid (comm) ", utime and stime are fields 12 and 13 (0-based, state is 0).
    let total: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_micros(total * 1_000_000 / ticks)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`) in bytes, or `Threads`.
pub fn status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'));
    let mut parts = value.unwrap_or("0").split_whitespace();
    let number: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    if parts.next() == Some("kB") {
        number * 1024
    } else {
        number
    }
}

/// Pins the calling thread (and threads it creates later) to `cpu`.
pub fn pin_self(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}
