//! OS signals, turned into the few commands the server loop understands.
//!
//! | signal | command |
//! |---|---|
//! | SIGHUP | [`Command::Restart`]: start a successor, drain once it is ready |
//! | SIGUSR2 | [`Command::Spawn`]: start a successor, keep serving beside it |
//! | SIGINT, SIGQUIT, SIGTERM | [`Command::Shutdown`]: drain and exit (a second one: exit now) |
//! | SIGCHLD | [`Command::Reap`]: collect exited children |

use std::io;

use async_signal::{Signal, Signals as Stream};
use smol::stream::StreamExt as _;

/// What a signal asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Restart,
    Spawn,
    Shutdown,
    Reap,
}

/// The handled signals, registered at construction.
#[derive(Debug)]
pub(crate) struct Signals(Stream);

impl Signals {
    /// Installs the handlers. Do this before anything slow: until then SIGHUP and SIGUSR2
    /// still have their default action, which terminates the process.
    pub(crate) fn register() -> io::Result<Signals> {
        Stream::new([
            Signal::Hup,
            Signal::Usr2,
            Signal::Int,
            Signal::Quit,
            Signal::Term,
            Signal::Child,
        ])
        .map(Signals)
    }

    /// The next signal, with its name and what it asks for. Signals of one kind that arrive
    /// while none is being read may coalesce into one.
    pub(crate) async fn next(&mut self) -> io::Result<(&'static str, Command)> {
        loop {
            let signal = match self.0.next().await {
                Some(signal) => signal?,
                None => return Err(io::Error::other("the signal stream ended")),
            };
            let command = match signal {
                Signal::Hup => ("SIGHUP", Command::Restart),
                Signal::Usr2 => ("SIGUSR2", Command::Spawn),
                Signal::Int => ("SIGINT", Command::Shutdown),
                Signal::Quit => ("SIGQUIT", Command::Shutdown),
                Signal::Term => ("SIGTERM", Command::Shutdown),
                Signal::Child => ("SIGCHLD", Command::Reap),
                _ => continue,
            };
            return Ok(command);
        }
    }
}
