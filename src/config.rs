//! Every setting of the core ([`crate::Baton`]), with its default, in one place: [`Config`] is
//! plain data, the builder methods set its fields, and the docs and the examples quote it. (The
//! HTTP server's settings are its own: `baton::http::Options`.)
//!
//! Timings that are not options (how long a successor waits for state, the accept back-off, …)
//! sit beside it in [`timing`], named, so that no number is written twice.

use std::path::PathBuf;
use std::time::Duration;

/// The core's settings. `Config::default()` holds every default; [`crate::Baton::with_config`]
/// takes a whole one, and each builder method (`drain_timeout`, …) sets one field.
///
/// ```
/// let mut config = baton::Config::default();
/// assert_eq!(config.drain_timeout, std::time::Duration::from_secs(5));
/// config.max_connections = 100;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The longest a drain waits for in-flight requests before it cuts them. Default: 5 s.
    pub drain_timeout: Duration,
    /// The longest a restart waits for the new process to report ready before it kills it and
    /// keeps serving. Default: 10 s.
    pub ready_timeout: Duration,
    /// On a restart with state hand-over (`Baton::on_hand_over_state`), how long the old
    /// process, which has stopped serving, waits for its requests in flight before it sends
    /// its state; the successor serves only once it has the state, so new connections wait
    /// in the accept queue meanwhile. Within it the state is exact (the one after the old
    /// process's last request); a request still running then may change state that is lost.
    /// Default: 1 s.
    pub state_wait: Duration,
    /// The largest application state (`Baton::on_hand_over_state`, as JSON text) a restart
    /// carries to the successor: a state up to 64 KiB travels in the relay message, a larger
    /// one in a sealed memfd passed over it. A larger state is not sent: the old process says
    /// so in an event, and the successor starts with none (and says why). The successor
    /// applies its own bound too. Default: 64 MiB.
    pub max_state_bytes: usize,
    /// The most bytes a connection may hold (read from it, not yet used) and still move to the
    /// successor ([`crate::Drain::hand_over`]): up to about 96 KiB with kind and state they
    /// travel in the relay message, more in a sealed memfd beside it. Over it, the hand-over
    /// fails with an error that says so and the connection stays with this process to
    /// finish; a successor refuses more than its own bound. Default: 64 MiB.
    pub max_held_bytes: usize,
    /// The most generations alive at once, counting the one serving (at least 2): a restart
    /// that would exceed it first ends the oldest generations still draining (what they were
    /// still doing is cut, and logged). Default: 3.
    pub max_generations: usize,
    /// The most connections served at once; at the limit, new ones wait in the kernel's accept
    /// queue. At least 1. Default: 10 000.
    pub max_connections: usize,
    /// On a restart, move keep-alive connections to the successor instead of closing them.
    /// Default: `true`.
    pub hand_over_connections: bool,
    /// Keep the serving process's pid in this file. Default: none.
    pub pid_file: Option<PathBuf>,
    /// For successors that cannot report readiness (a Go server taking over, which knows
    /// nothing of `ready_fd`): count one as ready once it has run this long without exiting.
    /// The risk: a successor that is slower to start than that is taken for ready, and this
    /// process drains while it is not yet accepting (connections then wait in the queue; a
    /// successor that dies after it is lost, with no fallback). Default: none (wait for the
    /// readiness pipe). Such a successor gets no relay: connections close as with
    /// `hand_over_connections` off.
    pub successor_ready_after: Option<Duration>,
    /// Run as a supervising process that keeps the PID and the sockets for the service's life
    /// and serves through this many worker processes, each a copy of this binary serving as a
    /// single-process server would. `Some(0)`: one process that restarts by replacing itself
    /// (the Go original's model). Default: `None`, which means one worker when this process
    /// is PID 1, or its parent is the init of a PID namespace that is not the host's (tini,
    /// dumb-init, `docker run --init`): there a process that replaces itself would end the
    /// container. Else `Some(0)`'s model. A single process in those places refuses restarts
    /// rather than end the service.
    pub workers: Option<usize>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            drain_timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(10),
            state_wait: Duration::from_secs(1),
            max_state_bytes: 64 * 1024 * 1024,
            max_held_bytes: DEFAULT_MAX_HELD,
            max_generations: 3,
            max_connections: 10_000,
            hand_over_connections: true,
            pid_file: None,
            successor_ready_after: None,
            workers: None,
        }
    }
}

/// [`Config::max_held_bytes`]'s default.
pub(crate) const DEFAULT_MAX_HELD: usize = 64 * 1024 * 1024;

/// Internal timings and sizes: not options, but named here so each is written once.
pub(crate) mod timing {
    use std::time::Duration;

    /// How long a successor waits for its predecessor's state before it serves cold.
    pub(crate) const STATE_TIMEOUT: Duration = Duration::from_secs(1);
    /// Accept failures are reported at most this often (with how many were not).
    pub(crate) const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(1);
    /// Pause after an accept error that a retry cannot fix at once (out of fds or memory).
    pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
    /// How long a message to the successor on its relay (a connection, the state) may wait
    /// for room: a connection that cannot move in time is closed here instead, and a state
    /// that cannot is not sent (the successor starts cold).
    pub(crate) const RELAY_TIMEOUT: Duration = Duration::from_secs(1);
    /// At a drain's cut, how long the cut connections get to say so (a 503, a reset).
    pub(crate) const CUT_GRACE: Duration = Duration::from_millis(200);
    /// How long a failed successor's exit status is waited for after its pipe closed.
    pub(crate) const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);

    /// (Supervising process) a worker that lived shorter than this died quickly: replacements
    /// of workers that keep dying quickly wait, from [`FIRST_BACKOFF`], twice as long each
    /// time, up to [`MOST_BACKOFF`].
    pub(crate) const QUICK_DEATH: Duration = Duration::from_secs(5);
    pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    pub(crate) const MOST_BACKOFF: Duration = Duration::from_secs(10);
    /// (Supervising process) a worker that exited cleanly (it drained, after a shutdown
    /// signal that may be on its way here too) is replaced only this much later, if no
    /// shutdown came meanwhile.
    pub(crate) const CLEAN_EXIT_GRACE: Duration = Duration::from_millis(200);
    /// (Supervising process) how long past the drain timeout retiring workers are waited for
    /// before they are killed.
    pub(crate) const KILL_GRACE: Duration = Duration::from_secs(1);

    /// How many tasks run between two checks for I/O readiness while tasks are ready to run.
    /// `LocalExecutor::run` checks every 200; connections that read their next request without
    /// waiting (see `conn`) keep the executor busy under load, so a connection that does wait
    /// for readiness would wait up to ~200 requests' time, about 1 ms. Under `wrk -c16`, five
    /// runs each: p99 0.72-0.93 ms checking every 200 tasks, 0.19-0.27 ms (one run 0.7) every
    /// 16, for ~3% of throughput.
    pub(crate) const TASKS_BETWEEN_IO_CHECKS: usize = 16;
    /// How often at most idle connections' deadlines (keep-alive, first head) are swept: a
    /// deadline fires up to this much late when others fell due just before it (see
    /// `deadline`).
    pub(crate) const DEADLINE_GRAIN: std::time::Duration = std::time::Duration::from_millis(50);
}
