//! A restart that answers: [`reload`] sends SIGHUP to the process a PID file names and waits
//! until the restart is over, so a deploy script learns whether the new binary serves.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::supervisor::{RestartRecord, restart_file};

/// Restarts the server whose PID file is `pid_file` (it must have been started with
/// [`crate::Baton::pid_file`]) and waits, up to `timeout`, for the outcome it records in
/// `<pid file>.restart`. Returns the pid serving afterwards (a supervising process's own,
/// which does not change, or the successor's), or an error saying why the restart failed.
///
/// If a restart is already under way, the server ignores this one and the answer is that
/// restart's.
pub fn reload(pid_file: impl AsRef<Path>, timeout: Duration) -> io::Result<u32> {
    let pid_file = pid_file.as_ref();
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        crate::error::context(
            e.kind(),
            format!("cannot read the PID file {}", pid_file.display()),
            e,
        )
    })?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| {
            crate::error::invalid_msg(format!(
                "{} does not hold a pid ({:?})",
                pid_file.display(),
                text.trim()
            ))
        })?;
    let record_path = restart_file(pid_file);
    let read = || {
        std::fs::read_to_string(&record_path)
            .ok()
            .and_then(|text| RestartRecord::parse(&text))
    };
    let before = read().map_or(0, |record| record.restarts);
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).map_err(|e| {
        crate::error::context(
            io::Error::from(e).kind(),
            format!(
                "cannot signal {} (from {})",
                pid.as_raw_nonzero(),
                pid_file.display()
            ),
            e,
        )
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        match read() {
            Some(record) if record.restarts > before => {
                return match record.failure {
                    None => Ok(record.serving),
                    Some(why) => Err(io::Error::other(format!("the restart failed: {why}"))),
                };
            }
            _ if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no restart outcome in {} within {timeout:?}",
                        record_path.display()
                    ),
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
