//! Collecting exited children without stealing anyone's.
//!
//! A supervising process must reap its workers and, as PID 1 or a child subreaper, every orphan
//! reparented to it. A plain `waitpid(-1)` would also collect children that other code in this
//! process waits for itself: the child `std::process::Command::spawn` forks waits there for the
//! exec to succeed or fail (std panics if it finds its child gone), and a `Child` is waited for
//! by its owner. So nothing here waits for "any child":
//!
//! - the children this process started itself go through [`spawn`], which records each pid as
//!   owned by its [`Owned`] (a `Child`) until that is dropped;
//! - a known pid (a worker) is collected by pid, [`reap_pid`];
//! - orphans are found by looking without collecting (`waitid(P_ALL, WNOWAIT)`): one that is
//!   neither known nor owned, while no spawn is under way, is collected, [`next_orphan`].

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};

/// Children some `Child` in this process waits for, and spawns under way (whose pid is not
/// known yet).
struct Registry {
    spawning: usize,
    pids: Vec<u32>,
}

static OWNED: Mutex<Registry> = Mutex::new(Registry {
    spawning: 0,
    pids: Vec::new(),
});

fn owned() -> MutexGuard<'static, Registry> {
    // The data stays consistent whatever panicked while holding the lock.
    OWNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A child this process started and waits for by its `Child`: the reaper leaves it alone
/// until this is dropped (after which whoever knows its pid, or the orphan look, collects it).
#[derive(Debug)]
pub(crate) struct Owned(Child);

impl std::ops::Deref for Owned {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let pid = self.0.id();
        owned().pids.retain(|&p| p != pid);
    }
}

/// `command.spawn()`, with the child recorded as waited for by its `Child` (and the reaper
/// held off orphans while the fork and exec are under way).
pub(crate) fn spawn(command: &mut Command) -> io::Result<Owned> {
    owned().spawning += 1;
    let spawned = command.spawn();
    let mut owned = owned();
    owned.spawning -= 1;
    let child = spawned?;
    owned.pids.push(child.id());
    Ok(Owned(child))
}

/// Collects child `pid` if it has exited.
pub(crate) fn reap_pid(pid: u32) -> Option<ExitStatus> {
    let target = rustix::process::Pid::from_raw(pid as i32)?;
    match rustix::process::waitpid(Some(target), rustix::process::WaitOptions::NOHANG) {
        Ok(Some((_, status))) => Some(ExitStatus::from_raw(status.as_raw())),
        _ => None,
    }
}

/// What the next look at the exited children found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// No child has exited.
    Nothing,
    /// This child, one of the caller's (`known`), exited; it is not collected yet.
    Known(u32),
    /// An orphan exited, and was collected.
    Orphan(u32, ExitStatus),
    /// The next exited child is someone else's to wait for, or a spawn is under way: look
    /// again shortly.
    Later,
}

/// Looks at one exited child without collecting it: the caller's own (`known`) are left to it,
/// an orphan is collected, and a child that a `Child` waits for is left alone.
pub(crate) fn next_orphan(known: impl Fn(u32) -> bool) -> Found {
    let Some(pid) = peek_exited() else {
        return Found::Nothing;
    };
    if known(pid) {
        return Found::Known(pid);
    }
    // Held while deciding and collecting, so no spawn can start in between and record it.
    let owned = owned();
    if owned.spawning > 0 || owned.pids.contains(&pid) {
        return Found::Later;
    }
    match reap_pid(pid) {
        Some(status) => Found::Orphan(pid, status),
        None => Found::Later,
    }
}

/// The pid of a child that has exited, left unreaped (`waitid(P_ALL, WEXITED | WNOHANG |
/// WNOWAIT)`).
fn peek_exited() -> Option<u32> {
    // SAFETY: `info` is a zeroed siginfo_t that waitid fills in; with WNOHANG it returns at
    // once, and si_pid stays 0 when no child has exited. `si_pid` reads a field of the struct
    // waitid wrote (the layout of a SIGCHLD siginfo).
    let pid = unsafe {
        let mut info = std::mem::zeroed::<libc::siginfo_t>();
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        if libc::waitid(libc::P_ALL, 0, &mut info, flags) != 0 {
            return None;
        }
        info.si_pid()
    };
    u32::try_from(pid).ok().filter(|&pid| pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawned_child_is_left_to_its_owner_and_collected_by_it() {
        let mut child = spawn(&mut Command::new("true")).unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while peek_exited() != Some(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Exited, and owned: the orphan look leaves it to its `Child`.
        assert_eq!(next_orphan(|_| false), Found::Later);
        assert_eq!(next_orphan(|p| p == pid), Found::Known(pid));
        assert!(child.wait().unwrap().success());
        drop(child);
        assert!(!owned().pids.contains(&pid));
    }
}
