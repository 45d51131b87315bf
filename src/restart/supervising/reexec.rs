//! Re-executing the supervising process in place, carrying its listeners and workers.

use super::*;

impl Supervising {
    /// Replaces this process's image with the binary now at its start path, in place (the PID
    /// stays), carrying the listeners, the workers' control channels and the generation.
    /// Returns only if the exec failed; this process then carries on as it was.
    pub(super) async fn reexec(&mut self) -> io::Result<()> {
        // From here, signals stay pending (and survive the exec) instead of reaching a
        // handler whose pipe the exec discards.
        if let Err(error) = self.signals.requeue().await {
            let _ = crate::signals::mask(libc::SIG_UNBLOCK, &crate::signals::HANDLED);
            return Err(error);
        }
        let carried = Carried {
            generation: self.generation,
            workers: self
                .workers
                .iter()
                .map(|w| CarriedWorker {
                    pid: w.pid,
                    control: w.control.as_fd().as_raw_fd(),
                    generation: w.generation,
                    slot: Some(w.slot),
                })
                .collect(),
            retiring: self
                .retiring
                .iter()
                .map(|r| CarriedWorker {
                    pid: r.pid,
                    control: r.control.as_ref().map(|c| c.as_fd().as_raw_fd()),
                    generation: r.generation,
                    slot: None,
                })
                .collect(),
        };
        let state = carried.to_json();
        let descriptions: Vec<Description> = self
            .listeners
            .iter()
            .map(|listener| listener.describe(listener.fd()))
            .collect();
        let mut keep: Vec<RawFd> = self.listeners.iter().map(Listener::fd).collect();
        keep.extend(carried.workers.iter().map(|w| w.control));
        keep.extend(carried.retiring.iter().filter_map(|w| w.control));
        (self.emit)(&Event::Reexecuting {
            program: self.exec.program(),
        });
        let mut command = self.exec.command();
        command
            .env(LISTENER_ENV, Description::to_json_all(&descriptions))
            .env(SUPERVISOR_ENV, state);
        for name in crate::listener::ACTIVATION_ENV {
            command.env_remove(name);
        }
        let held = keep.clone();
        // SAFETY: `exec` runs the closure in this process (there is no fork), right before
        // execve: it only changes this thread's signal mask and the CLOEXEC flag of fds this
        // process owns (the listeners and the control channels, kept open by `self`).
        unsafe {
            command.pre_exec(move || hold_across_exec(&held));
        }
        let error = command.exec();
        // Still here: the exec failed. Undo what the closure and `exec` changed.
        restore_after_failed_exec(&keep);
        Err(crate::error::context(
            error.kind(),
            format!("cannot re-execute {}", self.exec.program().display()),
            error,
        ))
    }
}

/// Before the supervising process's execve: hold every handled signal (they stay pending
/// across the exec and are handled once the new image has installed its handlers), and let
/// the carried fds survive the exec.
fn hold_across_exec(keep: &[RawFd]) -> io::Result<()> {
    crate::signals::mask(libc::SIG_BLOCK, &crate::signals::HANDLED)?;
    for &fd in keep {
        crate::listener::set_cloexec(fd, false)?;
    }
    Ok(())
}

/// After a failed re-exec: the carried fds are close-on-exec again, signals are unblocked,
/// and SIGPIPE is ignored again (`Command::exec` reset it to its default, which would let a
/// write to a closed socket end this process).
fn restore_after_failed_exec(keep: &[RawFd]) {
    for &fd in keep {
        let _ = crate::listener::set_cloexec(fd, true);
    }
    let _ = crate::signals::mask(libc::SIG_UNBLOCK, &crate::signals::HANDLED);
    crate::signals::ignore_sigpipe();
}
