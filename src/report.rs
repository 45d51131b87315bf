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
    /// What ended the drain early, if something did.
    pub cut_by: Option<CutBy>,
}

/// What ended a drain before every connection was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutBy {
    /// `Config::drain_timeout` passed.
    DrainTimeout,
    /// A shutdown signal while draining: a second one, a worker's supervising process
    /// passing one on, or (single process) the successor at the generation limit.
    Signal,
    /// A later restart would have left more than `max` generations alive
    /// (`Config::max_generations`): the oldest draining one ends.
    GenerationLimit {
        /// The limit.
        max: usize,
    },
}

impl std::fmt::Display for CutBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CutBy::DrainTimeout => write!(f, "by the drain timeout"),
            CutBy::Signal => write!(f, "by a shutdown signal"),
            CutBy::GenerationLimit { max } => {
                write!(f, "by the generation limit (at most {max} alive)")
            }
        }
    }
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
