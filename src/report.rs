//! What [`crate::Baton::serve`] returns: why serving ended and what the drain cut short.

use crate::signals::Signal;

/// Why [`crate::Baton::serve`] returned, and what the drain cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// What ended serving.
    pub stop: Stop,
    /// Requests still in flight when the drain ended early (timeout or a second shutdown
    /// signal). 0 for a clean drain.
    pub cut: usize,
    /// Connections still open at that point.
    pub dropped: usize,
    /// Of those, upgraded connections (WebSockets, say) that had not closed by then: closed
    /// with the process, not counted in `cut`.
    pub upgraded: usize,
    /// Connections the previous process handed over that this one closed unserved: a kind
    /// the program does not take, or one that arrived unusable (each an event).
    pub lost: usize,
}

impl Report {
    /// `true` if nothing was lost: every request answered, no connection left open when
    /// the drain gave up (each was answered, moved or closed by the program), and every
    /// connection handed over taken.
    pub fn is_clean(&self) -> bool {
        self.cut == 0 && self.dropped == 0 && self.lost == 0
    }
}

/// What ended serving.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// SIGHUP: the successor with this pid took over.
    Restart {
        /// The successor's pid.
        successor: u32,
    },
    /// (A worker) its supervising process replaced it with a new worker, stopped it, or is gone.
    Retired,
    /// SIGINT, SIGQUIT or SIGTERM.
    Shutdown {
        /// The signal.
        signal: Signal,
    },
}
