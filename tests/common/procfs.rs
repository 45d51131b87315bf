//! `/proc` inspection: whether a process runs, its zombies, fds, threads and CPU time, and a
//! socket's receive queue.

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

/// The first child of `parent` (by `PPid` in `/proc/<pid>/status`); panics after [`DEADLINE`].
pub fn wait_for_child_of(parent: u32) -> u32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(child) = children_of(parent).into_iter().next() {
            return child;
        }
        assert!(Instant::now() < deadline, "{parent} started no child");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every live process whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(&parent.to_string()))
            })
        })
        .collect()
}

/// `pid`'s parent, if `pid` runs.
pub fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("PPid:"))?;
    line.trim().parse().ok()
}
