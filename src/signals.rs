//! OS signals, turned into the few commands the server loop understands.
//!
//! | signal | command |
//! |---|---|
//! | SIGHUP | [`Command::Restart`]: start a successor, drain once it is ready |
//! | SIGUSR2 | [`Command::Spawn`]: start a successor, keep serving beside it |
//! | SIGINT, SIGQUIT, SIGTERM | [`Command::Shutdown`]: drain and exit (a second one: exit now) |
//! | SIGCHLD | [`Command::Reap`]: collect exited children |

use std::io;

use async_signal::Signals as Stream;
use smol::stream::{Stream as _, StreamExt as _};

use crate::io::ready::Gate;

/// A signal baton handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGHUP: restart.
    Hup,
    /// SIGUSR2: start a successor beside this process.
    Usr2,
    /// SIGINT: shut down.
    Int,
    /// SIGQUIT: shut down.
    Quit,
    /// SIGTERM: shut down.
    Term,
    /// SIGCHLD: a child exited.
    Child,
}

impl Signal {
    /// Its conventional name, `SIGHUP` and so on.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Usr2 => "SIGUSR2",
            Signal::Int => "SIGINT",
            Signal::Quit => "SIGQUIT",
            Signal::Term => "SIGTERM",
            Signal::Child => "SIGCHLD",
        }
    }

    /// The signal named `name` (`SIGTERM`, ...), if baton handles it.
    pub(crate) fn from_name(name: &str) -> Option<Signal> {
        [
            Signal::Hup,
            Signal::Usr2,
            Signal::Int,
            Signal::Quit,
            Signal::Term,
            Signal::Child,
        ]
        .into_iter()
        .find(|signal| signal.name() == name)
    }

    /// What the server does about it.
    pub(crate) fn command(self) -> Command {
        match self {
            Signal::Hup => Command::Restart,
            Signal::Usr2 => Command::Spawn,
            Signal::Int | Signal::Quit | Signal::Term => Command::Shutdown,
            Signal::Child => Command::Reap,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a signal asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Restart,
    Spawn,
    Shutdown,
    Reap,
}

/// The signals a successor starts with blocked (`handoff` sets its mask before exec): until
/// its handlers are installed, a SIGHUP or SIGUSR2 sent to it waits instead of ending it, even
/// if the application does slow work before it binds. [`Signals::register`] unblocks them.
pub(crate) const HELD_ACROSS_EXEC: [libc::c_int; 2] = [libc::SIGHUP, libc::SIGUSR2];

/// Every signal baton handles. A supervising process that re-executes itself holds them all
/// across the `execve` (a SIGTERM in that window would otherwise end it, or, as PID 1, be
/// dropped); [`Signals::register`] unblocks them.
pub(crate) const HANDLED: [libc::c_int; 6] = [
    libc::SIGHUP,
    libc::SIGUSR2,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGCHLD,
];

/// Changes this thread's mask for [`HELD_ACROSS_EXEC`] (`SIG_SETMASK`, `SIG_BLOCK` or
/// `SIG_UNBLOCK`); the only calls are sigemptyset, sigaddset and pthread_sigmask, so it is
/// safe between fork and exec.
pub(crate) fn mask_held(how: libc::c_int) -> io::Result<()> {
    mask(how, &HELD_ACROSS_EXEC)
}

/// Changes this thread's mask for `signals`, as [`mask_held`] does.
pub(crate) fn mask(how: libc::c_int, signals: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: sigemptyset/sigaddset write the set this function owns; pthread_sigmask only
    // changes the calling thread's mask and reads the set.
    let result = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    match result {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Ignores SIGPIPE again, as Rust programs do from the start (a failed `Command::exec` resets
/// it to its default, which ends the process on a write to a closed socket).
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installs SIG_IGN for SIGPIPE, as the Rust runtime does at start-up; no handler
    // code runs, so nothing about the handler's context needs to hold.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The handled signals, registered at construction.
#[derive(Debug)]
pub(crate) struct Signals(Stream, Gate);

impl Signals {
    /// Installs the handlers, then unblocks them: a successor starts with SIGHUP and SIGUSR2
    /// blocked, a re-executed supervising process with all of them, and one that arrived
    /// meanwhile is handled now.
    pub(crate) fn register() -> io::Result<Signals> {
        use async_signal::Signal as S;
        // Held while the stream is set up, so that any helper thread it starts (async-io's)
        // inherits a mask that holds them: then only this thread, and the threads it starts
        // later, take them, and holding them here holds them for the process (see
        // `Signals::requeue`).
        mask(libc::SIG_BLOCK, &HANDLED)?;
        let signals = Stream::new([S::Hup, S::Usr2, S::Int, S::Quit, S::Term, S::Child])?;
        mask(libc::SIG_UNBLOCK, &HANDLED)?;
        Ok(Signals(signals, Gate::default()))
    }

    /// Before this process replaces its image: holds every handled signal on this thread, and
    /// sends the ones that arrived but were not read yet back to the process, where they stay
    /// pending across the `execve` instead of being lost with the handler's pipe.
    pub(crate) async fn requeue(&mut self) -> io::Result<()> {
        mask(libc::SIG_BLOCK, &HANDLED)?;
        // Straight from the pipe, not through the gate: a signal written there whose
        // readiness the reactor has not reported yet must be found too.
        while let Some(Some(Ok(signal))) = smol::future::poll_once(self.0.next()).await {
            use rustix::process::Signal as R;
            let number = match ours(signal) {
                Some(Signal::Hup) => R::HUP,
                Some(Signal::Usr2) => R::USR2,
                Some(Signal::Int) => R::INT,
                Some(Signal::Quit) => R::QUIT,
                Some(Signal::Term) => R::TERM,
                Some(Signal::Child) => R::CHILD,
                None => continue,
            };
            let _ = rustix::process::kill_process(rustix::process::getpid(), number);
        }
        Ok(())
    }

    /// The next signal, and what it asks for. Signals of one kind that arrive while none is
    /// being read may coalesce into one.
    pub(crate) async fn next(&mut self) -> io::Result<(Signal, Command)> {
        let Signals(stream, gate) = self;
        loop {
            // Polled only when its pipe woke it: the serving loop's other wake-ups make no
            // `recv` on the signal pipe.
            let next = std::future::poll_fn(|cx| {
                gate.poll(cx, |cx| std::pin::Pin::new(&mut *stream).poll_next(cx))
            });
            let signal = match next.await {
                Some(signal) => signal?,
                None => return Err(io::Error::other("the signal stream ended")),
            };
            if let Some(signal) = ours(signal) {
                return Ok((signal, signal.command()));
            }
        }
    }
}

/// The handled signals in this crate's terms.
fn ours(signal: async_signal::Signal) -> Option<Signal> {
    use async_signal::Signal as S;
    Some(match signal {
        S::Hup => Signal::Hup,
        S::Usr2 => Signal::Usr2,
        S::Int => Signal::Int,
        S::Quit => Signal::Quit,
        S::Term => Signal::Term,
        S::Child => Signal::Child,
        _ => return None,
    })
}
